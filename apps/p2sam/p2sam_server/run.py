"""One job's computation: read the inputs, check their size, propagate, write the proposal.

Called in a worker thread of :class:`.jobs.JobManager` with one of the server's loaded models.
"""
import json
import os
import time
from typing import Tuple

from .checks import Refused
from .jobs import Job, hide_paths

#: largest image the server reads (voxels; a 512 x 512 x 1500 CT is 393 M)
MAX_VOXELS = 600_000_000


def _check_size(image, what: str, max_voxels: int) -> None:
    n = 1
    for s in image.GetSize():
        n *= int(s)
    if n > max_voxels:
        raise Refused(413, f"the {what} has {n} voxels; this server reads at most {max_voxels}")


def run_job(job: Job, model, device: str = "auto", max_voxels: int = MAX_VOXELS) -> Tuple[str, dict]:
    """Propagate ``job``'s prior segmentation onto its follow-up with ``model``.

    ``job.inputs``: ``prior_image``, ``followup``, ``prior_segmentation`` (paths the request checked:
    uploads in the job's folder, or files of the datastore). Returns the proposal's path
    (``result.seg.nrrd`` in the job's folder, a Slicer segmentation on the follow-up's grid) and the
    answer: ``status``, ``p2sam`` (engine version and model), ``report`` (the engine's QA report),
    ``segments``, ``warnings``, ``seconds``.
    """
    from P2SAMLogic import __version__
    from P2SAMLogic.io import read_segmentation, read_volume, write_segmentation
    from P2SAMLogic.propagation.pipeline import PropagationConfig, propagate
    from P2SAMLogic.io.volume import PROPOSAL_STATUS

    started = time.perf_counter()
    job.progress(0.01, "reading the inputs")
    follow, follow_src = read_volume(job.inputs["followup"])
    _check_size(follow, "follow-up image", max_voxels)
    prior, prior_src = read_volume(job.inputs["prior_image"])
    _check_size(prior, "prior image", max_voxels)
    prior_segments = read_segmentation(job.inputs["prior_segmentation"], prior, prior_src, job.segments)
    config = PropagationConfig(segments=job.segments, **job.parameters).validate()
    result = propagate(prior, prior_segments, follow, model=model, device=device, config=config,
                       prior_source=prior_src, followup_source=follow_src, progress=job.progress,
                       cancel=job.cancelled)
    job.progress(0.99, "writing the proposal")
    described = model.describe()
    if described.get("checkpoint"):  # the server's install path: only the file name goes out
        job.labels[str(described["checkpoint"])] = os.path.basename(str(described["checkpoint"]))
    out = os.path.join(job.folder, "result.seg.nrrd")
    provenance = json.loads(hide_paths(job, json.dumps(result.provenance, default=_json_default)))
    write_segmentation(out, result.segments, follow, provenance, follow_src, overwrite=True)
    report = json.loads(json.dumps(result.report_dict(), default=_json_default))
    report = json.loads(hide_paths(job, json.dumps(report)))
    answer = {"status": PROPOSAL_STATUS,
              "p2sam": {"engine_version": __version__, "model": described["name"],
                        "model_sha256": described["sha256"]},
              "report": report, "segments": [{"name": s.name, "color": list(s.color)} for s in result.segments],
              "warnings": [hide_paths(job, str(w)) for w in result.warnings],
              "seconds": round(time.perf_counter() - started, 3)}
    return out, answer


def _json_default(o):
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o) if np.isfinite(o) else None
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)
