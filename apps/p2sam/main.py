"""MONAI Label app: P²SAM carries a prior scan's contours onto a follow-up scan on a server.

One infer task, ``p2sam``: the follow-up image comes from the datastore (``image=<id>``) or is
uploaded with the request; the prior image is a datastore image (``params.prior_image``); the
prior segmentation is uploaded with the request (``label``) or is that image's datastore label
(``params.prior_label_tag``, default ``final``). The answer is the proposal as a Slicer
``.seg.nrrd`` on the follow-up's grid (segment names, colours, provenance, status "unreviewed
proposal") and, as JSON, the engine's QA report.

Version handshake: ``GET /info/`` carries ``p2sam = {"engine_version", "model", "model_sha256"}``;
a request whose ``params.expected_engine_version`` or ``params.expected_model_sha256`` differs is
refused with HTTP 409 and a message naming both sides. Start it with ``serve.py`` (README.md).
"""
import json
import logging
import os
import tempfile
import time

from fastapi import HTTPException
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

from P2SAMLogic import __version__
from P2SAMLogic.errors import InputError, P2SAMError

logger = logging.getLogger(__name__)

def handshake_mismatch(server: dict, engine_version, model_sha256):
    """The refusal message when a client's expectations differ from ``server`` (None when they match)."""
    problems = []
    if engine_version and engine_version != server["engine_version"]:
        problems.append(f"the client expects P2SAM engine {engine_version}, this server runs "
                        f"{server['engine_version']}")
    if model_sha256 and model_sha256 != server["model_sha256"]:
        problems.append(f"the client expects model SHA-256 {model_sha256}, this server's "
                        f"{server['model']} has {server['model_sha256']}")
    if not problems:
        return None
    return ("P2SAM version mismatch: " + "; ".join(problems)
            + ". Results would not match what the client would compute; update the client or the server "
              "so that both run the same engine and model.")


class P2SAMInfer(InferTask):
    """The ``p2sam`` infer task: :func:`P2SAMLogic.propagate.propagate` on one (prior, follow-up) pair."""

    def __init__(self, datastore, model: str = "litemedsam", device: str = "auto"):
        from P2SAMLogic.models import load_model

        self._datastore = datastore
        self._device = device
        self.model = load_model(model, None, device)  # once, at start-up: the handshake needs its checksum
        described = self.model.describe()
        self.handshake = {"engine_version": __version__, "model": described["name"],
                          "model_sha256": described["sha256"]}
        super().__init__(type=InferType.SEGMENTATION, labels=None, dimension=3,
                         description="P2SAM: carry prior-visit contours onto a follow-up scan (unreviewed proposals)",
                         config={"prior_image": "", "prior_label_tag": "final", "segments": "",
                                 "parameters": "{}"})

    def info(self):
        d = super().info()
        d["p2sam"] = dict(self.handshake)
        return d

    def is_valid(self) -> bool:
        return True

    def __call__(self, request):
        try:
            return self._run(request)
        except HTTPException:
            raise
        except P2SAMError as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from None
        except Exception as exc:  # the client shows this message
            logger.exception("p2sam infer failed")
            raise HTTPException(status_code=500, detail=f"P2SAM failed on the server: {type(exc).__name__}: {exc}")

    def _run(self, request):
        from P2SAMLogic.io3d import read_segmentation, read_volume, write_segmentation
        from P2SAMLogic.propagate import PropagationConfig, propagate
        from P2SAMLogic.volume import PROPOSAL_STATUS

        refusal = handshake_mismatch(self.handshake, request.get("expected_engine_version"),
                                     request.get("expected_model_sha256"))
        if refusal:
            raise HTTPException(status_code=409, detail=refusal)
        followup_path = request.get("image") or ""
        if not followup_path or not os.path.exists(followup_path):
            raise HTTPException(status_code=404, detail="follow-up image not found in the datastore "
                                                        "(upload it, or send it as the request's file)")
        prior_id = request.get("prior_image") or ""
        prior_path = self._datastore().get_image_uri(prior_id) if prior_id else ""
        if not prior_path:
            raise HTTPException(status_code=404, detail=f"prior image '{prior_id}' is not in the datastore "
                                                        "(params.prior_image must be a datastore image id)")
        label_path = request.get("label")
        if not label_path:
            tag = request.get("prior_label_tag") or "final"
            label_path = self._datastore().get_label_uri(prior_id, tag)
            if not label_path:
                raise HTTPException(status_code=404, detail=f"prior image '{prior_id}' has no label with tag "
                                                            f"'{tag}' (upload the prior segmentation as label)")
        parameters = request.get("parameters") or {}
        if isinstance(parameters, str):
            parameters = json.loads(parameters or "{}")
        segments = request.get("segments") or None
        if isinstance(segments, str):
            segments = [s.strip() for s in segments.split(",") if s.strip()] or None
        known = set(PropagationConfig.__dataclass_fields__) - {"segments"}
        bad = sorted(set(parameters) - known)
        if bad:
            raise InputError("parameters", f"unknown propagation parameter(s) {', '.join(bad)}")
        if parameters.get("intensity_window") is not None:
            parameters["intensity_window"] = tuple(parameters["intensity_window"])
        config = PropagationConfig(segments=segments, **parameters).validate()

        started = time.perf_counter()
        follow, follow_src = read_volume(followup_path)
        prior, prior_src = read_volume(prior_path)
        prior_segments = read_segmentation(label_path, prior, prior_src, segments)
        last = [0.0]

        def progress(fraction, message):
            if time.monotonic() - last[0] > 2.0:
                last[0] = time.monotonic()
                logger.info(f"p2sam {fraction:.0%} {message}")

        result = propagate(prior, prior_segments, follow, model=self.model, device=self._device, config=config,
                           prior_source=prior_src, followup_source=follow_src, progress=progress)
        fd, out = tempfile.mkstemp(prefix="p2sam-", suffix=".seg.nrrd")
        os.close(fd)
        try:
            write_segmentation(out, result.segments, follow, result.provenance, follow_src, overwrite=True)
        except BaseException:
            os.remove(out)
            raise
        report = json.loads(json.dumps(result.report_dict(), default=_json_default))
        answer = {"status": PROPOSAL_STATUS, "p2sam": dict(self.handshake), "report": report,
                  "segments": [{"name": s.name, "color": list(s.color)} for s in result.segments],
                  "warnings": list(result.warnings), "seconds": round(time.perf_counter() - started, 3)}
        return out, answer


def _json_default(o):
    try:
        import numpy as np

        if isinstance(o, np.integer):
            return int(o)
        if isinstance(o, np.floating):
            return float(o) if np.isfinite(o) else None
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    return str(o)


class P2SAMApp(MONAILabelApp):
    """The app: one infer task ``p2sam``; ``GET /info/`` reports the engine version and model checksum.

    Conf (``--conf KEY VALUE`` of start_server): ``model`` (``litemedsam`` or a SAM checkpoint path),
    ``device`` (``auto``, ``cpu``, ``cuda``).
    """

    def __init__(self, app_dir, studies, conf):
        from P2SAMLogic.runtime import tune_process

        tune_process()  # this process serves inference only: glibc allocator settings for CPU speed
        self._model_name = (conf or {}).get("model", "litemedsam")
        self._device = (conf or {}).get("device", "auto")
        super().__init__(app_dir=app_dir, studies=studies, conf=conf or {}, name="P2SAM",
                         description="P2SAM: prior-visit contours carried onto follow-up scans (one-shot, "
                                     "training-free; every result is an unreviewed proposal)",
                         version=__version__)

    def init_infers(self):
        return {"p2sam": P2SAMInfer(self.datastore, self._model_name, self._device)}

    def init_strategies(self):
        return {}

    def info(self):
        d = super().info()
        d["p2sam"] = dict(self._infers["p2sam"].handshake)
        return d
