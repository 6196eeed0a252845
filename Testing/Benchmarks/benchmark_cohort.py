#!/usr/bin/env python
"""Cohort throughput of `p2sam propagate-many`: cases per minute and seconds per case, 1 and 2 workers.

The cohort is Testing/Tools/make_small_cohort.py (SIMULATED follow-ups of a 128 x 128 x 24 crop of
the bundled lung CT, GTV only) with N cases (seeds 1..N), run with the same fast options as the
tests (--max-parts 2 --slice-margin 0) and the real LiteMedSAM. Each worker count runs the whole
cohort from scratch on a fresh local Dask cluster (--overwrite), so the wall time includes starting
the cluster and loading one model per worker. On a GPU machine add --device cuda (one worker per
GPU by default).

    python Testing/Benchmarks/benchmark_cohort.py [--cases 6] [--workers 1 2] [--device cpu]

Prints a Markdown table: workers, torch threads per worker, cases, wall seconds, cases/minute,
mean and median seconds per case (inside the worker), speed-up over the first row.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "Testing" / "Tools"))

from make_small_cohort import FAST_OPTIONS, make_small_cohort  # noqa: E402
from P2SAMLogic.cli import main as p2sam  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=6)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--folder", type=Path, default=None, help="where to write the cohort (default: a temp folder)")
    args = parser.parse_args(argv)

    folder = args.folder or Path(tempfile.mkdtemp(prefix="p2sam-bench-cohort-"))
    t = time.perf_counter()
    manifest = make_small_cohort(folder, seeds=range(1, args.cases + 1), broken=False)
    print(f"cohort: {args.cases} simulated cases in {folder} ({time.perf_counter() - t:.1f} s to make); "
          f"{os.cpu_count()} CPU cores; device {args.device}", file=sys.stderr)
    rows = []
    for n in args.workers:
        summary = folder / f"summary_{n}w.csv"
        code = p2sam(["propagate-many", str(manifest), "--workers", str(n), "--device", args.device, "--overwrite",
                      "--quiet", "--summary", str(summary), "--propagate-options=" + " ".join(FAST_OPTIONS)])
        report = json.loads(summary.with_suffix(".json").read_text())
        if code != 0:
            print(f"{n} worker(s): exit {code}; see {summary}", file=sys.stderr)
            return code
        secs = [c["seconds"] for c in report["cases"] if c["status"] == "done"]
        rows.append({"workers": n, "threads": report["threads_per_worker"], "cases": len(secs),
                     "wall": report["wall_seconds"], "per_min": 60.0 * len(secs) / report["wall_seconds"],
                     "mean": statistics.mean(secs), "median": statistics.median(secs)})
    base = rows[0]["per_min"]
    print("| workers | torch threads / worker | cases | wall s | cases / min | mean s / case | median s / case "
          "| speed-up |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['workers']} | {r['threads']} | {r['cases']} | {r['wall']:.1f} | {r['per_min']:.2f} | "
              f"{r['mean']:.1f} | {r['median']:.1f} | {r['per_min'] / base:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
