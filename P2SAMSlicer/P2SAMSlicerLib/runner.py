"""Run a propagation from files: the program behind the module's background process.

One prior onto one or several follow-ups (:func:`run_series`, the model loaded once).

Pure Python (SimpleITK + P2SAMLogic; no Slicer, Qt or VTK), so that it runs in a plain
``PythonSlicer`` process while Slicer's GUI stays responsive. :func:`run_propagation` is
also what the blocking ``process()`` of the module's logic calls in-process: both paths run
the same code.

Job folder (written by :mod:`.background`, read here)::

    job.json        {"prior": "prior.nrrd", "followups": [{"name", "file": "followup_<k>.nrrd"}...],
                     "chain": false, "segments": [{"name", "color", "segment_id", "file"}...],
                     "model": "litemedsam" | checkpoint path, "model_type": null | "vit_b"...,
                     "device": "auto" | "cpu" | ..., "config": {PropagationConfig fields}}
    prior.nrrd, followup_<k>.nrrd, segment_<n>.nrrd      inputs (masks on the prior's grid)

Written here::

    progress.jsonl  one {"fraction": 0-1, "message": "..."} per line, as the run advances
    result.json     {"report": the report (one follow-up) or the combined report (several),
                     "followups": [{"name", "report": PropagationResult.report_dict(),
                                    "segments": [{"name", "color", "segment_id", "tags", "file"}...],
                                    "registered": [the registered prior, same form]}...]}
    result_<k>_<n>.nrrd  output masks (uint8 0/1, follow-up k's grid)
    registered_<k>_<n>.nrrd  the registered prior (registration alone) on follow-up k's grid
    error.json      {"type": "InputError" | "CancelledError" | ..., "message": "..."} on failure

The run stops with :class:`~P2SAMLogic.errors.CancelledError` as soon as a file named
``cancel`` appears in the job folder. Exit status: 0 done, 2 bad input, 3 cancelled, 1 other.

Usage: ``python -m P2SAMSlicerLib.runner JOB_FOLDER``
"""
from __future__ import annotations

import json
import os
import sys
import time
import traceback
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Sequence, Tuple, Union

import SimpleITK as sitk

if TYPE_CHECKING:  # annotations only: the engine is imported when a run starts
    from P2SAMLogic.propagation.pipeline import PropagationResult
    from P2SAMLogic.propagation.series import SeriesResult

EXIT_OK, EXIT_FAILED, EXIT_INPUT, EXIT_CANCELLED = 0, 1, 2, 3

_MODELS: Dict[Tuple[str, Optional[str], str], object] = {}


def load_model_cached(model: Union[str, object] = "litemedsam", model_type: Optional[str] = None,
                      device: str = "auto"):
    """A loaded :class:`PromptableModel`, reused across calls in this process (its embedding cache too).

    Args:
        model: ``"litemedsam"``, a SAM checkpoint path, or an already loaded model (returned as is).
        model_type: ``vit_b`` / ``vit_l`` / ``vit_h`` for a checkpoint; None or ``"auto"``: inferred.
        device: ``auto``, ``cpu``, ``cuda`` or ``mps``.
    """
    if not isinstance(model, str):
        return model
    from P2SAMLogic.models import load_model

    if model_type in ("", "auto"):
        model_type = None
    key = (model, model_type, device or "auto")
    if key not in _MODELS:
        _MODELS[key] = load_model(model, model_type=model_type, device=device or "auto")
    return _MODELS[key]


def make_config(values: Optional[dict] = None):
    """A :class:`PropagationConfig` from a dict of its fields (unknown keys are an error)."""
    from P2SAMLogic.errors import InputError
    from P2SAMLogic.propagation.pipeline import PropagationConfig

    values = dict(values or {})
    if values.get("intensity_window") is not None:
        values["intensity_window"] = tuple(values["intensity_window"])
    known = set(PropagationConfig.__dataclass_fields__)
    unknown = sorted(set(values) - known)
    if unknown:
        raise InputError("propagation parameters", f"unknown parameter(s) {', '.join(unknown)}")
    return PropagationConfig(**values)


def run_propagation(prior_image: sitk.Image, prior_segments: Sequence, followup: sitk.Image, *,
                    model: Union[str, object] = "litemedsam", model_type: Optional[str] = None,
                    device: str = "auto", config: Optional[dict] = None,
                    progress: Optional[Callable[[float, str], None]] = None,
                    cancel: Optional[Callable[[], bool]] = None) -> "PropagationResult":
    """Load (or reuse) the model and call :func:`P2SAMLogic.propagation.pipeline.propagate`.

    Args:
        prior_image, followup: 3D images (LPS); prior_segments: :class:`Segment` on the prior's grid.
        model, model_type, device: see :func:`load_model_cached`.
        config: :class:`PropagationConfig` fields as a dict.
    Returns:
        The engine's :class:`PropagationResult`.
    """
    from P2SAMLogic.propagation.pipeline import needs_model, propagate

    cfg = make_config(config)
    if progress is not None:
        progress(0.0, "loading the model")
    net = load_model_cached(model, model_type, device) if needs_model(cfg.method) else None
    return propagate(prior_image, list(prior_segments), followup, model=net if net is not None else "litemedsam",
                     device=device or "auto", config=cfg, progress=progress, cancel=cancel)


def run_series(prior_image: sitk.Image, prior_segments: Sequence, followups: Sequence[sitk.Image], *,
               names: Optional[Sequence[str]] = None, chain: bool = False,
               model: Union[str, object] = "litemedsam", model_type: Optional[str] = None,
               device: str = "auto", config: Optional[dict] = None,
               progress: Optional[Callable[[float, str], None]] = None,
               cancel: Optional[Callable[[], bool]] = None) -> "SeriesResult":
    """:func:`P2SAMLogic.propagation.series.propagate_series` with the model loaded (or reused) by :func:`load_model_cached`.

    Returns:
        The engine's :class:`~P2SAMLogic.propagation.series.SeriesResult` (one result per follow-up).
    """
    from P2SAMLogic.propagation.pipeline import needs_model
    from P2SAMLogic.propagation.series import propagate_series

    cfg = make_config(config)
    if progress is not None:
        progress(0.0, "loading the model")
    net = load_model_cached(model, model_type, device) if needs_model(cfg.method) else "litemedsam"
    return propagate_series(prior_image, list(prior_segments), list(followups), model=net, device=device or "auto",
                            config=cfg, chain=chain, names=names, progress=progress, cancel=cancel)


# ------------------------------------------------------------------------------------------
# job folder I/O (shared with .background)


def write_json_atomic(path: str, data) -> None:
    """Write ``data`` as JSON, atomically (:mod:`P2SAMLogic.io.outputs`: one helper for every output)."""
    from P2SAMLogic.io.outputs import dumps_json, write_text_atomic

    write_text_atomic(path, dumps_json(data))


def json_default(o):
    """``json`` fallback for numpy values: :func:`P2SAMLogic.io.outputs.json_default`."""
    from P2SAMLogic.io.outputs import json_default as default

    return default(o)


def write_job(folder: str, prior_image: sitk.Image, prior_segments: Sequence, followups, *,
              names: Optional[Sequence[str]] = None, chain: bool = False,
              model: str = "litemedsam", model_type: Optional[str] = None, device: str = "auto",
              config: Optional[dict] = None) -> str:
    """Write a job folder for :func:`main`; returns the path of its ``job.json``.

    Args:
        followups: one follow-up image, or several (a list, in visit order).
        names: the follow-ups' names (default ``"follow-up 1"``...); chain: see :func:`run_series`.
    """
    os.makedirs(folder, exist_ok=True)
    followups = list(followups) if isinstance(followups, (list, tuple)) else [followups]
    names = list(names) if names is not None else [f"follow-up {n + 1}" for n in range(len(followups))]
    sitk.WriteImage(prior_image, os.path.join(folder, "prior.nrrd"))
    entries = []
    for n, (image, name) in enumerate(zip(followups, names)):
        file = f"followup_{n}.nrrd"
        sitk.WriteImage(image, os.path.join(folder, file))
        entries.append({"name": str(name), "file": file})
    segments = []
    for n, s in enumerate(prior_segments):
        name = f"segment_{n}.nrrd"
        sitk.WriteImage(s.mask, os.path.join(folder, name), True)
        segments.append({"name": s.name, "color": [float(c) for c in s.color], "segment_id": s.segment_id,
                         "tags": dict(s.tags or {}), "file": name})
    job = {"prior": "prior.nrrd", "followups": entries, "chain": bool(chain), "segments": segments, "model": model,
           "model_type": model_type, "device": device, "config": dict(config or {})}
    path = os.path.join(folder, "job.json")
    write_json_atomic(path, job)
    return path


def _read_segments(folder: str, entries: Sequence[dict]) -> List:
    from P2SAMLogic.io.volume import Segment

    out = []
    for s in entries:
        mask = sitk.Cast(sitk.ReadImage(os.path.join(folder, s["file"])), sitk.sitkUInt8)
        out.append(Segment(s["name"], tuple(s["color"]), mask, s.get("segment_id", ""), dict(s.get("tags", {}))))
    return out


def read_result(folder: str) -> Tuple[List, dict]:
    """``(segments, report)`` of the first (or only) follow-up of a finished job (follow-up grid)."""
    first = read_results(folder)["followups"][0]
    return first["segments"], first["report"]


def read_results(folder: str) -> dict:
    """A finished job's outcome: ``{"report": report (combined for several follow-ups), "followups":
    [{"name", "segments": [Segment on that follow-up's grid], "report"}]}``."""
    with open(os.path.join(folder, "result.json"), encoding="utf-8") as handle:
        result = json.load(handle)
    return {"report": result["report"],
            "followups": [{"name": f["name"], "report": f["report"], "segments": _read_segments(folder, f["segments"]),
                           "registered": _read_segments(folder, f.get("registered", []))}
                          for f in result["followups"]]}


def read_error(folder: str) -> Optional[dict]:
    path = os.path.join(folder, "error.json")
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _read_job(folder: str) -> Tuple[dict, sitk.Image, List, List[sitk.Image]]:
    with open(os.path.join(folder, "job.json"), encoding="utf-8") as handle:
        job = json.load(handle)
    prior = sitk.ReadImage(os.path.join(folder, job["prior"]))
    followups = [sitk.ReadImage(os.path.join(folder, f["file"])) for f in job["followups"]]
    return job, prior, _read_segments(folder, job["segments"]), followups


def run_job(folder: str) -> int:
    """Run the job in ``folder`` (see the module docstring); returns the exit status."""
    from P2SAMLogic.errors import CancelledError, InputError

    progress_path = os.path.join(folder, "progress.jsonl")
    cancel_path = os.path.join(folder, "cancel")
    last = [0.0]

    def progress(fraction: float, message: str) -> None:
        now = time.monotonic()
        if fraction < 1.0 and now - last[0] < 0.2:
            return  # at most five lines a second
        last[0] = now
        with open(progress_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"fraction": round(float(fraction), 4), "message": str(message)}) + "\n")

    def cancel() -> bool:
        return os.path.exists(cancel_path)

    try:
        job, prior, segments, followups = _read_job(folder)
        series = run_series(prior, segments, followups, names=[f["name"] for f in job["followups"]],
                            chain=bool(job.get("chain")), model=job.get("model") or "litemedsam",
                            model_type=job.get("model_type"), device=job.get("device") or "auto",
                            config=job.get("config"), progress=progress, cancel=cancel)
        entries = []
        for k, (name, result) in enumerate(zip(series.names, series.results)):
            out = []
            for n, s in enumerate(result.segments):
                file = f"result_{k}_{n}.nrrd"
                sitk.WriteImage(sitk.Cast(s.mask, sitk.sitkUInt8), os.path.join(folder, file), True)
                out.append({"name": s.name, "color": [float(c) for c in s.color], "segment_id": s.segment_id,
                            "tags": dict(s.tags), "file": file})
            registered = []
            for n, s in enumerate(result.registered_prior):
                file = f"registered_{k}_{n}.nrrd"
                sitk.WriteImage(sitk.Cast(s.mask, sitk.sitkUInt8), os.path.join(folder, file), True)
                registered.append({"name": s.name, "color": [float(c) for c in s.color], "segment_id": s.segment_id,
                                   "tags": dict(s.tags), "file": file})
            entries.append({"name": name, "report": result.report_dict(), "segments": out, "registered": registered})
        report = entries[0]["report"] if len(entries) == 1 else series.report_dict()
        write_json_atomic(os.path.join(folder, "result.json"), {"report": report, "followups": entries})
        progress(1.0, "done")
        return EXIT_OK
    except CancelledError as e:
        write_json_atomic(os.path.join(folder, "error.json"), {"type": "CancelledError", "message": str(e)})
        return EXIT_CANCELLED
    except InputError as e:
        write_json_atomic(os.path.join(folder, "error.json"), {"type": type(e).__name__, "message": str(e)})
        return EXIT_INPUT
    except Exception as e:  # reported to the GUI with the traceback
        write_json_atomic(os.path.join(folder, "error.json"),
                          {"type": type(e).__name__, "message": str(e), "traceback": traceback.format_exc()})
        return EXIT_FAILED


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or not os.path.isfile(os.path.join(argv[0], "job.json")):
        print("usage: python -m P2SAMSlicerLib.runner JOB_FOLDER (a folder with job.json)", file=sys.stderr)
        return EXIT_FAILED
    try:  # this worker process is ours: tune the allocator for CPU inference (P2SAMLogic/runtime.py)
        from P2SAMLogic.runtime import tune_process
        tune_process()
    except ImportError:
        pass  # run_job reports the missing engine
    return run_job(argv[0])


if __name__ == "__main__":
    sys.exit(main())
