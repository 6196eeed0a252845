#!/usr/bin/env python
"""Benchmark of 3D propagation on SIMULATED follow-ups of a real lung CT (a script, not a test).

No real two-visit 3D CT is available offline: each case is the bundled crop of the
pyradiomics lung1 CT (Testing/Data/lung1_crop) re-imaged by Testing/Tools/simulate_followup.py
(rigid motion, 25 % GTV shrinkage by a local radial deformation, smooth deformation,
0.7 x 0.7 x 3 mm grid with another field of view, noise). Methods compared per structure:

  p2sam            the default pipeline (P²SAM proposals fused with the registered prior)
  p2sam model-only the P²SAM proposals alone (prior_weight 0)
  p2sam w=W        the P²SAM proposals fused with prior_weight W (any W in 0..1, e.g. "p2sam w=0.25")
  registered-box   LiteMedSAM prompted with the rigidly registered prior's box on each slice
  oracle box       LiteMedSAM prompted with the TRUE follow-up mask's box on each slice (ceiling)
  rigid            rigid registration only (prior mask carried over)
  bspline, demons  rigid + deformable registration only (SimpleITK)

Metrics: Dice, HD95 (mm), volume error (%), seconds (and, for the p2sam run from a fresh
embedding cache, its end-to-end and in-pipeline encoder seconds). Speed and memory have their
own benchmark: Testing/Benchmarks/benchmark_speed.py.

    python Testing/Benchmarks/benchmark_3d.py [--cases 3] [--structures GTV,VertebralBody]
        [--methods ...] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "Testing" / "Tools"))

from P2SAMLogic.models import EmbeddingCache, load_model  # noqa: E402
from P2SAMLogic.propagate import PropagationConfig, _box, _make_segmenter, _square, propagate  # noqa: E402
from P2SAMLogic.intensity import choose_window  # noqa: E402
from P2SAMLogic.registration import register_deformable, register_rigid, structure_region, warp_mask  # noqa: E402
from P2SAMLogic.volume import Segment  # noqa: E402
from simulate_followup import simulate_followup  # noqa: E402

CROP = ROOT / "Testing" / "Data" / "lung1_crop"
LABELS = {"GTV": 1, "VertebralBody": 2}
#: motions of the simulated cases (rotation deg X,Y,Z; translation mm)
MOTIONS = [((1.0, -1.5, 4.0), (12.0, -8.0, 6.0)), ((-2.0, 1.0, -3.0), (-6.0, 10.0, -4.0)),
           ((0.5, 2.0, 6.0), (3.0, 5.0, 9.0)), ((1.5, 0.0, -5.0), (-10.0, -3.0, 2.0))]
METHODS = ["p2sam", "p2sam model-only", "registered-box", "oracle box", "rigid", "bspline", "demons"]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int((a & b).sum()) / s


def hd95(a: np.ndarray, b: np.ndarray, spacing_kji) -> float:
    if not a.any() or not b.any():
        return math.inf
    sa = a & ~ndimage.binary_erosion(a)
    sb = b & ~ndimage.binary_erosion(b)
    da = ndimage.distance_transform_edt(~sb, sampling=spacing_kji)[sa]
    db = ndimage.distance_transform_edt(~sa, sampling=spacing_kji)[sb]
    return float(np.percentile(np.concatenate([da, db]), 95))


def oracle_box(net, followup: sitk.Image, truth: np.ndarray, cfg: PropagationConfig) -> np.ndarray:
    """LiteMedSAM with the true mask's box on each slice holding it (same ROI rule as the pipeline)."""
    seg = _make_segmenter(net, cfg)
    arr = sitk.GetArrayViewFromImage(followup)
    win = choose_window(followup, "CT")
    out = np.zeros(truth.shape, dtype=bool)
    spacing = followup.GetSpacing()
    for k in np.flatnonzero(truth.reshape(truth.shape[0], -1).any(1)):
        box = _box(truth[k])
        w = _square(box, cfg.roi_margin_mm, cfg.min_roi_mm, spacing, truth.shape[1:])
        x0, y0, x1, y1 = w.astype(int)
        res = seg.segment_with_box(win.to_rgb(np.asarray(arr[k, y0:y1, x0:x1])), box - np.array([x0, y0, x0, y0]))
        out[k, y0:y1, x0:x1] = res.mask
    return out


def run_case(case: int, structures: List[str], methods: List[str], net, prior, labels) -> List[dict]:
    rot, trans = MOTIONS[case % len(MOTIONS)]
    masks = {n: sitk.Cast(labels == LABELS[n], sitk.sitkUInt8) for n in LABELS}
    fu, truth, info = simulate_followup(prior, masks, seed=case, rotation_deg=rot, translation_mm=trans)
    sp = fu.GetSpacing()
    kji = (sp[2], sp[1], sp[0])
    rows = []
    segs = [Segment(n, (1.0, 0.0, 0.0), masks[n]) for n in structures]
    reg_cache: Dict[str, object] = {}
    for method in methods:
        t0 = time.perf_counter()
        timing = {}
        if method.startswith("p2sam") or method in ("registered-box", "rigid"):
            weight = 0.5
            if method == "p2sam model-only":
                weight = 0.0
            elif method.startswith("p2sam w="):
                weight = float(method.split("=", 1)[1])
            cfg = PropagationConfig(method="p2sam" if method.startswith("p2sam") else method, prior_weight=weight)
            if method == "p2sam":
                net.cache = EmbeddingCache()  # honest timing: nothing encoded before
            res = propagate(prior, segs, fu, model=net, config=cfg)
            outs = {s.name: s.array() for s in res.segments}
            timing = res.timings
        elif method == "oracle box":
            outs = {n: oracle_box(net, fu, sitk.GetArrayFromImage(truth[n]).astype(bool), PropagationConfig())
                    for n in structures}
        else:  # deformable registration only, per structure like the pipeline's rigid step
            outs = {}
            for n in structures:
                if n not in reg_cache:
                    region = structure_region([masks[n]], 40.0)
                    reg_cache[n] = (register_rigid(fu, prior, region).transform, region)
                rigid, region = reg_cache[n]
                tx = register_deformable(fu, prior, rigid, region, method=method)
                outs[n] = sitk.GetArrayFromImage(warp_mask(masks[n], fu, tx)).astype(bool)
        seconds = time.perf_counter() - t0
        for n in structures:
            t = sitk.GetArrayFromImage(truth[n]).astype(bool)
            o = outs[n]
            rows.append({"case": case, "structure": n, "method": method, "dice": dice(o, t), "hd95_mm": hd95(o, t, kji),
                         "volume_error_pct": 100.0 * (o.sum() - t.sum()) / max(1, t.sum()), "seconds": seconds,
                         "true_change_pct": 100.0 * (info["volume_ratio"][n] - 1.0),
                         "encoder_only_s": timing.get("encode"), "total_s": timing.get("total")})
        print(f"case {case} {method:17s} " + "  ".join(f"{r['structure']} {r['dice']:.3f}" for r in rows[-len(structures):])
              + f"  {seconds:.1f} s", file=sys.stderr, flush=True)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=3, help="simulated follow-ups (seeds 0..N-1, different motions)")
    ap.add_argument("--structures", default="GTV,VertebralBody")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    structures = [s for s in args.structures.split(",") if s]
    methods = [m for m in args.methods.split(",") if m]
    prior = sitk.ReadImage(str(CROP / "prior_ct.nrrd"), sitk.sitkFloat32)
    labels = sitk.ReadImage(str(CROP / "prior_labels.nrrd"))
    from P2SAMLogic.runtime import tune_process

    tune_process()  # as the CLI does
    net = load_model("litemedsam", device="cpu")
    rows: List[dict] = []
    for case in range(args.cases):
        rows += run_case(case, structures, methods, net, prior, labels)
    if rows:
        print(f"\n### Simulated follow-ups of the lung1 crop: {args.cases} cases, mean over cases\n")
    print("| structure | method | Dice | HD95 mm | volume error % | seconds |")
    print("|---|---|---|---|---|---|")
    for n in structures:
        for m in methods:
            rs = [r for r in rows if r["structure"] == n and r["method"] == m]
            if not rs:
                continue
            hd = [r["hd95_mm"] for r in rs if math.isfinite(r["hd95_mm"])]
            print(f"| {n} | {m} | {np.mean([r['dice'] for r in rs]):.3f} | "
                  f"{np.mean(hd) if hd else float('nan'):.2f} | "
                  f"{np.mean([r['volume_error_pct'] for r in rs]):+.1f} | {np.mean([r['seconds'] for r in rs]):.1f} |")
    p = [r for r in rows if r["method"] == "p2sam" and r["total_s"]]
    if p:
        seen = {}
        for r in p:
            seen[r["case"]] = (r["total_s"], r["encoder_only_s"])
        tot = np.mean([v[0] for v in seen.values()])
        enc = np.mean([v[1] for v in seen.values()])
        print(f"\np2sam end-to-end {tot:.1f} s, of which {enc:.1f} s in the image encoder, per case "
              "(speed and memory: Testing/Benchmarks/benchmark_speed.py)")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
