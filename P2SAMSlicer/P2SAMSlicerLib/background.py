"""Run a propagation in a separate Python process, so that Slicer never freezes.

The GUI writes the inputs to a temporary job folder (:func:`.runner.write_job`), starts
``python -m P2SAMSlicerLib.runner <folder>`` and calls :meth:`BackgroundPropagation.poll`
from a timer: it returns the progress lines written since the last call. Cancel writes a
``cancel`` file (the engine stops at its next check) and kills the process if it has not
stopped within a grace period. Nothing touches the MRML scene here: the caller creates the
output node from :meth:`BackgroundPropagation.result` on the GUI thread, after success only,
so a cancelled or failed run leaves the scene as it was.

Pure Python (no Slicer, Qt or VTK import), tested without Slicer.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import List, Optional, Sequence, Tuple

from . import runner


def default_python() -> str:
    """The interpreter for the background process: Slicer's ``PythonSlicer``.

    Looked up on the PATH (Slicer puts its ``bin`` folder there), then next to
    ``sys.executable``. ``sys.executable`` itself is used only when it is a Python
    interpreter (its name starts with "python"): inside Slicer it may be the application
    binary, and starting that would open a second Slicer instead of running the job.

    Raises:
        RuntimeError: no Python interpreter was found (the message says what to do).
    """
    found = shutil.which("PythonSlicer")
    if found:
        return found
    executable = sys.executable or ""
    folder = os.path.dirname(executable)
    for name in ("PythonSlicer", "PythonSlicer.exe"):
        candidate = os.path.join(folder, name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    if os.path.basename(executable).lower().startswith("python") and os.path.isfile(executable):
        return executable
    raise RuntimeError(f"cannot run P²SAM in the background: Slicer's PythonSlicer was found neither on the PATH "
                       f"nor next to {executable or 'this program'}; untick 'Run in background' to run inside Slicer")


def import_paths() -> List[str]:
    """Folders the background process needs on ``sys.path``: the one holding ``P2SAMSlicerLib``, and the
    one holding ``P2SAMLogic`` (the same folder in an installed extension; the repository root in a
    source checkout)."""
    lib_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    paths = [lib_parent]
    if not os.path.isfile(os.path.join(lib_parent, "P2SAMLogic", "__init__.py")):
        root = os.path.dirname(lib_parent)
        if os.path.isfile(os.path.join(root, "P2SAMLogic", "__init__.py")):
            paths.append(root)
    return paths


class BackgroundPropagation:
    """One run in a child process: a prior onto one follow-up, or onto several (model loaded once).

    Args:
        prior_image, prior_segments: the prior (SimpleITK image, Segments on its grid).
        followup: one follow-up image, or a list of them (visit order).
        names, chain: the follow-ups' names; chaining (see :func:`.runner.run_series`).
        model, model_type, device, config: as :func:`.runner.run_series`.
        python: interpreter to run (default :func:`default_python`).
        work_dir: parent of the job folder (default: the system temporary folder).
    """

    def __init__(self, prior_image, prior_segments: Sequence, followup, *, names: Optional[Sequence[str]] = None,
                 chain: bool = False, model: str = "litemedsam", model_type: Optional[str] = None,
                 device: str = "auto", config: Optional[dict] = None, python: Optional[str] = None,
                 work_dir: Optional[str] = None) -> None:
        self.python = python or default_python()
        self.folder = tempfile.mkdtemp(prefix="P2SAM-", dir=work_dir)
        try:
            runner.write_job(self.folder, prior_image, prior_segments, followup, names=names, chain=chain,
                             model=model, model_type=model_type, device=device, config=config)
        except BaseException:
            shutil.rmtree(self.folder, ignore_errors=True)
            raise
        self.process: Optional[subprocess.Popen] = None
        self._offset = 0
        self._cancel_time: Optional[float] = None
        self.fraction = 0.0
        self.message = ""

    # -- life cycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Start the child process; if it cannot start, the job folder is removed and RuntimeError raised."""
        try:
            self._start()
        except BaseException as exc:
            self.cleanup()
            if isinstance(exc, OSError):
                raise RuntimeError(f"the background process could not be started with {self.python}: {exc}") from None
            raise

    def _start(self) -> None:
        env = dict(os.environ)
        extra = os.pathsep.join(import_paths())
        env["PYTHONPATH"] = extra + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env.setdefault("PYTHONUNBUFFERED", "1")
        # no console window pops up on Windows
        extra_args = {"creationflags": getattr(subprocess, "CREATE_NO_WINDOW", 0)} if os.name == "nt" else {}
        log = open(os.path.join(self.folder, "log.txt"), "wb")
        try:
            self.process = subprocess.Popen([self.python, "-m", "P2SAMSlicerLib.runner", self.folder],
                                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.folder,
                                            **extra_args)
        finally:
            log.close()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def returncode(self) -> Optional[int]:
        return None if self.process is None else self.process.poll()

    def poll(self) -> List[Tuple[float, str]]:
        """Progress lines ``(fraction, message)`` written since the last call; kills a cancelled
        process that ignored the request for more than 10 s."""
        out: List[Tuple[float, str]] = []
        path = os.path.join(self.folder, "progress.jsonl")
        if os.path.exists(path):
            with open(path, "rb") as handle:
                handle.seek(self._offset)
                data = handle.read()
            end = data.rfind(b"\n") + 1  # only complete lines
            self._offset += end
            for line in data[:end].splitlines():
                try:
                    item = json.loads(line.decode("utf-8"))
                except ValueError:
                    continue
                out.append((float(item.get("fraction", 0.0)), str(item.get("message", ""))))
        if out:
            self.fraction, self.message = out[-1]
        if self._cancel_time is not None and self.running and time.monotonic() - self._cancel_time > 10.0:
            self.kill()
        return out

    def cancel(self) -> None:
        """Ask the run to stop (it checks between steps); see :meth:`poll` for the hard stop."""
        if self._cancel_time is None:
            self._cancel_time = time.monotonic()
            with open(os.path.join(self.folder, "cancel"), "w", encoding="utf-8") as handle:
                handle.write("cancel\n")

    @property
    def cancelled(self) -> bool:
        return self._cancel_time is not None

    def kill(self) -> None:
        if self.running:
            self.process.kill()
            self.process.wait(timeout=10)

    def wait(self, timeout: Optional[float] = None) -> int:
        """Block until the process ends (for scripts and tests); returns its exit status."""
        if self.process is None:
            raise RuntimeError("the background propagation was not started")
        return self.process.wait(timeout=timeout)

    # -- outcome ----------------------------------------------------------------------------
    def error(self) -> Optional[dict]:
        """``{"type", "message"[, "traceback"]}`` of a failed run, or None.

        A process that died without writing ``error.json`` (crash, killed) is reported
        with the end of its log.
        """
        err = runner.read_error(self.folder)
        if err is not None:
            return err
        code = self.returncode
        if code is None or code == 0:
            return None
        if self.cancelled:
            return {"type": "CancelledError", "message": "cancelled by the user; nothing was written"}
        return {"type": "ProcessError", "message": f"the background process stopped with status {code}:\n" + self.log_tail()}

    def log_tail(self, lines: int = 20) -> str:
        path = os.path.join(self.folder, "log.txt")
        if not os.path.exists(path):
            return ""
        with open(path, "rb") as handle:
            text = handle.read().decode("utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def result(self):
        """``(segments, report)`` of a successful run's (first) follow-up (see :func:`.runner.read_result`)."""
        if self.returncode != 0:
            raise RuntimeError("the background propagation has not finished successfully")
        return runner.read_result(self.folder)

    def results(self) -> dict:
        """Every follow-up's outcome and the combined report (see :func:`.runner.read_results`)."""
        if self.returncode != 0:
            raise RuntimeError("the background propagation has not finished successfully")
        return runner.read_results(self.folder)

    def cleanup(self) -> None:
        """Stop the process if needed and delete the job folder."""
        self.kill()
        shutil.rmtree(self.folder, ignore_errors=True)


def failure_text(error: Optional[dict], log_tail: str = "") -> str:
    """What the panel shows when a run failed: the error's message, then the worker's last log lines.

    Args:
        error: the job's ``error.json`` (``{"type", "message", "traceback"?}``), or None.
        log_tail: the end of the worker's output (:meth:`BackgroundPropagation.log_tail`).
    """
    message = (error or {}).get("message") or "the background process ended without a result"
    text = f"P²SAM failed: {message}"
    tail = (log_tail or "").strip() or ((error or {}).get("traceback") or "").strip()
    if tail:
        text += "\n\nLast lines of the worker's log:\n" + tail
    return text

