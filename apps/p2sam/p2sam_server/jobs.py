"""Propagation jobs on the server: a bounded queue, a pool of workers (one model each), cancel, expiry.

A job owns a folder under the jobs root: ``inputs/`` (the uploads, stored under names of the
server's choosing) and, once done, ``result.seg.nrrd``. The inputs are deleted as soon as the run
ends, whatever its outcome; the result when the client deletes the job, or ``keep_seconds``
after the run ended (a sweeper thread), whichever comes first. Jobs run in worker threads, never
in the server's event loop, so the server answers status requests while it computes. Cancel sets
the job's flag, which the engine polls at every step (:func:`P2SAMLogic.propagation.pipeline.propagate`'s
``cancel``); a queued job is dropped before it starts.

A job is visible to the user who created it (and to admins) only.
"""
import logging
import os
import queue
import shutil
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from .checks import Refused

logger = logging.getLogger(__name__)

ACTIVE = ("queued", "running")


class Job:
    """One propagation request and what became of it (see :meth:`public` for what a client sees)."""

    def __init__(self, owner: str, folder: str, job_id: str) -> None:
        self.id = job_id
        self.owner = owner
        self.folder = folder
        self.inputs: Dict[str, str] = {}        # role -> path (uploads under folder/inputs, or datastore files)
        self.labels: Dict[str, str] = {}        # path -> how messages name it ("the uploaded follow-up")
        self.segments: Optional[List[str]] = None
        self.parameters: dict = {}
        self.status = "queued"
        self.fraction = 0.0
        self.message = "queued"
        self.error: Optional[str] = None
        self.error_status: Optional[int] = None
        self.answer: Optional[dict] = None
        self.result: Optional[str] = None
        self.created = time.time()
        self.started: Optional[float] = None
        self.finished: Optional[float] = None
        self.files_deleted = False
        self.cancel_event = threading.Event()
        self.done_event = threading.Event()

    @property
    def inputs_dir(self) -> str:
        return os.path.join(self.folder, "inputs")

    def progress(self, fraction: float, message: str) -> None:
        self.fraction, self.message = float(fraction), str(message)

    def cancelled(self) -> bool:
        return self.cancel_event.is_set()

    def public(self) -> dict:
        """What the status endpoint answers: no server paths."""
        out = {"job": self.id, "status": self.status, "fraction": round(self.fraction, 4), "message": self.message,
               "created": self.created, "started": self.started, "finished": self.finished,
               "files_deleted": self.files_deleted}
        if self.error is not None:
            out["error"] = self.error
            out["error_status"] = self.error_status
        if self.answer is not None:
            out["answer"] = self.answer
        return out


def hide_paths(job: Job, text: str) -> str:
    """``text`` with the server's paths of the job's inputs replaced by their roles (also JSON-escaped)."""
    import json

    pairs = sorted(job.labels.items(), key=lambda kv: -len(kv[0])) + [(job.folder, "<job folder>")]
    for path, label in pairs:
        text = text.replace(path, label).replace(json.dumps(path)[1:-1], label)
    return text


Runner = Callable[[Job, object], Tuple[str, dict]]


class JobManager:
    """The queue and the workers.

    Args:
        run: ``run(job, model) -> (result path, answer)``; raises ``Refused``, the engine's errors, or
            ``CancelledError`` when ``job.cancelled()``.
        models: one loaded model per worker (a worker takes one for the length of a job).
        root: the jobs folder (created 0700).
        max_jobs: queued plus running jobs accepted at once (more: HTTP 503).
        keep_seconds: how long a finished job's record and result are kept if the client does not delete it.
    """

    def __init__(self, run: Runner, models: Sequence[object], root: str, max_jobs: int = 8,
                 keep_seconds: float = 900.0, sweep_seconds: float = 30.0) -> None:
        self._run = run
        self._models: "queue.Queue[object]" = queue.Queue()
        for m in models:
            self._models.put(m)
        self.workers = len(models)
        self.root = os.path.abspath(root)
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        self.max_jobs = int(max_jobs)
        self.keep_seconds = float(keep_seconds)
        self._jobs: Dict[str, Job] = {}
        self._futures: Dict[str, object] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="p2sam-job")
        self._stop = threading.Event()
        self._sweeper = threading.Thread(target=self._sweep_loop, args=(sweep_seconds,), name="p2sam-job-sweeper",
                                         daemon=True)
        self._sweeper.start()

    # -- creating and running -------------------------------------------------------------------
    def new_job(self, owner: str) -> Job:
        """A job with its folder (not yet queued: fill its inputs, then :meth:`submit`)."""
        with self._lock:
            active = sum(j.status in ACTIVE for j in self._jobs.values())
            if active >= self.max_jobs:
                raise Refused(503, f"the P2SAM server is busy ({active} jobs queued or running, at most "
                                   f"{self.max_jobs}); try again later")
            job_id = uuid.uuid4().hex
            job = Job(owner, os.path.join(self.root, job_id), job_id)
            os.makedirs(job.inputs_dir, mode=0o700)
            job.status = "new"
            self._jobs[job_id] = job
        return job

    def submit(self, job: Job) -> Job:
        job.status = "queued"
        self._futures[job.id] = self._pool.submit(self._work, job)
        return job

    def discard(self, job: Job) -> None:
        """Forget a job that was never submitted (its request was refused) and delete its folder."""
        with self._lock:
            self._jobs.pop(job.id, None)
        shutil.rmtree(job.folder, ignore_errors=True)

    def _work(self, job: Job) -> None:
        if job.cancelled():
            self._finish(job, "cancelled", "cancelled before it started")
            return
        model = self._models.get()
        try:
            job.status, job.started = "running", time.time()
            job.progress(0.0, "starting")
            result, answer = self._run(job, model)
            if job.cancelled():
                self._finish(job, "cancelled", "cancelled by the client")
            else:
                job.result, job.answer = result, answer
                self._finish(job, "done", "done")
        except Refused as exc:
            self._finish(job, "failed", exc.message, exc.status)
        except BaseException as exc:  # noqa: BLE001 -- every outcome is reported to the client
            from P2SAMLogic.errors import CancelledError, P2SAMError

            if job.cancelled() or isinstance(exc, CancelledError):
                self._finish(job, "cancelled", "cancelled by the client")
            elif isinstance(exc, P2SAMError):
                self._finish(job, "failed", hide_paths(job, str(exc)), 422)
            else:
                logger.exception(f"P2SAM job {job.id} failed")
                self._finish(job, "failed", "P2SAM failed on the server: "
                                            + hide_paths(job, f"{type(exc).__name__}: {exc}"), 500)
        finally:
            self._models.put(model)

    def _finish(self, job: Job, status: str, message: str, error_status: Optional[int] = None) -> None:
        job.status, job.finished = status, time.time()
        job.message = message
        if status == "failed":
            job.error, job.error_status = message, error_status
        shutil.rmtree(job.inputs_dir, ignore_errors=True)  # the uploads go as soon as the run ends
        if status != "done":  # nothing to fetch: the whole folder goes
            shutil.rmtree(job.folder, ignore_errors=True)
            job.files_deleted, job.result = True, None
        job.done_event.set()

    # -- looking up, cancelling, deleting ------------------------------------------------------
    def get(self, job_id: str, user) -> Optional[Job]:
        """The job if ``user`` (MONAI Label's ``User``) may see it: its owner, or an admin."""
        from .auth import monai_role

        job = self._jobs.get(job_id)
        if job is None or job.status == "new":
            return None
        if job.owner != user.username and monai_role("admin") not in (user.roles or []):
            return None
        return job

    def delete(self, job: Job) -> Job:
        """Cancel the job if it is queued or running, and delete its files (the record stays until expiry)."""
        job.cancel_event.set()
        future = self._futures.get(job.id)
        if job.status == "queued" and future is not None and future.cancel():
            self._finish(job, "cancelled", "cancelled before it started")
        job.files_deleted = True
        if job.status not in ACTIVE:
            shutil.rmtree(job.folder, ignore_errors=True)
            job.result = None
        return job

    def list_for(self, user) -> List[Job]:
        return [j for j in list(self._jobs.values()) if self.get(j.id, user) is not None]

    # -- expiry -------------------------------------------------------------------------------
    def sweep(self, now: Optional[float] = None) -> int:
        """Forget finished jobs older than ``keep_seconds`` and delete their folders; returns how many."""
        now = time.time() if now is None else now
        with self._lock:
            old = [j for j in self._jobs.values() if j.finished is not None and now - j.finished > self.keep_seconds]
            for j in old:
                self._jobs.pop(j.id, None)
                self._futures.pop(j.id, None)
        for j in old:
            shutil.rmtree(j.folder, ignore_errors=True)
        return len(old)

    def _sweep_loop(self, every: float) -> None:
        while not self._stop.wait(every):
            try:
                self.sweep()
            except Exception:  # noqa: BLE001 -- the sweeper must survive
                logger.exception("P2SAM job sweeper")

    def shutdown(self) -> None:
        self._stop.set()
        for job in list(self._jobs.values()):
            job.cancel_event.set()
        self._pool.shutdown(wait=False, cancel_futures=True)
