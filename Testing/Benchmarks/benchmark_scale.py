#!/usr/bin/env python
"""At which scale should the model see a structure? Box-prompt Dice per encoding window (a script, not a test).

For every development set, LiteMedSAM is prompted with one box per slice (per image in 2D) and the
image it sees is one *encoding window* of the slice:

  auto         the pipeline's default (P2SAMLogic/propagation/scale.py): the whole slice for MR and other
               non-CT images, ctx 4 on CT
  whole        the whole slice, resized to the model's input (as LiteMedSAM was trained)
  ctx C        a square of C x the prompt box's larger side, centred on the box, kept inside the slice
  ... zoom Z   the same with the zoom capped: the window is at least input_size / Z pixels, so the
               model never enlarges the slice more than Z times (Z = none: no cap)
  crop         the former pipeline ROI: the box's larger side + 15 mm per side, at least 30 mm (3D only)

Prompts:
  oracle       the TRUE follow-up mask's box on each slice holding it (the ceiling of box prompting)
  registered   the box of the registered prior on each slice holding it (3D: rigid + demons, the
               pipeline's own registration; 2D: the reference mask's box at the same place) -- no
               truth is used, so misses and extra slices count
  registered+2px, registered-2px   that box grown / shrunk by 2 pixels per side (3D)
  registered refined               that box's decode refined once (its own mask's box + its logits)
  registered+mask                  that box with the registered mask as the decoder's mask input

Structures that are rings (the myocardium) are prompted as outer region and cavity, recomposed
(outer & ~cavity) on slices with a cavity, as in the pipeline.

    python Testing/Benchmarks/benchmark_scale.py --data ../shared/data \
        [--sets acdc,lung-sim,lung-response,lung-fov,4dlung,cvc,perseg] [--windows auto,whole,ctx2,ctx3,ctx4,ctx6,crop]
        [--zoom-caps none,2,1.5,1] [--prompts oracle,registered] [--limit N] [--json out.json]

Embeddings are cached on disk (embedding_store.py): the seconds are not encoder timings.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from accuracy_cases import Case, dice, load_set  # noqa: E402
from P2SAMLogic.io.intensity import choose_window  # noqa: E402
from P2SAMLogic.propagation.scale import EncodingScale  # noqa: E402
from P2SAMLogic.method.segmenter import P2SAMConfig, P2SAMSegmenter, mask_box  # noqa: E402
from P2SAMLogic.propagation.structures import cavity_slices, fill_slices  # noqa: E402

SETS_3D = ("acdc", "lung-sim", "lung-response", "lung-fov")
SETS_2D = ("4dlung", "cvc", "perseg")


def label(rule: EncodingScale) -> str:
    """A table row's name for an encoding-scale rule."""
    if rule.kind == "crop":
        return "crop (box + 15 mm, >= 30 mm)"
    if rule.kind == "whole":
        return "whole slice"
    if rule.kind == "auto":
        return f"auto (whole slice for MR, ctx {rule.context:g} for CT)"
    cap = "none" if rule.zoom_cap is None else f"{rule.zoom_cap:g}x"
    return f"ctx {rule.context:g} x box, zoom cap {cap}"


def parse_windows(windows: str, caps: str) -> List[EncodingScale]:
    """The rules named by ``--windows`` (``auto``, ``whole``, ``crop``, ``ctxC``), ``ctxC`` once per zoom cap."""
    out: List[EncodingScale] = []
    cap_values = [None if c.strip() == "none" else float(c) for c in caps.split(",") if c.strip()]
    for w in [x.strip() for x in windows.split(",") if x.strip()]:
        if w.startswith("ctx"):
            out += [EncodingScale("context", context=float(w[3:]), zoom_cap=cap) for cap in cap_values]
        elif w in ("auto", "whole", "crop"):
            out.append(EncodingScale.parse(w))
        else:
            raise SystemExit(f"unknown window {w!r}: auto, whole, crop or ctxC")
    return out


#: decoded masks by (slice content, window, box, decode): rules that give the same window share one decode
_MEMO: Dict[tuple, np.ndarray] = {}

#: prompt variants of the registered contour on a slice (3D): name -> (box change in pixels, how it is decoded)
VARIANTS = {"registered": (0, "box"), "registered+2px": (2, "box"), "registered-2px": (-2, "box"),
            "registered refined": (0, "refined"), "registered+mask": (0, "mask")}


def box_on_window(seg: P2SAMSegmenter, image_rgb: np.ndarray, box: np.ndarray, rule: EncodingScale,
                  spacing_xy: Sequence[float], decode: str = "box", grow: int = 0,
                  mask: Optional[np.ndarray] = None) -> np.ndarray:
    """The model's mask (``H x W`` bool on the whole slice) for one prompt box seen through ``rule``
    (rules that give the same window on a slice share one decode).

    ``decode``: ``box`` (one decoder call; refined once unless ``--no-refine``), ``refined`` (always
    refined once), ``mask`` (the box with ``mask``, ``H x W`` bool, as the decoder's mask input).
    ``grow``: pixels added to (removed from, when negative) every side of the box.
    """
    shape = image_rgb.shape[:2]
    win = rule.window(box, shape, spacing_xy, seg.model.input_size)
    x0, y0, x1, y1 = win.astype(int)
    if grow:
        b = np.asarray(box, dtype=np.float64) + np.array([-grow, -grow, grow, grow])
        cx, cy = (box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0
        b = np.array([min(b[0], cx - 0.5), min(b[1], cy - 0.5), max(b[2], cx + 0.5), max(b[3], cy + 0.5)])
        box = np.clip(b, 0, [shape[1], shape[0], shape[1], shape[0]])
    key = (seg.model.cache_key(image_rgb), x0, y0, x1, y1, tuple(np.round(box, 3)), decode)
    if key not in _MEMO:
        crop = np.ascontiguousarray(image_rgb[y0:y1, x0:x1])
        local = box - np.array([x0, y0, x0, y0])
        if decode == "mask":
            emb = seg.model.encode([crop])[0]
            low = seg._prior_low(emb, mask[y0:y1, x0:x1])
            logits = None if low is None else (low.float() * 2.0 - 1.0)[None, None] * seg.config.mask_prompt_logit
            outl = seg.model.decode(emb, boxes=local[None], mask_input=logits).low_res_logits
            part = emb.frame.logits_to_original(outl)[0, 0].cpu().numpy() > 0
        else:
            part = seg.segment_with_box(crop, local, refine=True if decode == "refined" else None).mask
        out = np.zeros(shape, dtype=bool)
        out[y0:y1, x0:x1] = part
        if len(_MEMO) > 4096:
            _MEMO.clear()
        _MEMO[key] = out
    return _MEMO[key].copy()


# ------------------------------------------------------------------------------------------------
# 3D sets


def registered_parts(case: Case) -> Dict[str, np.ndarray]:
    """The pipeline's registered prior (rigid + deformable stage) of every structure, ``bool [k, j, i]``."""
    from P2SAMLogic.propagation.pipeline import PropagationConfig, _Progress, check_inputs, register
    from P2SAMLogic.propagation.registration import warp_mask
    from P2SAMLogic.io.volume import Segment

    cfg = PropagationConfig(method="deformable")
    segs = [Segment(n, (1.0, 0.0, 0.0), m) for n, m in case.prior_masks.items()]
    study = check_inputs(case.prior, segs, case.followup, cfg)
    regs = register(study, cfg, _Progress(None, None))
    return {s.name: sitk.GetArrayFromImage(warp_mask(s.mask, case.followup, regs[s.name].transform)).astype(bool)
            for s in study.segments}


def structure_masks(mask3d: np.ndarray) -> Tuple[bool, List[Tuple[str, np.ndarray]]]:
    """``(is_ring, [(role, blob)])``: a ring (cavities on >= 30 % of its slices) as outer + cavity."""
    ks = np.flatnonzero(mask3d.reshape(mask3d.shape[0], -1).any(1))
    if ks.size and cavity_slices(mask3d)[ks].mean() >= 0.3:
        outer = fill_slices(mask3d)
        return True, [("outer", outer), ("cavity", outer & ~mask3d)]
    return False, [("whole", mask3d)]


def run_3d(case: Case, seg: P2SAMSegmenter, rules: List[EncodingScale], prompts: List[str]) -> List[dict]:
    arr = sitk.GetArrayViewFromImage(case.followup)
    win = choose_window(case.followup, case.modality)
    sp = case.followup.GetSpacing()
    registered = registered_parts(case) if any(p.startswith("registered") for p in prompts) else {}
    rgb = {}

    def slice_rgb(k: int) -> np.ndarray:
        if k not in rgb:
            rgb[k] = win.to_rgb(np.asarray(arr[k]))
        return rgb[k]

    rows = []
    for name, truth_img in case.truth.items():
        truth = sitk.GetArrayFromImage(truth_img).astype(bool)
        for prompt in prompts:
            src = truth if prompt == "oracle" else registered.get(name)
            grow, decode = VARIANTS.get(prompt, (0, "box"))
            ring, blobs = structure_masks(src)
            reg_dice = dice(src, truth)
            for rule in rules:
                t0 = time.perf_counter()
                parts = {}
                for role, blob in blobs:
                    out = np.zeros(blob.shape, dtype=bool)
                    for k in np.flatnonzero(blob.reshape(blob.shape[0], -1).any(1)):
                        out[k] = box_on_window(seg, slice_rgb(int(k)), mask_box(blob[k]), rule.resolve(case.modality),
                                               sp[:2], decode, grow, blob[k])
                    parts[role] = out
                if ring:
                    result = parts["outer"] & ~parts["cavity"]
                    closed = cavity_slices(src)
                    result[~closed] = src[~closed] if prompt != "oracle" else False
                    if prompt == "oracle":  # open slices of the true ring: the ring's own box
                        for k in np.flatnonzero(~closed & src.reshape(src.shape[0], -1).any(1)):
                            result[k] = box_on_window(seg, slice_rgb(int(k)), mask_box(src[k]),
                                                      rule.resolve(case.modality), sp[:2])
                else:
                    result = parts["whole"]
                rows.append({"set": case.set, "case": case.name, "structure": name, "prompt": prompt,
                             "window": label(rule), "dice": dice(result, truth),
                             "prompt_source_dice": reg_dice, "seconds": time.perf_counter() - t0})
                print(f"{case.set} {case.name} {name} {prompt:10s} {label(rule):32s} {rows[-1]['dice']:.3f}"
                      f" (prompt source {reg_dice:.3f})", file=sys.stderr, flush=True)
    return rows


# ------------------------------------------------------------------------------------------------
# 2D sets


def pairs_2d(name: str, data: Path):
    from benchmark_2d import dev_sets
    key = {"4dlung": "4D-Lung pair", "cvc": "CVC-612 (ref 1 → 2-20)", "perseg": "PerSeg (cat, sneaker)"}[name]
    return dev_sets(data)[key]


def run_2d(name: str, data: Path, seg: P2SAMSegmenter, rules: List[EncodingScale], prompts: List[str]) -> List[dict]:
    from P2SAMLogic.io.images2d import read_image, read_mask
    rows = []
    for ref_img, ref_mask, targets in pairs_2d(name, data):
        ref = read_mask(ref_mask)
        for tgt_img, tgt_mask in targets:
            image = read_image(tgt_img)
            truth = read_mask(tgt_mask)
            boxes = {"oracle": mask_box(truth)}
            if ref.shape == truth.shape:
                boxes["registered"] = mask_box(ref)
            for prompt in prompts:
                if prompt not in boxes:
                    continue
                for rule in rules:
                    # the 4D-Lung pair is CT (windowed); the colonoscopy and PerSeg images are photographs
                    out = box_on_window(seg, image, boxes[prompt], rule.resolve("CT" if name == "4dlung" else ""),
                                        (1.0, 1.0))
                    inter, union = int((out & truth).sum()), int((out | truth).sum())
                    rows.append({"set": name, "case": f"{Path(ref_img).stem}->{Path(tgt_img).stem}",
                                 "structure": Path(ref_img).stem.rsplit("_", 1)[0], "prompt": prompt,
                                 "window": label(rule), "dice": dice(out, truth), "inter": inter, "union": union})
            print(f"{name} {Path(tgt_img).name} done", file=sys.stderr, flush=True)
    return rows


# ------------------------------------------------------------------------------------------------


def _mean(values) -> float:
    v = [x for x in values if x is not None and math.isfinite(x)]
    return float(np.mean(v)) if v else math.nan


def tables(rows: List[dict], rules: List[EncodingScale], prompts: List[str]) -> str:
    out = []
    for s in dict.fromkeys(r["set"] for r in rows):
        rs = [r for r in rows if r["set"] == s]
        structures = list(dict.fromkeys(r["structure"] for r in rs))
        cases = len(dict.fromkeys(r["case"] for r in rs))
        if s in SETS_2D:
            structures = ["all"]
        out.append(f"\n### {s}: {cases} {'cases' if s in SETS_3D else 'targets'}, mean Dice\n")
        head = [f"{n} {p}" for n in structures for p in prompts if any(r["prompt"] == p for r in rs)]
        out.append("| window | " + " | ".join(head) + " |")
        out.append("|---|" + "---|" * len(head))
        if s in SETS_3D and any(p.startswith("registered") for p in prompts):
            cells = []
            for n in structures:
                for p in prompts:
                    if not any(r["prompt"] == p for r in rs):
                        continue
                    x = [r for r in rs if r["structure"] == n and r["prompt"] == p]
                    # the prompt source itself (registered prior) as the "no model" row
                    by_case = {r["case"]: r["prompt_source_dice"] for r in x}
                    cells.append(f"{_mean(by_case.values()):.3f}" if p != "oracle" else "1.000")
            out.append("| (the prompt source's own mask) | " + " | ".join(cells) + " |")
        for rule in rules:
            cells = []
            for n in structures:
                for p in prompts:
                    if not any(r["prompt"] == p for r in rs):
                        continue
                    x = [r for r in rs if (n == "all" or r["structure"] == n) and r["prompt"] == p
                         and r["window"] == label(rule)]
                    cells.append(f"{_mean(r['dice'] for r in x):.3f}" if x else "")
            out.append(f"| {label(rule)} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--sets", default="acdc,lung-sim,lung-response,lung-fov,4dlung,cvc,perseg")
    ap.add_argument("--windows", default="auto,whole,ctx2,ctx3,ctx4,ctx6,crop")
    ap.add_argument("--zoom-caps", default="none,2,1.5,1")
    ap.add_argument("--prompts", default="oracle,registered")
    ap.add_argument("--limit", type=int, default=None, help="first N cases of each 3D set")
    ap.add_argument("--no-refine", action="store_true", help="decode each box once (no refinement call)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--markdown", default=None)
    ap.add_argument("--no-cache", action="store_true")
    args = ap.parse_args()
    rules = parse_windows(args.windows, args.zoom_caps)
    prompts = [p.strip() for p in args.prompts.split(",") if p.strip()]
    from P2SAMLogic.models import load_model
    from P2SAMLogic.runtime import tune_process

    tune_process()
    net = load_model("litemedsam", device="cpu")
    if not args.no_cache:
        from embedding_store import use_disk_cache
        use_disk_cache(net)
    seg = P2SAMSegmenter(net, P2SAMConfig(search_context=None, refine=not args.no_refine))
    rows: List[dict] = []
    for s in [x.strip() for x in args.sets.split(",") if x.strip()]:
        if s in SETS_3D:
            for case in load_set(s, Path(args.data), args.limit):
                rows += run_3d(case, seg, [r for r in rules], prompts)
        elif s in SETS_2D:
            rows += run_2d(s, Path(args.data), seg, [r for r in rules if r.kind != "crop"], prompts)
        else:
            raise SystemExit(f"unknown set {s!r}")
        if args.json:
            Path(args.json).write_text(json.dumps({"rows": rows}, indent=1, default=str))
    text = tables(rows, rules, prompts)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
