#!/usr/bin/env python
"""Accuracy of 3D propagation against registration-only propagation (a script, not a test).

Sets (see accuracy_cases.py): ``acdc`` (REAL cine-MR end-diastole -> end-systole of 10 patients,
read from the development data folder, never copied here), ``lung-sim`` (simulated follow-ups of
the bundled lung CT crop: contraction, motion, new grid, noise) and ``lung-response`` (simulated
tumour regression by tissue replacement and growth into lung, two of them CBCT-like).

Methods (per structure, all through ``P2SAMLogic.propagation.pipeline.propagate`` unless noted):

  rigid               rigid registration only (the prior contour carried over)
  bspline, demons     rigid + that deformable stage, registration only (``method="deformable"``)
  p2sam               the default pipeline (deformable prior, evidence decision, decomposition)
  p2sam rigid-prior   P²SAM with the rigid registration as its prior (``deformable="none"``)
  p2sam no-fallback   P²SAM keeping every non-empty proposal (``decision="model"``)
  registered-box      the plain baseline: LiteMedSAM on each slice at the pipeline's scale, prompted with
                      the registered contour's box, nothing else (no parts, retrieval, decision, rings)
  oracle box          LiteMedSAM prompted with the TRUE follow-up mask's box on each slice (for a
                      ring: outer and cavity boxes, recomposed) at the pipeline's encoding scale -- the
                      ceiling of box prompting; "oracle box whole" / "oracle box crop": the same on the
                      whole slice / on the former crop (box + 15 mm per side)
  p2sam[k=v;k=v]      P²SAM with PropagationConfig overrides, e.g. ``p2sam[prior_weight=0.25]``

Metrics per structure: Dice, HD95 (mm), the share of output slices whose contour came from the
model ("model share"), seconds. Embeddings are cached on disk (embedding_store.py) so that
variants re-use the encoder's work; timings are therefore NOT encoder timings
(Testing/Benchmarks/benchmark_speed.py measures speed). ``--no-cache`` turns the cache off.

    python Testing/Benchmarks/benchmark_accuracy.py --data ../shared/data [--sets acdc,lung-sim,lung-response]
        [--methods rigid,demons,p2sam,...] [--limit N] [--json out.json] [--markdown out.md]
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from accuracy_cases import Case, dice, hd95, load_set  # noqa: E402
from P2SAMLogic.propagation.pipeline import PropagationConfig, _make_segmenter, propagate  # noqa: E402
from P2SAMLogic.io.intensity import choose_window  # noqa: E402
from P2SAMLogic.method.segmenter import mask_box  # noqa: E402
from P2SAMLogic.propagation.structures import cavity_slices, fill_slices  # noqa: E402
from P2SAMLogic.io.volume import Segment  # noqa: E402

DEFAULT_METHODS = ["rigid", "bspline", "demons", "registered-box", "p2sam rigid-prior", "p2sam", "p2sam no-fallback",
                   "oracle box", "oracle box whole"]
REGISTRATION_ONLY = ("rigid", "bspline", "demons")


def method_config(method: str) -> Optional[PropagationConfig]:
    """The :class:`PropagationConfig` of a method name (None for ``oracle box``)."""
    if method == "rigid":
        return PropagationConfig(method="rigid")
    if method in ("bspline", "demons"):
        return PropagationConfig(method="deformable", deformable=method)
    if method == "p2sam":
        return PropagationConfig()
    if method == "p2sam rigid-prior":
        return PropagationConfig(deformable="none")
    if method == "p2sam no-fallback":
        return PropagationConfig(decision="model")
    if method == "registered-box":
        # the plain baseline: the model on each slice at the pipeline's scale, prompted with the registered
        # contour's box, nothing else (no parts, no retrieval, no decision, no decomposition)
        return PropagationConfig(method="registered-box", decision="model", decompose=False)
    if method.startswith("p2sam[") and method.endswith("]"):
        fields = PropagationConfig.__dataclass_fields__
        kw = {}
        for item in method[6:-1].split(";"):
            key, _, value = item.partition("=")
            key = key.strip()
            if key not in fields:
                raise SystemExit(f"unknown PropagationConfig field {key!r} in {method!r}")
            default = getattr(PropagationConfig(), key)
            if isinstance(default, tuple):
                kw[key] = tuple(_number_or_text(v) for v in value.split("|") if v.strip())
            elif isinstance(default, bool):
                kw[key] = value.strip().lower() in ("1", "true", "yes")
            elif isinstance(default, (int, float)) and not isinstance(default, bool):
                kw[key] = type(default)(float(value)) if isinstance(default, int) else float(value)
            else:  # a string, or an optional number (None by default)
                kw[key] = _number_or_text(value)
        return PropagationConfig(**kw)
    if method.startswith("oracle box"):
        return None
    raise SystemExit(f"unknown method {method!r}")


def _number_or_text(text: str):
    """``"1.05"`` -> 1.05, ``"none"`` -> None, anything else stripped text (override values)."""
    text = text.strip()
    if text.lower() == "none":
        return None
    try:
        return float(text)
    except ValueError:
        return text


def oracle_box(net, case: Case, name: str, scale: Optional[str] = None) -> np.ndarray:
    """LiteMedSAM with the true mask's box on each slice holding it, each slice seen through the encoding
    scale ``scale`` (default: the pipeline's, :attr:`PropagationConfig.scale`); a ring (holes on most
    slices) is segmented as outer region and cavity, recomposed."""
    cfg = PropagationConfig() if scale is None else PropagationConfig(scale=scale)
    rule = cfg.encoding_scale().resolve(case.modality)
    seg = _make_segmenter(net, cfg)
    truth = sitk.GetArrayFromImage(case.truth[name]).astype(bool)
    arr = sitk.GetArrayViewFromImage(case.followup)
    win = choose_window(case.followup, case.modality)
    spacing = case.followup.GetSpacing()

    def boxed(mask3d: np.ndarray) -> np.ndarray:
        out = np.zeros(mask3d.shape, dtype=bool)
        for k in np.flatnonzero(mask3d.reshape(mask3d.shape[0], -1).any(1)):
            box = mask_box(mask3d[k])
            w = rule.window(box, mask3d.shape[1:], spacing[:2], net.input_size)
            x0, y0, x1, y1 = w.astype(int)
            res = seg.segment_with_box(win.to_rgb(np.asarray(arr[k, y0:y1, x0:x1])), box - np.array([x0, y0, x0, y0]),
                                       refine=False)
            out[k, y0:y1, x0:x1] = res.mask
        return out

    ks = np.flatnonzero(truth.reshape(truth.shape[0], -1).any(1))
    if ks.size and cavity_slices(truth)[ks].mean() >= 0.3:
        outer = fill_slices(truth)
        ring = boxed(outer) & ~boxed(outer & ~truth)
        closed = cavity_slices(truth)
        ring[~closed] = boxed(truth)[~closed]
        return ring
    return boxed(truth)


def run_case(case: Case, methods: List[str], net) -> List[dict]:
    rows = []
    sp = case.followup.GetSpacing()
    kji = (sp[2], sp[1], sp[0])
    segs = [Segment(n, (1.0, 0.0, 0.0), m) for n, m in case.prior_masks.items()]
    for method in methods:
        t0 = time.perf_counter()
        cfg = method_config(method)
        shares: Dict[str, float] = {}
        timings: Dict[str, float] = {}
        if cfg is None:
            scale = {"oracle box": None, "oracle box whole": "whole", "oracle box crop": "crop"}.get(method)
            if scale is None and method != "oracle box":
                raise SystemExit(f"unknown oracle {method!r}: oracle box, oracle box whole or oracle box crop")
            outs = {n: oracle_box(net, case, n, scale) for n in case.prior_masks}
        else:
            res = propagate(case.prior, segs, case.followup, model=net if cfg.method not in ("rigid", "deformable")
                            else None, config=cfg)
            outs = {s.name: s.array() for s in res.segments}
            shares = {r.name: r.model_share for r in res.reports}
            timings = res.timings
        seconds = time.perf_counter() - t0
        for n, o in outs.items():
            t = sitk.GetArrayFromImage(case.truth[n]).astype(bool)
            rows.append({"set": case.set, "case": case.name, "structure": n, "method": method, "dice": dice(o, t),
                         "hd95_mm": hd95(o, t, kji), "model_share": shares.get(n, math.nan), "seconds": seconds,
                         "registration_s": timings.get("registration"), "true_change_pct":
                         100.0 * (t.sum() * float(np.prod(sp)) / max(1.0, float(sitk.GetArrayViewFromImage(
                             case.prior_masks[n]).sum()) * float(np.prod(case.prior.GetSpacing()))) - 1.0)})
        print(f"{case.set} {case.name} {method:20s} "
              + "  ".join(f"{r['structure']} {r['dice']:.3f}" for r in rows[-len(outs):]) + f"  {seconds:.1f} s",
              file=sys.stderr, flush=True)
    return rows


def _mean(values) -> float:
    v = [x for x in values if x is not None and math.isfinite(x)]
    return float(np.mean(v)) if v else math.nan


def tables(rows: List[dict], methods: List[str]) -> str:
    out = []
    for s in dict.fromkeys(r["set"] for r in rows):
        rs = [r for r in rows if r["set"] == s]
        cases = len(dict.fromkeys(r["case"] for r in rs))
        out.append(f"\n### {s}: {cases} cases, mean over cases\n")
        out.append("| structure | method | Dice | HD95 mm | model share | seconds |")
        out.append("|---|---|---|---|---|---|")
        for n in dict.fromkeys(r["structure"] for r in rs):
            for m in methods:
                x = [r for r in rs if r["structure"] == n and r["method"] == m]
                if not x:
                    continue
                share = _mean(r["model_share"] for r in x)
                out.append(f"| {n} | {m} | {_mean(r['dice'] for r in x):.3f} | {_mean(r['hd95_mm'] for r in x):.2f} | "
                           f"{'' if not math.isfinite(share) else f'{100 * share:.0f}%'} | "
                           f"{_mean(r['seconds'] for r in x):.1f} |")
        # goal check: P²SAM against the best registration-only method, per structure
        if "p2sam" in methods and any(m in methods for m in REGISTRATION_ONLY):
            out.append("\n| structure | p2sam | best registration-only | difference | cases p2sam >= it - 0.01 |")
            out.append("|---|---|---|---|---|")
            for n in dict.fromkeys(r["structure"] for r in rs):
                p = {r["case"]: r["dice"] for r in rs if r["structure"] == n and r["method"] == "p2sam"}
                best_m, best = None, -1.0
                for m in REGISTRATION_ONLY:
                    v = _mean(r["dice"] for r in rs if r["structure"] == n and r["method"] == m)
                    if math.isfinite(v) and v > best:
                        best_m, best = m, v
                if not p or best_m is None:
                    continue
                reg = {r["case"]: r["dice"] for r in rs if r["structure"] == n and r["method"] == best_m}
                ok = sum(1 for c in p if c in reg and p[c] >= reg[c] - 0.01)
                pm = _mean(p.values())
                out.append(f"| {n} | {pm:.3f} | {best_m} {best:.3f} | {pm - best:+.3f} | {ok} of {len(p)} |")
        # the plain baseline: does P²SAM's machinery add anything over the registered box alone?
        if "p2sam" in methods and "registered-box" in methods:
            out.append("\n| structure | p2sam | registered-box (plain baseline) | difference |")
            out.append("|---|---|---|---|")
            for n in dict.fromkeys(r["structure"] for r in rs):
                pm = _mean(r["dice"] for r in rs if r["structure"] == n and r["method"] == "p2sam")
                bm = _mean(r["dice"] for r in rs if r["structure"] == n and r["method"] == "registered-box")
                out.append(f"| {n} | {pm:.3f} | {bm:.3f} | {pm - bm:+.3f} |")
            pm = _mean(r["dice"] for r in rs if r["method"] == "p2sam")
            bm = _mean(r["dice"] for r in rs if r["method"] == "registered-box")
            out.append(f"| all structures | {pm:.3f} | {bm:.3f} | {pm - bm:+.3f} |")
    return "\n".join(out)


def case_tables(rows: List[dict], methods: List[str]) -> str:
    """Dice per case and structure, one column per method (the model share of ``p2sam`` last)."""
    out = []
    for s in dict.fromkeys(r["set"] for r in rows):
        rs = [r for r in rows if r["set"] == s]
        ms = [m for m in methods if any(r["method"] == m for r in rs)]
        out.append(f"\n### {s}: Dice per case\n")
        out.append("| case | structure | " + " | ".join(ms) + " | p2sam model share |")
        out.append("|---|---|" + "---|" * (len(ms) + 1))
        for c in dict.fromkeys(r["case"] for r in rs):
            for n in dict.fromkeys(r["structure"] for r in rs if r["case"] == c):
                cells, share = [], ""
                for m in ms:
                    x = [r for r in rs if r["case"] == c and r["structure"] == n and r["method"] == m]
                    cells.append(f"{x[0]['dice']:.3f}" if x else "")
                    if m == "p2sam" and x and math.isfinite(x[0]["model_share"]):
                        share = f"{100 * x[0]['model_share']:.0f}%"
                out.append(f"| {c} | {n} | " + " | ".join(cells) + f" | {share} |")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"),
                    help="development data folder (holds acdc_ed_es_dev/); default: ../shared/data")
    ap.add_argument("--sets", default="acdc,lung-sim,lung-response")
    ap.add_argument("--methods", default=",".join(DEFAULT_METHODS), help="comma-separated (default: %(default)s)")
    ap.add_argument("--limit", type=int, default=None, help="first N cases of each set")
    ap.add_argument("--json", default=None, help="write every row as JSON")
    ap.add_argument("--markdown", default=None, help="write the tables as Markdown")
    ap.add_argument("--no-cache", action="store_true", help="no on-disk embedding cache")
    ap.add_argument("--merge", default=None,
                    help="a --json file of an earlier run: its rows are kept except those of the methods run now")
    ap.add_argument("--cache-dir", default=None, help="embedding cache folder (default: ~/.cache/p2sam-bench-embeddings)")
    args = ap.parse_args()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in methods:
        method_config(m)
    from P2SAMLogic.models import load_model
    from P2SAMLogic.runtime import tune_process

    tune_process()  # as the CLI does
    net = load_model("litemedsam", device="cpu")
    if not args.no_cache:
        from embedding_store import use_disk_cache

        use_disk_cache(net, Path(args.cache_dir) if args.cache_dir else None)
    rows: List[dict] = []
    run = list(methods)
    if args.merge:
        old = json.loads(Path(args.merge).read_text())
        rows = [r for r in old["rows"] if r["method"] not in run]
        methods = list(old["methods"]) + [m for m in run if m not in old["methods"]]
    for s in [x.strip() for x in args.sets.split(",") if x.strip()]:
        for case in load_set(s, Path(args.data), args.limit):
            rows += run_case(case, run, net)
            if args.json:
                Path(args.json).write_text(json.dumps({"methods": methods, "rows": rows}, indent=1, default=str))
    text = tables(rows, methods) + "\n" + case_tables(rows, methods)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
