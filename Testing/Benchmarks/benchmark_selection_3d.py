#!/usr/bin/env python
"""Candidate selection in 3D, per slice: the candidate P²SAM picks, the best one it generated, the
registered prior, and what the decision kept (a script, not a test).

For each case of a 3D development set (``accuracy_cases.py``: ``acdc`` = REAL cine-MR end-diastole ->
end-systole, read from the development data folder; ``lung-response``) the default pipeline runs with
``keep_details`` and, for every part (a filled structure; a ring's outer region and cavity) on every
follow-up slice where the model proposed something and the true part is present, prints the Dice
against the true part on that slice of:

  selected    the candidate the retrieval picked (the model's proposal)
  best        the best candidate generated on that slice (the ceiling of any selection rule)
  registered  the registered prior (rigid + deformable)
  output      what the decision kept (the proposal fused with the registered prior, or the registered prior)

The true part of a ring is derived from the true structure as the pipeline derives its parts: the
outer region = the structure with its in-plane holes filled, the cavity = the filled structure minus
the structure. Embeddings are cached on disk (embedding_store.py).

    python Testing/Benchmarks/benchmark_selection_3d.py --data ../shared/data [--sets acdc] [--limit N]
        [--json out.json] [--markdown out.md]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from accuracy_cases import dice, load_set  # noqa: E402
from P2SAMLogic.propagation.pipeline import PropagationConfig, propagate  # noqa: E402
from P2SAMLogic.propagation.structures import fill_slices  # noqa: E402
from P2SAMLogic.io.volume import Segment  # noqa: E402


def part_truth(name: str, truth: np.ndarray) -> np.ndarray:
    """The true part (``bool [k, j, i]``) for a part name of :mod:`P2SAMLogic.propagation.structures`."""
    if name.endswith(" outer"):
        return fill_slices(truth)
    if name.endswith(" cavity"):
        return fill_slices(truth) & ~truth
    return truth


def run_case(case, net) -> List[dict]:
    """One row per (structure, part, slice)."""
    segs = [Segment(n, (1.0, 0.0, 0.0), m) for n, m in case.prior_masks.items()]
    result = propagate(case.prior, segs, case.followup, model=net, config=PropagationConfig(), keep_details=True)
    rows = []
    for structure, det in result.details.items():
        truth = sitk.GetArrayFromImage(case.truth[structure]).astype(bool)
        for part, p in det["parts"].items():
            t = part_truth(part, truth)
            for k, prop in sorted(p["proposals"].items()):
                if not t[k].any() or not p["registered"][k].any():
                    continue
                shape = t.shape[1:]
                x0, y0, x1, y1 = prop.window.astype(int)
                cands = []
                for m in prop.candidate_masks or []:
                    full = np.zeros(shape, dtype=bool)
                    full[y0:y1, x0:x1] = m
                    cands.append(dice(full, t[k]))
                dec = p["decisions"].get(k)
                rows.append({"case": case.name, "set": case.set, "structure": structure, "part": part, "k": int(k),
                             "selected": dice(prop.full(shape), t[k]), "best": max(cands) if cands else float("nan"),
                             "candidates": len(cands), "registered": dice(p["registered"][k], t[k]),
                             "output": dice(p["decided"][k], t[k]),
                             "source": dec.source if dec is not None else ""})
    return rows


def table(rows: List[dict]) -> str:
    out = ["| set | part | slices | selected | best generated | registered | output | model kept | "
           "selected >= best - 0.03 |", "|---|---|---|---|---|---|---|---|---|"]
    keys = sorted({(r["set"], r["part"]) for r in rows})
    groups: Dict[tuple, List[dict]] = {k: [r for r in rows if (r["set"], r["part"]) == k] for k in keys}
    for s in sorted({r["set"] for r in rows}):
        groups[(s, "all parts")] = [r for r in rows if r["set"] == s]
    for (s, part), rs in groups.items():
        if not rs:
            continue
        sel = np.mean([r["selected"] for r in rs])
        best = np.nanmean([r["best"] for r in rs])
        close = np.mean([r["selected"] >= r["best"] - 0.03 for r in rs])
        kept = np.mean([r["source"] == "model" for r in rs])
        out.append(f"| {s} | {part} | {len(rs)} | {sel:.3f} | {best:.3f} | {np.mean([r['registered'] for r in rs]):.3f} "
                   f"| {np.mean([r['output'] for r in rs]):.3f} | {kept:.0%} | {close:.0%} |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"),
                    help="development data folder (holds acdc_ed_es_dev/); default: ../shared/data")
    ap.add_argument("--sets", default="acdc")
    ap.add_argument("--limit", type=int, default=None, help="first N cases of each set")
    ap.add_argument("--json", help="write every slice row as JSON")
    ap.add_argument("--markdown", help="write the table as Markdown")
    ap.add_argument("--no-cache", action="store_true", help="no on-disk embedding cache")
    args = ap.parse_args(argv)

    from P2SAMLogic.models import load_model
    from P2SAMLogic.runtime import tune_process

    tune_process()
    net = load_model("litemedsam", device="cpu")
    if not args.no_cache:
        from embedding_store import use_disk_cache
        use_disk_cache(net)
    rows: List[dict] = []
    for name in args.sets.split(","):
        for case in load_set(name.strip(), Path(args.data), args.limit):
            case_rows = run_case(case, net)
            rows += case_rows
            for part in sorted({r["part"] for r in case_rows}):
                rs = [r for r in case_rows if r["part"] == part]
                print(f"{case.set} {case.name} {part:22s} slices {len(rs):3d}  selected "
                      f"{np.mean([r['selected'] for r in rs]):.3f}  best {np.nanmean([r['best'] for r in rs]):.3f}  "
                      f"registered {np.mean([r['registered'] for r in rs]):.3f}  output "
                      f"{np.mean([r['output'] for r in rs]):.3f}", flush=True)
    text = table(rows)
    print("\n" + text)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
