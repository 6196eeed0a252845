"""Cohort runs: ``p2sam propagate-many MANIFEST`` runs one ``p2sam propagate`` per manifest row on Dask.

Every case goes through exactly the code of ``p2sam propagate`` (:func:`P2SAMLogic.cli.propagate_cmd.run_propagate`:
the same input checks, atomic writes, provenance and clean-up on failure); this module adds the
manifest, the distribution over Dask workers, resuming, and the summary.

Manifest: a CSV file with a header line and one row per case (relative paths are relative to the
manifest's folder)::

    case,prior_image,prior_segmentation,followup,output,segments,series_uid,truth
    p001,p001/plan_ct.nrrd,p001/plan.seg.nrrd,p001/week3/,out/p001_week3.seg.nrrd,GTV,,
    p002,p002/plan/,p002/plan/RS.dcm,p002/fu/,out/p002_fu.seg.nrrd,,1.2.3.4,p002/fu_truth.seg.nrrd

Required columns ``prior_image, prior_segmentation, followup, output`` (as the options of
``p2sam propagate``); optional ``case`` (an identifier for the summary), ``segments`` (names
separated by commas or semicolons), ``series_uid`` (one or two UIDs separated by semicolons or
spaces) and ``truth`` (a segmentation on the follow-up: the summary gives the Dice of the
proposal to it, segment by segment, matched by name). Each case also writes its QA report beside
its output: ``<output without extension>.report.json``.

Where it runs: :func:`run_cohort` starts a local Dask cluster (``workers`` processes, one model
loaded per process and reused for all its cases; GPU workers when there are GPUs) or connects to
an existing scheduler (``scheduler="tcp://host:8786"``), whose workers must have this package
installed and see the same paths (a shared file system). Adding workers, on this machine or
others, needs no code change.

Dask is imported only when a cohort runs (``pip install 'p2sam-slicer[dask]'``); nothing in the
engine imports this module.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import io
import json
import os
import shlex
import sys
import time
import traceback
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from .. import __version__
from ..errors import InputError, P2SAMError
from .manifest import Case, path_key, read_manifest
from .options import add_model_options, pick_series, propagation_config
from .propagate_cmd import propagate_parser, run_propagate

#: ``p2sam propagate`` options that the manifest or ``propagate-many`` itself sets
MANAGED_OPTIONS = ("--prior-image", "--prior-segmentation", "--followup", "--output", "--report", "--overlay",
                   "--segments", "--series-uid", "--overwrite", "--quiet", "--model", "--model-type", "--device")

HELP = """\
Run `p2sam propagate` on every case of a cohort, in parallel on Dask.

MANIFEST is a CSV file with a header line and one row per case; relative paths
are relative to the manifest's folder:

  case,prior_image,prior_segmentation,followup,output,segments,series_uid,truth
  p001,p001/plan.nrrd,p001/plan.seg.nrrd,p001/week3/,out/p001.seg.nrrd,GTV,,
  p002,p002/plan/,p002/plan/RS.dcm,p002/fu/,out/p002.seg.nrrd,,1.2.3.4,

  required  prior_image, prior_segmentation, followup, output: as the options
            of `p2sam propagate` (files or DICOM folders; output .seg.nrrd,
            .nii.gz or .dcm)
  optional  case (identifier in the summary), segments (names separated by ,
            or ;), series_uid (one or two UIDs separated by ; or spaces),
            truth (a segmentation on the follow-up: the summary gives each
            segment's Dice to it, matched by name)

Each case writes its output and its QA report <output stem>.report.json, with
the same provenance and atomic writing as `p2sam propagate`. A case whose
output and report both exist is skipped (resume after an interruption) when
its report records the same engine version, the same input checksums
(SHA-256 of each input file or DICOM folder), the same model (its SHA-256)
and the same parameters; if any
differs the case fails, naming what changed (pass --overwrite to compute it
again). One case failing never stops the others: its error goes to the
summary.

--propagate-options: option names in full (an abbreviation such as --overw
is refused), none of those the manifest or propagate-many sets.

Where it runs
  default         a local Dask cluster of --workers processes (default: one
                  per GPU when there are GPUs, else one per 8 CPU cores, at
                  least 1), each loading the model once and using
                  cores/workers torch threads
  --scheduler A   an existing Dask cluster (e.g. tls://10.0.0.5:8786); its
                  workers need this package installed and must see the
                  manifest's paths (shared file system); set
                  --threads-per-worker (Dask starts workers with 1 thread).
                  Whoever can reach a scheduler can run any code on its
                  workers: secure it with TLS and keep it on a private
                  network (docs/scale-out.md)

Summary (replaced on every run): <manifest stem>.summary.csv and .json beside
the manifest, or --summary PATH.csv (+ PATH.json): per case and segment the
status (done, skipped, failed), seconds, prior and follow-up volume (mL),
change (%), flagged slices, Dice to the truth, and the error of a failed case.

Exit status: 0 when every case succeeded (or was skipped), 1 when any failed
(after all ran), 2 for a bad manifest or option (the message names the line
and column), 130 when interrupted.

Examples
  p2sam propagate-many cohort.csv --workers 2
  p2sam propagate-many cohort.csv --scheduler tcp://gpu-server:8786 --device cuda
  p2sam propagate-many cohort.csv --propagate-options="--max-parts 3 --roi-margin 20"
"""


def propagate_option_names() -> List[str]:
    """Every option string ``p2sam propagate`` accepts (``--max-parts``, ``-h``...)."""
    parser = propagate_parser()
    for action in parser._actions:  # the sub-command table
        if isinstance(action, argparse._SubParsersAction):
            return sorted(o for a in action.choices["propagate"]._actions for o in a.option_strings)
    raise RuntimeError("p2sam has no propagate command")  # pragma: no cover


def check_propagate_options(options: Sequence[str], example: Case) -> List[str]:
    """Check the ``--propagate-options`` with ``p2sam propagate``'s own parser; returns them as a list.

    Option names must be written in full: argparse would take ``--overw`` for ``--overwrite``, so an
    abbreviation is refused (naming the option it stands for), as is any option that the manifest
    or ``propagate-many`` sets itself (:data:`MANAGED_OPTIONS`).
    """
    options = list(options)
    known = propagate_option_names()
    for opt in options:
        if not opt.startswith("--") or opt == "--":
            continue
        name = opt.split("=", 1)[0]
        if name not in known:
            full = [k for k in known if k.startswith(name)]
            if full:
                raise InputError("--propagate-options", f"{name} is an abbreviation (of {', '.join(full)}); write "
                                                        "option names in full")
        if name in MANAGED_OPTIONS:
            raise InputError("--propagate-options", f"{name} is set per case by the manifest or by propagate-many "
                                                    "itself; remove it")
    parse_propagate_argv(example.propagate_argv(options, overwrite=False), "--propagate-options")
    return options


def parse_propagate_argv(argv: List[str], source: str) -> argparse.Namespace:
    """``p2sam propagate``'s parser on ``argv``; its complaint becomes an :class:`InputError` of ``source``."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return propagate_parser().parse_args(argv)
    except SystemExit:
        lines = [ln for ln in err.getvalue().strip().splitlines() if ln.strip()]
        reason = lines[-1].split("error:", 1)[-1].strip() if lines else "not accepted by p2sam propagate"
        raise InputError(source, reason) from None


# ------------------------------------------------------------------------------------------------
# one case, on a worker

_MODELS: Dict[Tuple[str, Optional[str], str], object] = {}
_PROCESS_READY: Dict[str, object] = {}


def _prepare_process(threads: Optional[int]) -> None:
    """Once per worker process: allocator tuning, torch threads, this worker's GPU."""
    if not _PROCESS_READY:
        from ..runtime import tune_process

        tune_process()
        _PROCESS_READY["tuned"] = True
    if threads:
        import torch

        if torch.get_num_threads() != int(threads):
            torch.set_num_threads(int(threads))
    if "gpu" not in _PROCESS_READY:
        _PROCESS_READY["gpu"] = None
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count > 1:
            try:
                from distributed import get_worker

                index = int(str(get_worker().name).rsplit("-", 1)[-1]) % count
            except (ImportError, ValueError):
                index = os.getpid() % count
            torch.cuda.set_device(index)  # one GPU per local worker
            _PROCESS_READY["gpu"] = index


def _model(name: str, model_type: Optional[str], device: str):
    """The model for this worker process, loaded on first use and reused for every later case."""
    key = (name, model_type, device)
    if key not in _MODELS:
        from ..models import load_model

        _MODELS[key] = load_model(name, model_type, device)
    return _MODELS[key]


def run_case(case: Case, options: Sequence[str], overwrite: bool = False, threads: Optional[int] = None,
             model: str = "litemedsam", model_type: Optional[str] = None, device: str = "auto") -> dict:
    """Run one case as ``p2sam propagate`` would (runs on a Dask worker; never raises).

    Returns:
        ``{"line", "case", "status": "done"|"skipped"|"failed", "seconds", "output", "report", "error",
        "warnings", "worker", "segments": [{"name", "prior_volume_ml", "followup_volume_ml",
        "change_percent", "slices_flagged", "flagged_slices", "dice"}]}``
    """
    from ..propagation.pipeline import needs_model

    start = time.perf_counter()
    out = {"line": case.line, "case": case.case_id, "status": "failed", "seconds": None, "output": case.output,
           "report": case.report, "error": None, "warnings": [], "segments": [],
           "worker": f"{os.uname().nodename if hasattr(os, 'uname') else ''}:{os.getpid()}"}
    try:
        _prepare_process(threads)
        argv = case.propagate_argv(list(options) + ["--model", model, "--device", device]
                                   + (["--model-type", model_type] if model_type else []), overwrite)
        truth = _read_truth(case) if case.truth else None  # a bad truth fails the case before anything runs
        args = parse_propagate_argv(argv, f"case {case.case_id}")
        if not overwrite and os.path.exists(case.output) and os.path.exists(case.report):
            stale = stale_reason(case, args)
            if stale:
                raise InputError(case.output, f"exists, but {stale}; pass --overwrite to compute it again")
            status = "skipped"
        else:
            net = None if not needs_model(args.method) else _model(args.model, args.model_type, args.device)
            run_propagate(args, model=net)
            status = "done"
        out["segments"], out["warnings"] = _summarise(case, truth)
        out["status"] = status  # only now: a case whose run or summary raised stays "failed"
    except P2SAMError as exc:
        out["error"] = str(exc)
    except Exception as exc:  # reported in the summary, never stops the other cases
        out["error"] = f"{type(exc).__name__}: {exc}"
        out["traceback"] = traceback.format_exc()
    out["seconds"] = round(time.perf_counter() - start, 3)
    return out


_MODEL_SHA256: Dict[str, str] = {}


def _model_sha256(model: str) -> str:
    """SHA-256 of the weights file ``--model`` names (``litemedsam``: the embedded asset), once per process."""
    if model not in _MODEL_SHA256:
        from ..models.base import file_sha256

        if model.lower() == "litemedsam":
            from ..models._vendored_imports import medsam_lite_asset_path

            path = str(medsam_lite_asset_path())
        else:
            path = model
        _MODEL_SHA256[model] = file_sha256(path)
    return _MODEL_SHA256[model]


def stale_reason(case: Case, args: argparse.Namespace) -> Optional[str]:
    """Why the existing output of ``case`` does not belong to this run (None: it does, resume may skip it).

    Compared with what the case's report recorded in its provenance: the engine version, the
    SHA-256 of each input (:mod:`P2SAMLogic.io.checksums`), the model's SHA-256 (None for the
    registration-only methods) and the parameters the options give.
    """
    from ..io.checksums import input_checksums
    from ..propagation.pipeline import needs_model

    try:
        with open(case.report, encoding="utf-8") as handle:
            provenance = json.load(handle).get("provenance") or {}
    except (OSError, ValueError, AttributeError) as exc:
        return f"its report {case.report} cannot be read ({exc})"
    version = provenance.get("version")
    if version != __version__:
        return f"it was made by P2SAM {version or '(unknown version)'}, not by this one ({__version__})"
    recorded = provenance.get("inputs_sha256")
    if not isinstance(recorded, dict):
        return "its report records no checksums of its inputs"
    roles = (("prior_image", case.prior_image), ("prior_segmentation", case.prior_segmentation),
             ("followup", case.followup))
    try:
        now = input_checksums(roles)
    except OSError as exc:
        return f"an input cannot be read to compare it ({exc})"
    changed = [f"{role.replace('_', ' ')} {path}" for role, path in roles if recorded.get(role) != now[role]]
    if changed:
        return f"it was made from other inputs: the {', the '.join(changed)} differ(s) from what its report records"
    config = json.loads(json.dumps(propagation_config(args)[0].as_dict()))
    recorded_model = (provenance.get("model") or {}).get("sha256")
    try:
        model_now = _model_sha256(args.model) if needs_model(config["method"]) else None
    except OSError as exc:
        return f"the model {args.model} cannot be read to compare it ({exc})"
    if recorded_model != model_now:
        return (f"it was made with another model (SHA-256 {recorded_model or 'none'}, this run's "
                f"{model_now or 'none'})")
    then = provenance.get("parameters") or {}
    differ = sorted(k for k in config if k in then and then[k] != config[k])
    if differ:
        return f"it was made with other parameters ({', '.join(differ)})"
    return None


def _read_truth(case: Case):
    from ..io import read_segmentation, read_volume

    follow, follow_src = read_volume(case.followup, pick_series(case.followup, case.series_uids or None))
    try:
        return follow, follow_src, read_segmentation(case.truth, follow, follow_src)
    except InputError as exc:
        raise InputError(f"truth {case.truth}", exc.problem) from None


def _summarise(case: Case, truth) -> Tuple[List[dict], List[str]]:
    """Per-segment numbers from the case's report, and the Dice to the truth when there is one."""
    with open(case.report, encoding="utf-8") as handle:
        report = json.load(handle)
    dice: Dict[str, Optional[float]] = {}
    if truth is not None:
        import numpy as np

        from ..io import read_segmentation

        follow, follow_src, truth_segments = truth
        proposals = read_segmentation(case.output, follow, follow_src)
        by_name = {s.name: s for s in truth_segments}
        if not set(by_name) & {s.name for s in proposals} and len(truth_segments) == len(proposals) == 1:
            by_name = {proposals[0].name: truth_segments[0]}  # one unnamed truth label for one segment
        for s in proposals:
            t = by_name.get(s.name)
            if t is not None:
                a, b = s.array().astype(bool), t.array().astype(bool)
                total = int(a.sum()) + int(b.sum())
                dice[s.name] = round(1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total, 4)
            else:
                dice[s.name] = None
    rows = []
    for seg in report.get("segments", []):
        rows.append({"name": seg["name"], "prior_volume_ml": seg.get("prior_volume_ml"),
                     "followup_volume_ml": seg.get("followup_volume_ml"), "change_percent": seg.get("change_percent"),
                     "slices_flagged": seg.get("slices_flagged"), "flagged_slices": seg.get("flagged_slices", []),
                     "dice": dice.get(seg["name"])})
    return rows, list(report.get("warnings", []))


# ------------------------------------------------------------------------------------------------
# the cohort, on the client


def default_workers() -> int:
    """One worker per GPU when there are GPUs, else one per 8 CPU cores (at least 1)."""
    try:
        import torch

        if torch.cuda.is_available():
            return max(1, torch.cuda.device_count())
    except ImportError:  # pragma: no cover
        pass
    return max(1, (os.cpu_count() or 1) // 8)


def summary_paths(manifest: str, summary: Optional[str]) -> Tuple[str, str]:
    """``(csv, json)`` paths of the summary."""
    if summary:
        stem = summary[:-4] if summary.lower().endswith(".csv") else summary
    else:
        p = Path(manifest).resolve()
        stem = str(p.parent / (p.name[:-4] if p.name.lower().endswith(".csv") else p.name)) + ".summary"
    return stem + ".csv", stem + ".json"


def _import_dask():
    try:
        import dask  # noqa: F401
        from distributed import Client, LocalCluster, as_completed
    except ImportError as exc:
        raise InputError("propagate-many", f"needs Dask ({exc}); install it with pip install "
                                           "'p2sam-slicer[dask]' (or: pip install 'dask[distributed]')") from None
    return Client, LocalCluster, as_completed


def run_cohort(manifest: str, *, workers: Optional[int] = None, scheduler: Optional[str] = None,
               overwrite: bool = False, summary: Optional[str] = None, propagate_options: Sequence[str] = (),
               model: str = "litemedsam", model_type: Optional[str] = None, device: str = "auto",
               threads_per_worker: Optional[int] = None, quiet: bool = False) -> dict:
    """Run every case of ``manifest`` on Dask; write the summary; return it (a dict, also the JSON file).

    Args:
        workers: local cluster size (default :func:`default_workers`); ignored with ``scheduler``.
        scheduler: address of an existing Dask scheduler instead of a local cluster.
        propagate_options: extra ``p2sam propagate`` options for every case (method parameters).
        threads_per_worker: torch threads per worker (default: CPU cores / workers on a local cluster,
            the worker's own setting on an existing cluster).

    Raises:
        InputError: a bad manifest or option (before any case runs).
    """
    from tqdm import tqdm

    from ..io.images2d import write_text_atomic
    from ..io import check_writable_file

    cases = read_manifest(manifest)
    options = check_propagate_options(propagate_options, cases[0])
    csv_path, json_path = summary_paths(manifest, summary)
    for p in (csv_path, json_path):
        check_writable_file(p, overwrite=True, source=f"summary {p}")
        key = path_key(p)
        for c in cases:
            if key in {path_key(x) for x in (c.prior_image, c.prior_segmentation, c.followup, c.output, c.report,
                                              c.truth or "") if x}:
                raise InputError(f"summary {p}", f"is also a file of line {c.line} of the manifest")
    Client, LocalCluster, as_completed = _import_dask()
    if workers is not None and workers < 1:
        raise InputError("--workers", "must be at least 1")
    n_workers = workers or default_workers()
    threads = threads_per_worker
    if threads is None and not scheduler:
        threads = max(1, (os.cpu_count() or 1) // n_workers)

    started = time.perf_counter()
    results: List[dict] = []
    cluster = None
    client = None
    try:
        if scheduler:
            client = Client(scheduler, timeout="30s")
            where = f"Dask scheduler {scheduler}"
        else:
            import logging

            # on this machine only: a Dask scheduler runs any code a client sends (docs/scale-out.md)
            cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                                   dashboard_address=None, silence_logs=logging.ERROR)
            client = Client(cluster)
            where = f"local Dask cluster, {n_workers} worker(s) x {threads} torch thread(s)"
        if not quiet:
            print(f"p2sam propagate-many: {len(cases)} case(s) on a {where}", file=sys.stderr)
        futures = {}
        for c in cases:
            fut = client.submit(run_case, c, options, overwrite, threads, model, model_type, device,
                                key=f"p2sam-case-{c.line}-{os.getpid()}-{time.time_ns()}", pure=False, retries=0)
            futures[fut] = c
        bar = tqdm(total=len(cases), desc="cases", unit="case", disable=quiet, file=sys.stderr)
        try:
            for fut in as_completed(list(futures)):
                c = futures[fut]
                try:
                    res = fut.result()
                except Exception as exc:  # the worker died (out of memory, killed): this case failed
                    res = {"line": c.line, "case": c.case_id, "status": "failed", "seconds": None,
                           "output": c.output, "report": c.report, "warnings": [], "segments": [],
                           "error": f"the Dask worker running it failed ({type(exc).__name__}: {exc})"}
                results.append(res)
                bar.set_postfix_str(f"{res['case']}: {res['status']}", refresh=False)
                bar.update(1)
        finally:
            bar.close()
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
    wall = time.perf_counter() - started
    results.sort(key=lambda r: r["line"])
    counts = {s: sum(1 for r in results if r["status"] == s) for s in ("done", "skipped", "failed")}
    ran = [r["seconds"] for r in results if r["status"] == "done" and r["seconds"] is not None]
    report = {
        "tool": "p2sam propagate-many", "version": __version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "manifest": str(Path(manifest).resolve()), "where": where, "workers": None if scheduler else n_workers,
        "threads_per_worker": threads, "propagate_options": options,
        "model": {"name": model, "model_type": model_type, "device": device},
        "overwrite": overwrite, "wall_seconds": round(wall, 3),
        "cases_per_minute": round(60.0 * counts["done"] / wall, 3) if counts["done"] and wall > 0 else None,
        "mean_case_seconds": round(sum(ran) / len(ran), 3) if ran else None,
        "counts": counts, "cases": results,
        "status": "unreviewed proposals",
    }
    write_text_atomic(json_path, json.dumps(report, indent=2))
    write_text_atomic(csv_path, _summary_csv(results))
    report["summary_files"] = [csv_path, json_path]
    return report


_CSV_COLUMNS = ("line", "case", "status", "seconds", "segment", "prior_volume_ml", "followup_volume_ml",
                "change_percent", "slices_flagged", "flagged_slices", "dice", "output", "error")


def _summary_csv(results: List[dict]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(_CSV_COLUMNS)
    for r in results:
        base = [r["line"], r["case"], r["status"], "" if r["seconds"] is None else r["seconds"]]
        tail = [r["output"], r["error"] or ""]
        if not r["segments"]:
            w.writerow(base + [""] * 6 + tail)
        for s in r["segments"]:
            w.writerow(base + [s["name"], _cell(s["prior_volume_ml"]), _cell(s["followup_volume_ml"]),
                               _cell(s["change_percent"]), _cell(s["slices_flagged"]),
                               " ".join(str(k) for k in s["flagged_slices"]), _cell(s["dice"])] + tail)
    return buf.getvalue()


def _cell(v) -> str:
    return "" if v is None else str(v)


def summary_table(report: dict) -> str:
    """Plain-text lines: one per case, then the totals."""
    lines = []
    for r in report["cases"]:
        segs = "; ".join(f"{s['name']} {s['followup_volume_ml']} mL"
                         + (f" Dice {s['dice']:.3f}" if s.get("dice") is not None else "")
                         + (f" flagged {s['slices_flagged']}" if s.get("slices_flagged") else "")
                         for s in r["segments"])
        secs = "" if r["seconds"] is None else f" {r['seconds']:.1f} s"
        detail = r["error"] if r["status"] == "failed" else segs
        lines.append(f"  line {r['line']} {r['case']}: {r['status']}{secs}  {detail}")
    c = report["counts"]
    rate = f", {report['cases_per_minute']:.2f} cases/min" if report.get("cases_per_minute") else ""
    lines.append(f"{len(report['cases'])} case(s): {c['done']} done, {c['skipped']} skipped, {c['failed']} failed "
                 f"in {report['wall_seconds']:.1f} s{rate}")
    lines.append("status: unreviewed proposals — review every flagged slice before clinical use")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# command line


def add_parser(sub) -> argparse.ArgumentParser:
    """Add ``propagate-many`` to the ``p2sam`` sub-commands (argparse only: Dask loads when it runs)."""
    p = sub.add_parser("propagate-many", help="run `propagate` on every case of a CSV manifest, in parallel on Dask",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("manifest", metavar="MANIFEST", help="CSV file: one case per row (see above)")
    g = p.add_argument_group("where it runs")
    g.add_argument("--workers", type=int, default=None, metavar="N",
                   help="local Dask worker processes (default: one per GPU, else one per 8 CPU cores, >= 1)")
    g.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="use an existing Dask cluster (tcp://host:8786) instead of a local one")
    g.add_argument("--threads-per-worker", type=int, default=None, metavar="T",
                   help="torch threads per worker (default: CPU cores / workers locally; on an existing cluster "
                        "the workers' own setting, which Dask starts at 1: give about cores / worker processes)")
    io_ = p.add_argument_group("outputs")
    io_.add_argument("--overwrite", action="store_true",
                     help="run every case again, replacing outputs (default: skip cases whose output and report exist)")
    io_.add_argument("--summary", default=None, metavar="PATH.csv",
                     help="summary CSV (and PATH.json); default <manifest stem>.summary.csv beside the manifest")
    add_model_options(p)
    p.add_argument("--propagate-options", default="", metavar='"OPTIONS"',
                   help="more `p2sam propagate` options for every case, one quoted string "
                        "(write --propagate-options=\"--max-parts 3\" when it starts with --)")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no summary table")
    p.set_defaults(func=main_from_args)
    return p


def main_from_args(args: argparse.Namespace) -> int:
    """``p2sam propagate-many``: exit 0 all succeeded, 1 any failed (2 for bad input, raised as InputError)."""
    try:
        options = shlex.split(args.propagate_options or "")
    except ValueError as exc:
        raise InputError("--propagate-options", f"cannot be split into options ({exc})") from None
    report = run_cohort(args.manifest, workers=args.workers, scheduler=args.scheduler, overwrite=args.overwrite,
                        summary=args.summary, propagate_options=options, model=args.model,
                        model_type=args.model_type, device=args.device,
                        threads_per_worker=args.threads_per_worker, quiet=args.quiet)
    if not args.quiet:
        print(summary_table(report))
        print("wrote " + ", ".join(report["summary_files"]))
    failed = [r for r in report["cases"] if r["status"] == "failed"]
    for r in failed:
        print(f"p2sam propagate-many: line {r['line']} ({r['case']}) failed: {r['error']}", file=sys.stderr)
    return 1 if failed else 0
