#!/usr/bin/env python
"""The registration plausibility check (P2SAMLogic/propagation/regcheck.py) on legit and broken pairs.

Legit (the check must pass, and no field-of-view cut may be reported):

* ``demo`` -- the lung crop's simulated follow-up with ``simulate_followup``'s defaults (seed 0);
* ``lung-sim`` -- the accuracy benchmark's 3 simulated follow-ups; ``lung-response`` -- its 4
  tumour-response simulations (Testing/Benchmarks/accuracy_cases.py);
* ``acdc`` -- the 10 ACDC development patients, ED image + labels as the prior, ES image as the
  follow-up (REAL cine MR; read from ``--data``, never copied).

Broken (the check must fail):

* every legit follow-up with its header rotated by 90 degrees about the z axis, pixels unchanged
  (the demo also about x and y, and mirrored left-right);
* ACDC patient ``n``'s prior with patient ``n + 1``'s follow-up (another patient).

A header mirrored left-right is listed apart: a structure on the mid-line (the vertebral body)
lands in its right place after a mirror and a rigid registration, so its check may pass; an
off-mid-line one (the GTV) fails, which stops the run.

Runs the real stages ``check_inputs`` and ``register`` of ``P2SAMLogic.propagation.pipeline`` (rigid only;
``allow_poor_registration`` so that failures are measured instead of raised) and prints one row
per structure plus the margins. About 10 minutes on 2 CPU cores.

    python Testing/Benchmarks/benchmark_registration_check.py --data ../shared/data [--markdown out.md]
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import SimpleITK as sitk

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from accuracy_cases import ROOT, acdc_cases, lung_response_cases, lung_sim_cases, _lung_crop  # noqa: E402

sys.path.insert(0, str(ROOT))
from P2SAMLogic.propagation.pipeline import PropagationConfig, _Progress, check_inputs, register  # noqa: E402
from P2SAMLogic.propagation.regcheck import SCORE_BOUND  # noqa: E402
from P2SAMLogic.io.volume import Segment  # noqa: E402


def rotated_header(image: sitk.Image, axis: str, degrees: float = 90.0) -> sitk.Image:
    """``image`` with its direction matrix rotated about the LPS ``axis`` (pixels and origin unchanged)."""
    a = math.radians(degrees)
    c, s = math.cos(a), math.sin(a)
    rot = {"z": [[c, -s, 0], [s, c, 0], [0, 0, 1]], "x": [[1, 0, 0], [0, c, -s], [0, s, c]],
           "y": [[c, 0, s], [0, 1, 0], [-s, 0, c]]}[axis]
    out = sitk.Image(image)
    out.SetDirection([float(v) for v in (np.array(rot) @ np.array(image.GetDirection()).reshape(3, 3)).flatten()])
    return out


def mirrored_header(image: sitk.Image) -> sitk.Image:
    """``image`` with its first axis reversed in the header (a left-right mirror; pixels unchanged)."""
    out = sitk.Image(image)
    d = np.array(image.GetDirection()).reshape(3, 3).copy()
    d[:, 0] *= -1.0
    out.SetDirection([float(v) for v in d.flatten()])
    return out


def measure(prior: sitk.Image, masks: Dict[str, sitk.Image], followup: sitk.Image) -> List[Tuple[str, dict]]:
    """``[(structure, findings.describe())]`` from the real check and register stages."""
    cfg = PropagationConfig(method="rigid", allow_poor_registration=True).validate()
    segs = [Segment(n, (1.0, 0.0, 0.0), m) for n, m in masks.items()]
    study = check_inputs(prior, segs, followup, cfg)
    register(study, cfg, _Progress(None, None))
    return [(n, study.findings[n].describe()) for n in masks]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--markdown", type=Path, default=None)
    ap.add_argument("--sets", default="demo,lung-sim,lung-response,acdc")
    args = ap.parse_args(argv)
    sets = args.sets.split(",")
    jobs = []  # (set, case, kind, prior, masks, followup)
    if "demo" in sets:
        from simulate_followup import simulate_followup

        ct, masks = _lung_crop()
        fu, _, _ = simulate_followup(ct, masks, seed=0)
        jobs.append(("demo", "demo", "legit", ct, masks, fu))
        for axis in "zxy":
            jobs.append(("demo", f"demo, header rotated 90° about {axis}", "bad", ct, masks, rotated_header(fu, axis)))
        jobs.append(("demo", "demo, header mirrored left-right", "mirror", ct, masks, mirrored_header(fu)))
    cases = []
    if "lung-sim" in sets:
        cases += lung_sim_cases(3)
    if "lung-response" in sets:
        cases += lung_response_cases()
    if "acdc" in sets:
        cases += acdc_cases(args.data)
    acdc = [c for c in cases if c.set == "acdc"]
    for c in cases:
        jobs.append((c.set, c.name, "legit", c.prior, c.prior_masks, c.followup))
        jobs.append((c.set, f"{c.name}, header rotated 90° about z", "bad", c.prior, c.prior_masks,
                     rotated_header(c.followup, "z")))
    for i, c in enumerate(acdc):
        other = acdc[(i + 1) % len(acdc)]
        jobs.append((c.set, f"{c.name} prior, {other.name} follow-up", "bad", c.prior, c.prior_masks, other.followup))

    rows = []
    for set_name, case, kind, prior, masks, fu in jobs:
        t = time.perf_counter()
        try:
            found = measure(prior, masks, fu)
        except Exception as exc:  # noqa: BLE001 - a refusal before the check (no overlap...) is a result too
            rows.append((set_name, case, kind, "-", math.nan, math.nan, math.nan, math.nan, f"refused: {exc}"))
            print(f"{case}: refused ({exc})", flush=True)
            continue
        for name, d in found:
            rc = d["registration_check"]
            cuts = "; ".join(c["reason"] for c in d["field_of_view"]) or "-"
            score = math.nan if rc["score"] is None else rc["score"]
            rows.append((set_name, case, kind, name, score, rc["correlation"] or math.nan,
                         rc["shifted_correlation"] or math.nan, rc["header_free_correlation"] or math.nan, cuts))
            print(f"{case:45s} {name:14s} score {score:.3f}  r {rc['correlation']}  r_shift "
                  f"{rc['shifted_correlation']}  header-free {rc['header_free_correlation']}  FOV {cuts}  "
                  f"({time.perf_counter() - t:.1f} s)", flush=True)

    legit = [r for r in rows if r[2] == "legit" and math.isfinite(r[4])]
    bad = [r for r in rows if r[2] == "bad" and math.isfinite(r[4])]
    lines = ["| set | case | structure | score | r | r shifted | r header-free | field of view |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r[0]} | {r[1]} | {r[3]} | {r[4]:.3f} | {r[5]:.3f} | {r[6]:.3f} | {r[7]:.3f} | {r[8]} |")
    summary = []
    if legit:
        low = min(legit, key=lambda r: r[4])
        summary.append(f"legit: {len(legit)} structures, lowest score {low[4]:.3f} ({low[1]}, {low[3]}); "
                       f"{sum(1 for r in legit if r[4] < SCORE_BOUND)} below the bound {SCORE_BOUND}; field-of-view "
                       f"cuts reported: {sum(1 for r in rows if r[2] == 'legit' and r[8] != '-')}")
    if bad:
        high = max(bad, key=lambda r: r[4])
        summary.append(f"broken: {len(bad)} structures, highest score {high[4]:.3f} ({high[1]}, {high[3]}); "
                       f"{sum(1 for r in bad if r[4] >= SCORE_BOUND)} at or above the bound; "
                       f"{sum(1 for r in rows if r[2] == 'bad' and not math.isfinite(r[4]))} refused before the check")
    for r in rows:
        if r[2] == "mirror":
            summary.append(f"mirrored header: {r[3]} score {r[4]:.3f} ({'passes' if r[4] >= SCORE_BOUND else 'fails'})")
    text = "\n".join(lines + [""] + summary)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
