"""From an HTTP request to a queued job: every check, in an order that writes nothing for a refused request.

1. ``params`` (:func:`.checks.request_params`): a small JSON object with known keys only;
2. the handshake (:func:`.checks.handshake_refusal`): mandatory, before anything is stored;
3. segments and propagation parameters, bounded (:func:`.checks.bounded_parameters`);
4. the inputs: uploads are stored in the job's own folder under the server's names (the client's
   file name gives only the file type); datastore ids are resolved by the checked datastore.
"""
import os
import shutil
from typing import Dict, Optional, Tuple

from .checks import Refused, bounded_parameters, handshake_refusal, request_params, segment_names, upload_suffix
from .jobs import Job, JobManager

ROLE_NAMES = {"prior_image": "prior image", "followup": "follow-up image", "prior_segmentation": "prior segmentation"}


def checked_request(params_text: Optional[str], handshake: Dict[str, str]) -> Tuple[dict, Optional[list], dict]:
    """``(params, segments, parameters)`` of a request, or :class:`Refused` (steps 1-3 above)."""
    params = request_params(params_text)
    refusal = handshake_refusal(handshake, params.get("expected_engine_version"), params.get("expected_model_sha256"))
    if refusal is not None:
        raise refusal
    return params, segment_names(params.get("segments")), bounded_parameters(params.get("parameters"))


def store_upload(job: Job, role: str, upload) -> str:
    """Copy an upload (FastAPI ``UploadFile``) into the job's inputs as ``<role><suffix>``; returns its path."""
    suffix = upload_suffix(upload.filename, ROLE_NAMES[role])
    path = os.path.join(job.inputs_dir, role + suffix)
    with open(path, "wb") as handle:
        shutil.copyfileobj(upload.file, handle, 1 << 20)
    job.inputs[role] = path
    job.labels[path] = f"the uploaded {ROLE_NAMES[role]}"
    return path


def queue_job(jobs: JobManager, owner: str, segments, parameters, uploads: Dict[str, object],
              datastore_files: Dict[str, Tuple[str, str]]) -> Job:
    """A new job with ``uploads`` (role -> UploadFile) and ``datastore_files`` (role -> (path, how to name it)),
    submitted to the queue; nothing is left behind when storing an upload fails."""
    job = jobs.new_job(owner)
    try:
        for role, upload in uploads.items():
            store_upload(job, role, upload)
        for role, (path, label) in datastore_files.items():
            job.inputs[role] = path
            job.labels[path] = label
        missing = [ROLE_NAMES[r] for r in ROLE_NAMES if r not in job.inputs]
        if missing:
            raise Refused(422, f"the request lacks the {', '.join(missing)}")
        job.segments, job.parameters = segments, parameters
        return jobs.submit(job)
    except BaseException:
        jobs.discard(job)
        raise
