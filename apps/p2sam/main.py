"""MONAI Label app: P²SAM carries a prior scan's contours onto a follow-up scan on a server.

Start it with ``serve.py`` (README.md), never with plain ``monailabel start_server``: ``serve.py``
runs MONAI Label's FastAPI app through ``p2sam_server.asgi``, which removes the endpoints this app
does not need, checks every name a request sends, makes sign-in work and adds the job endpoints.
The app refuses to start without it.

One infer task, ``p2sam`` (:class:`P2SAMInfer`), run by ``POST /infer/p2sam`` (MONAI Label's
request format, one blocking request) or ``POST /p2sam/jobs`` (a job: uploads in, status,
cancel, result); both go through the same job queue (:class:`p2sam_server.jobs.JobManager`), whose
worker threads each hold one loaded model.

Conf (``--conf KEY VALUE``): ``model`` (``litemedsam`` or a SAM checkpoint path), ``device``
(``auto``, ``cpu``, ``cuda``), ``workers`` (jobs run at once, one model each; default 1),
``max_jobs`` (queued plus running; default 8), ``keep_seconds`` (a finished job's result is kept
this long unless the client deletes it; default 900), ``jobs_dir`` (default: a new private temporary
folder, removed at exit), ``max_voxels`` (largest image read; default 600 M).

Version handshake: ``GET /info/`` carries ``p2sam = {"engine_version", "model", "model_sha256"}``;
every request must carry ``params.expected_engine_version`` and ``params.expected_model_sha256``:
missing, HTTP 428; different, HTTP 409 naming both sides.
"""
import atexit
import logging
import os
import shutil
import sys
import tempfile

from fastapi import HTTPException
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

from P2SAMLogic import __version__

logger = logging.getLogger(__name__)


class P2SAMInfer(InferTask):
    """The ``p2sam`` infer task: its description in ``/info/`` and the server's loaded models.

    The work itself runs in :class:`p2sam_server.jobs.JobManager`'s workers; MONAI Label's generic
    ``app.infer`` path is not used (its endpoint is replaced), so calling the task directly is refused.
    """

    def __init__(self, model: str = "litemedsam", device: str = "auto", copies: int = 1):
        from P2SAMLogic.models import load_model

        self.models = [load_model(model, None, device) for _ in range(max(1, int(copies)))]
        described = self.models[0].describe()
        self.handshake = {"engine_version": __version__, "model": described["name"],
                          "model_sha256": described["sha256"]}
        super().__init__(type=InferType.SEGMENTATION, labels=None, dimension=3,
                         description="P2SAM: carry prior-visit contours onto a follow-up scan (unreviewed proposals)",
                         config={"prior_image": "", "prior_label_tag": "final", "segments": "", "parameters": "{}"})

    def info(self):
        d = super().info()
        d["p2sam"] = dict(self.handshake)
        return d

    def is_valid(self) -> bool:
        return True

    def __call__(self, request):
        raise HTTPException(status_code=404, detail="run P2SAM with POST /infer/p2sam or POST /p2sam/jobs")


class P2SAMApp(MONAILabelApp):
    """The app: one infer task ``p2sam``, a checked datastore, and the job queue."""

    def __init__(self, app_dir, studies, conf):
        if "p2sam_server.asgi" not in sys.modules:
            raise RuntimeError("start the P2SAM app with apps/p2sam/serve.py: plain 'monailabel start_server' "
                               "would serve MONAI Label's unchecked endpoints")
        from P2SAMLogic.runtime import tune_process

        tune_process()  # this process serves inference only: glibc allocator settings for CPU speed
        conf = dict(conf or {})
        self._model_name = conf.get("model", "litemedsam")
        self._device = conf.get("device", "auto")
        self._workers = int(conf.get("workers", 1))
        self._conf = conf
        super().__init__(app_dir=app_dir, studies=studies, conf=conf, name="P2SAM",
                         description="P2SAM: prior-visit contours carried onto follow-up scans (one-shot, "
                                     "training-free; every result is an unreviewed proposal)",
                         version=__version__)
        self.jobs = self._make_jobs()

    def init_datastore(self):
        from monailabel.config import settings
        from p2sam_server.datastore import CheckedLocalDatastore

        if self.studies.startswith(("http://", "https://")):
            raise RuntimeError("the P2SAM app uses a local datastore folder (--studies FOLDER)")
        return CheckedLocalDatastore(self.studies, extensions=settings.MONAI_LABEL_DATASTORE_FILE_EXT,
                                     auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
                                     read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY)

    def init_infers(self):
        return {"p2sam": P2SAMInfer(self._model_name, self._device, self._workers)}

    def init_strategies(self):
        return {}

    def _make_jobs(self):
        from p2sam_server.jobs import JobManager
        from p2sam_server.run import MAX_VOXELS, run_job

        root = self._conf.get("jobs_dir")
        if root:
            os.makedirs(root, mode=0o700, exist_ok=True)
            for leftover in os.listdir(root):  # a previous run's jobs: nobody can fetch them any more
                shutil.rmtree(os.path.join(root, leftover), ignore_errors=True)
        else:
            root = tempfile.mkdtemp(prefix="p2sam-jobs-")
            atexit.register(shutil.rmtree, root, True)
        max_voxels = int(self._conf.get("max_voxels", MAX_VOXELS))
        device = self._device

        def run(job, model):
            return run_job(job, model, device=device, max_voxels=max_voxels)

        infer = self._infers["p2sam"]
        return JobManager(run, infer.models, root, max_jobs=int(self._conf.get("max_jobs", 8)),
                          keep_seconds=float(self._conf.get("keep_seconds", 900)))

    @property
    def handshake(self) -> dict:
        return dict(self._infers["p2sam"].handshake)

    def info(self):
        d = super().info()
        d["p2sam"] = self.handshake
        return d
