#!/usr/bin/env python
"""Benchmark of the 2D engine on the development data (a script, not a test).

Runs every method variant on
  * the 4D-Lung visit pair (reference = first visit, target = follow-up; Dice),
  * the CVC-612 colonoscopy sequence (reference frame 1, targets frames 2-20; mean Dice),
  * the PerSeg examples (reference _00, targets _01 and _02; mIoU = per object sum(I)/sum(U),
    averaged over objects; mean Dice also shown),
with the embedded LiteMedSAM, and prints Markdown tables (accuracy, per-stage time).

    python Testing/Benchmarks/benchmark_2d.py --data ../shared/data [--device cpu] [--json out.json]

Each target image is encoded once per run (the model's embedding cache is shared by the
variants); per-stage times are those of the first variant (``p2sam``), whose encodes are real.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from P2SAMLogic.io.images2d import read_image, read_mask  # noqa: E402
from P2SAMLogic.models import load_model  # noqa: E402
from P2SAMLogic.method.segmenter import P2SAMConfig, P2SAMSegmenter, mask_box  # noqa: E402

DEFAULT = P2SAMConfig()

#: name -> (description, config or "oracle")
VARIANTS: Dict[str, Tuple[str, object]] = {
    "p2sam": ("P²SAM, box adaptation, window around the prior position (default)", DEFAULT),
    "p2sam whole-image": ("same, searching the whole image", replace(DEFAULT, search_context=None)),
    "persam": ("PerSAM: one prototype, box at its peak", replace(DEFAULT, method="persam")),
    "no-retrieval": ("fixed 5 parts, box at the median of their peaks", replace(DEFAULT, method="no-retrieval")),
    "p2sam-points": ("P²SAM with point prompts (paper's cascade)", replace(DEFAULT, prompts="points")),
    "persam-points": ("PerSAM with point prompts", replace(DEFAULT, method="persam", prompts="points")),
    "box:median-only": ("boxes at part medians only", replace(DEFAULT, locators=("median",))),
    "box:density-only": ("boxes at similarity-density peaks only", replace(DEFAULT, locators=("density",))),
    "box:no-prior": ("median + density, no prior-position box", replace(DEFAULT, locators=("median", "density"))),
    "box:whole-grid-decode": ("default, decoding each box on the whole feature grid", replace(DEFAULT, local_decode=False)),
    "box:2-refinements": ("default, the winner refined twice", replace(DEFAULT, refine_steps=2)),
    "box:wide-scales": ("default, box scales 0.65-1.5", replace(DEFAULT, box_scales=(0.65, 0.8, 1.0, 1.25, 1.5))),
    "box:wasserstein-only": ("default, retrieval by Wasserstein distance alone (paper's rule)", replace(DEFAULT, selection="wasserstein")),
    "box:+crop": ("default + crop re-encode pass", replace(DEFAULT, crop_pass=True)),
    "box:+negative-filter": ("default + background-part pixel filter", replace(DEFAULT, negative_filter=True)),
    "whole:persam": ("PerSAM, whole image", replace(DEFAULT, method="persam", search_context=None)),
    "whole:no-retrieval": ("no-retrieval, whole image", replace(DEFAULT, method="no-retrieval", search_context=None)),
    "ablation:max-parts=1": ("default, foreground part counts 1 only", replace(DEFAULT, max_parts=1)),
    "ablation:max-parts=3": ("default, foreground part counts 1..3", replace(DEFAULT, max_parts=3)),
    "ablation:negatives=0": ("default, no background parts (no contrast)", replace(DEFAULT, negative_parts=0)),
    "ablation:negatives=2": ("default, 2 background parts", replace(DEFAULT, negative_parts=2)),
    "ablation:negatives=3": ("default, 3 background parts", replace(DEFAULT, negative_parts=3)),
    "ablation:no-refine": ("default without the refinement call", replace(DEFAULT, refine=False)),
    "ablation:box+negatives": ("default, each box decoded with the negative points", replace(DEFAULT, box_negatives=True)),
    "ablation:box+3negatives": ("default, 3 background parts as negative points with each box",
                                replace(DEFAULT, box_negatives=True, negative_parts=3)),
    "ablation:rank3": ("default with the previous 3-term rank selection", replace(DEFAULT, selection="rank3")),
    "oracle box": ("box of the true target mask (ceiling)", "oracle"),
    "oracle box +crop": ("oracle box + crop re-encode pass", "oracle-crop"),
}


def dev_sets(data: Path):
    lung = data / "p2sam_4dlung_visit_pair"
    cvc = data / "cvc612_fine3_sequence"
    ps = data / "perseg_persam_examples"
    return {
        "4D-Lung pair": [(lung / "ref_image.png", lung / "ref_mask.png",
                          [(lung / "test_image.png", lung / "test_mask.png")])],
        "CVC-612 (ref 1 → 2-20)": [(cvc / "images/fine_3_1_fram.jpg", cvc / "masks/fine_3_1_mask.jpg",
                                   [(cvc / f"images/fine_3_{i}_fram.jpg", cvc / f"masks/fine_3_{i}_mask.jpg")
                                    for i in range(2, 21)])],
        "PerSeg (cat, sneaker)": [(ps / f"{o}_00.jpg", ps / f"{o}_00.png",
                                   [(ps / f"{o}_0{i}.jpg", ps / f"{o}_0{i}.png") for i in (1, 2)])
                                  for o in ("cat", "colorful_sneaker")],
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[3] / "shared" / "data"),
                    help="folder of the development data (default: ../shared/data beside the repository)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of: " + ", ".join(VARIANTS))
    ap.add_argument("--json", default=None, help="also write every number to this JSON file")
    ap.add_argument("--cache", action="store_true",
                    help="keep embeddings on disk between runs (embedding_store.py; timings then are not encoder timings)")
    args = ap.parse_args(argv)
    names = [v for v in args.variants.split(",") if v]
    from P2SAMLogic.runtime import tune_process

    tune_process()  # as the CLI does
    model = load_model("litemedsam", device=args.device)
    if args.cache:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from embedding_store import use_disk_cache

        use_disk_cache(model)
    sets = dev_sets(Path(args.data))
    # load everything once
    loaded = {k: [(read_image(r), read_mask(rm), [(read_image(t), read_mask(tm)) for t, tm in ts])
                  for r, rm, ts in groups] for k, groups in sets.items()}
    acc: Dict[str, Dict[str, float]] = {}
    stage: Dict[str, Dict[str, float]] = {}
    for name in names:
        desc, cfg = VARIANTS[name]
        acc[name] = {}
        for set_name, groups in loaded.items():
            dices, ious = [], []
            stage_times: Dict[str, List[float]] = {}
            t0 = time.perf_counter()
            for ref_img, ref_mask, targets in groups:
                if isinstance(cfg, str):
                    seg = P2SAMSegmenter(model, replace(DEFAULT, crop_pass=cfg == "oracle-crop"))
                else:
                    seg = P2SAMSegmenter(model, cfg)
                    ref = seg.prepare_reference(ref_img, ref_mask)
                inter = union = 0
                for img, gt in targets:
                    res = seg.segment_with_box(img, mask_box(gt)) if isinstance(cfg, str) else seg.segment(ref, img)
                    i, u = int((res.mask & gt).sum()), int((res.mask | gt).sum())
                    inter += i
                    union += u
                    dices.append(2 * i / max(1, res.mask.sum() + gt.sum()))
                    for k, v in res.timings.items():
                        stage_times.setdefault(k, []).append(v)
                ious.append(inter / max(1, union))
            acc[name][set_name] = float(np.mean(dices))
            acc[name][set_name + " mIoU"] = float(np.mean(ious))
            if name == names[0]:
                stage[set_name] = {k: float(np.mean(v)) for k, v in stage_times.items()}
            print(f"  {name:22s} {set_name:26s} Dice {np.mean(dices):.3f}  mIoU {np.mean(ious):.3f}  "
                  f"({time.perf_counter() - t0:.1f} s)", file=sys.stderr, flush=True)
    set_names = list(loaded)
    print(f"\nMean Dice (PerSeg also mIoU), LiteMedSAM, device {model.device}\n")
    print("| variant | what | " + " | ".join(set_names) + " | PerSeg mIoU |")
    print("|---|---|" + "---|" * (len(set_names) + 1))
    for name in names:
        cells = " | ".join(f"{acc[name][s]:.3f}" for s in set_names)
        print(f"| {name} | {VARIANTS[name][0]} | {cells} | {acc[name][set_names[-1] + ' mIoU']:.3f} |")
    if stage:
        keys = ["encode", "match", "decode", "retrieval", "crop_encode", "crop_decode", "total"]
        print(f"\nSeconds per target, variant '{names[0]}' (first encode of each image is real)\n")
        print("| set | " + " | ".join(keys) + " | non-encode / encode |")
        print("|---|" + "---|" * (len(keys) + 1))
        for s, t in stage.items():
            non_enc = t.get("match", 0) + t.get("decode", 0) + t.get("retrieval", 0) + t.get("crop_decode", 0)
            print(f"| {s} | " + " | ".join(f"{t.get(k, 0):.3f}" for k in keys)
                  + f" | {non_enc / max(t.get('encode', 1e-9), 1e-9):.0%} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"accuracy": acc, "stage_seconds": stage}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
