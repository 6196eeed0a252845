#!/usr/bin/env python
"""The demo's last screen: per structure, the Dice of the P²SAM proposal and of the registration alone.

Both are measured against the simulation's true follow-up labels, so the table shows what the model
adds over the deformable registration it starts from (or that it adds nothing), next to the share of
slices whose contour came from the model and the number of flagged slices (``report.json``).

CLI (``scripts/run_demo.sh`` runs it)::

    python Testing/Tools/demo_summary.py --followup F.nrrd --truth labels.nrrd --simulation simulation.json \\
        --proposal proposal.seg.nrrd --registration registration.seg.nrrd --report report.json
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Dict, List

import numpy as np
import SimpleITK as sitk

from P2SAMLogic.io import read_segmentation, read_volume


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two ``bool`` arrays of one shape (1.0 when both are empty)."""
    n = int(a.sum()) + int(b.sum())
    return 1.0 if n == 0 else 2.0 * float((a & b).sum()) / n


def summarise(followup: Path, truth: Path, names: Dict[int, str], proposal: Path, registration: Path,
              report: Path) -> List[dict]:
    """One row per structure of ``proposal``: ``name``, ``proposal_dice``, ``registration_dice``,
    ``model_share`` (0-1, NaN when not reported) and ``flagged`` (slice count).

    Args:
        followup: the follow-up image (the segmentations' grid).
        truth: labelmap on ``followup``'s grid; ``names`` maps its label values to structure names.
        proposal, registration: ``p2sam propagate`` outputs (default method / ``--method deformable``).
        report: the proposal run's ``report.json``.
    """
    image, source = read_volume(str(followup))
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(truth)))
    value = {n: v for v, n in names.items()}
    registered = {s.name: s.array() for s in read_segmentation(str(registration), image, source)}
    reported = {s["name"]: s for s in json.loads(Path(report).read_text())["segments"]}
    rows = []
    for seg in read_segmentation(str(proposal), image, source):
        if seg.name not in value:
            raise ValueError(f"{truth}: no true label for segment {seg.name!r} (labels: {names})")
        if seg.name not in registered:
            raise ValueError(f"{registration}: no segment {seg.name!r}")
        t = labels == value[seg.name]
        rep = reported.get(seg.name, {})
        share = rep.get("model_share")
        rows.append({"name": seg.name, "proposal_dice": dice(seg.array(), t),
                     "registration_dice": dice(registered[seg.name], t),
                     "model_share": math.nan if share is None else float(share),
                     "flagged": int(rep.get("slices_flagged", 0))})
    return rows


def format_summary(rows: List[dict]) -> str:
    """The table the demo prints (Dice to 3 decimals, model share in per cent)."""
    lines = ["Dice against the simulation's true follow-up contours (1 = perfect):",
             f"{'structure':<15}{'P2SAM proposal':>16}{'registration alone':>20}{'model share':>13}{'flagged slices':>16}"]
    for r in rows:
        share = "n/a" if not math.isfinite(r["model_share"]) else f"{100 * r['model_share']:.0f} %"
        lines.append(f"{r['name']:<15}{r['proposal_dice']:>16.3f}{r['registration_dice']:>20.3f}{share:>13}"
                     f"{r['flagged']:>16d}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Print the demo's Dice table: P2SAM proposal vs registration alone.")
    ap.add_argument("--followup", required=True, type=Path)
    ap.add_argument("--truth", required=True, type=Path, help="true follow-up labelmap")
    ap.add_argument("--simulation", required=True, type=Path, help="simulation.json (its 'labels': value -> name)")
    ap.add_argument("--proposal", required=True, type=Path)
    ap.add_argument("--registration", required=True, type=Path)
    ap.add_argument("--report", required=True, type=Path)
    args = ap.parse_args(argv)
    names = {int(v): n for v, n in json.loads(args.simulation.read_text())["labels"].items()}
    print(format_summary(summarise(args.followup, args.truth, names, args.proposal, args.registration, args.report)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
