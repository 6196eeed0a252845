#!/usr/bin/env python
"""Candidate selection: the Dice of the candidate P²SAM picks, of the best one it generated, and of
the oracle box (a script, not a test).

For each target of the 2D development sets (benchmark_2d.py's: the 4D-Lung pair, CVC-612 reference
frame 1 -> frames 2..20, PerSeg) P²SAM generates candidates (part counts x box locators x box
scales) and picks one by its retrieval rule. This prints, per target and per set:

  selected   Dice of the picked candidate (what the user gets)
  best       Dice of the best candidate generated (the ceiling of any selection rule)
  oracle     Dice of LiteMedSAM prompted with the true mask's box (the ceiling of box prompting)
  n          candidates generated

for each selection rule given with ``--rules`` (``rank``: the default, a rank sum of five measures, see
``P2SAMSegmenter._select``; ``rank3``: its first three, the previous default; ``wasserstein``: the
paper's rule; ``iou``: the decoder's predicted IoU alone). Candidates other than the winner are scored
unrefined (the winner gets one refinement), so other rules are slightly disadvantaged.

    python Testing/Benchmarks/benchmark_selection.py --data ../shared/data [--rules rank,wasserstein] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Dict, List

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchmark_2d import dev_sets  # noqa: E402
from P2SAMLogic.io.images2d import read_image, read_mask  # noqa: E402
from P2SAMLogic.models import load_model  # noqa: E402
from P2SAMLogic.method.segmenter import P2SAMConfig, P2SAMSegmenter, mask_box  # noqa: E402

RULES = ("rank", "rank3", "wasserstein", "iou")


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int((a & b).sum()) / s


def pick(segmenter: P2SAMSegmenter, rule: str, cands, expected_area: float) -> int:
    """Index chosen by ``rule``: the engine's own selection (``rank``, ``rank3``, ``wasserstein``) or the
    decoder's predicted IoU alone (``iou``); empty masks never win."""
    if rule == "iou":
        ok = [i for i, c in enumerate(cands) if np.isfinite(c.score)]
        return max(ok, key=lambda i: cands[i].predicted_iou) if ok else 0
    saved = segmenter.config.selection
    segmenter.config.selection = rule
    try:
        return segmenter._select(cands, expected_area)
    finally:
        segmenter.config.selection = saved


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--rules", default="rank,rank3,wasserstein,iou")
    ap.add_argument("--json", default=None)
    ap.add_argument("--dump", default=None, help="also pickle every candidate's mask and scores (for rule studies)")
    ap.add_argument("--no-cache", action="store_true", help="no on-disk embedding cache (embedding_store.py)")
    args = ap.parse_args(argv)
    rules = [r for r in args.rules.split(",") if r]
    for r in rules:
        if r not in RULES:
            raise SystemExit(f"unknown rule {r!r}; expected {', '.join(RULES)}")
    from P2SAMLogic.runtime import tune_process

    tune_process()
    model = load_model("litemedsam", device="cpu")
    if not args.no_cache:
        from embedding_store import use_disk_cache

        use_disk_cache(model)
    cfg = replace(P2SAMConfig(), keep_candidate_masks=True)
    rows: List[dict] = []
    dump: List[dict] = []
    for set_name, groups in dev_sets(Path(args.data)).items():
        for ref_path, ref_mask_path, targets in groups:
            seg = P2SAMSegmenter(model, cfg)
            ref_img, ref_mask = read_image(ref_path), read_mask(ref_mask_path)
            ref = seg.prepare_reference(ref_img, ref_mask)
            oracle_seg = P2SAMSegmenter(model, P2SAMConfig())
            for t_path, m_path in targets:
                img, gt = read_image(t_path), read_mask(m_path)
                res = seg.segment(ref, img)
                # the refined winner replaced its own mask: score the others unrefined, the winner as returned
                ds = [dice(m, gt) for m in res.candidate_masks]
                row = {"set": set_name, "target": Path(t_path).name, "n": len(ds), "best": max(ds),
                       "oracle": dice(oracle_seg.segment_with_box(img, mask_box(gt)).mask, gt)}
                expected = float(ref.coverage.sum())  # the reference's area; same pixel size in the window
                for r in rules:
                    row[r] = ds[pick(seg, r, res.candidates, expected)]
                row["default"] = dice(res.mask, gt)
                rows.append(row)
                if args.dump:
                    dump.append({"set": set_name, "target": row["target"], "gt": np.packbits(gt),
                                 "shape": gt.shape, "masks": [np.packbits(m) for m in res.candidate_masks],
                                 "candidates": [c.summary() for c in res.candidates],
                                 "ref_cells": int(ref.foreground.features.shape[0])})
                print(f"{set_name} {row['target']}: " + " ".join(f"{k} {row[k]:.3f}" for k in
                      ["default", *rules, "best", "oracle"]) + f" n={row['n']}", file=sys.stderr, flush=True)
    print("\n| set | targets | " + " | ".join(["default", *rules, "best generated", "oracle box"]) + " |")
    print("|---|---|" + "---|" * (len(rules) + 3))
    for s in dict.fromkeys(r["set"] for r in rows):
        rs = [r for r in rows if r["set"] == s]
        vals = [np.mean([r[k] for r in rs]) for k in ["default", *rules, "best", "oracle"]]
        print(f"| {s} | {len(rs)} | " + " | ".join(f"{v:.3f}" for v in vals) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    if args.dump:
        import gzip
        import pickle

        with gzip.open(args.dump, "wb") as f:
            pickle.dump(dump, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
