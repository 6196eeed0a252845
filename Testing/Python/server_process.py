"""A real P2SAM MONAI Label server for tests: ``apps/p2sam/serve.py`` on 127.0.0.1, and raw HTTP to it.

:func:`running_server` starts one (a free port, its own datastore and jobs folder), waits until it
answers, and stops it afterwards; a watchdog kills it after 15 minutes whatever happens. :func:`http`
sends any request, including ones no well-behaved client would (raw paths, bad names), and returns
what came back without raising.
"""
from __future__ import annotations

import contextlib
import http.client as httplib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Dict, Iterator, Optional, Tuple

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(folder: Path, *extra_args: str, startup_s: float = 180.0) -> Iterator[str]:
    """``http://127.0.0.1:PORT`` of ``serve.py --studies folder/studies --conf jobs_dir folder/jobs``."""
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    log_path = folder / "server.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen([sys.executable, str(ROOT / "apps" / "p2sam" / "serve.py"), "--studies",
                             str(folder / "studies"), "--port", str(port), "--conf", "device", "cpu",
                             "--conf", "jobs_dir", str(folder / "jobs"), *extra_args],
                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(folder))
    watchdog = threading.Timer(900.0, proc.kill)  # never outlives a stuck test run
    watchdog.daemon = True
    watchdog.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError("the P2SAM server stopped at start-up:\n" + log_path.read_text(errors="replace")[-3000:])
            status, _, _ = http(url, "GET", "/auth/", timeout=5)
            if status == 200:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the P2SAM server did not answer within {startup_s:.0f} s:\n"
                                   + log_path.read_text(errors="replace")[-3000:])
            time.sleep(1.0)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        watchdog.cancel()
        log.close()


def http(url: str, method: str, path: str, *, query: Optional[dict] = None, fields: Optional[Dict[str, str]] = None,
         files: Optional[Dict[str, Tuple[str, bytes]]] = None, headers: Optional[Dict[str, str]] = None,
         form: Optional[Dict[str, str]] = None, timeout: float = 60.0):
    """``(status, headers, body)`` of one request; ``path`` is sent as given (no normalisation); status 0 when
    nothing answered. ``fields``/``files``: a multipart body; ``form``: an urlencoded one."""
    parsed = urllib.parse.urlparse(url)
    target = path + ("?" + urllib.parse.urlencode(query) if query else "")
    body, hdrs = None, dict(headers or {})
    if fields is not None or files is not None:
        boundary = "t" + uuid.uuid4().hex
        parts = []
        for k, v in (fields or {}).items():
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode())
        for k, (name, data) in (files or {}).items():
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"; filename="{name}"\r\n'
                         f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
        parts.append(f"--{boundary}--\r\n".encode())
        body = b"".join(parts)
        hdrs.setdefault("Content-Type", f"multipart/form-data; boundary={boundary}")
    elif form is not None:
        body = urllib.parse.urlencode(form).encode()
        hdrs.setdefault("Content-Type", "application/x-www-form-urlencoded")
    conn = httplib.HTTPConnection(parsed.hostname, parsed.port, timeout=timeout)
    try:
        conn.request(method, target, body=body, headers=hdrs)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    except OSError:
        return 0, {}, b""
    finally:
        conn.close()


def detail(body: bytes) -> str:
    """The ``detail`` of a JSON error answer (or the body as text)."""
    try:
        return str(json.loads(body.decode("utf-8")).get("detail"))
    except (ValueError, AttributeError):
        return body.decode("utf-8", errors="replace")


def tree(folder: Path, skip: Tuple[str, ...] = ()) -> set:
    """Every file and folder under ``folder`` (relative paths), except under the top-level names ``skip``."""
    out = set()
    for path in folder.rglob("*"):
        rel = path.relative_to(folder)
        if rel.parts[0] not in skip:
            out.add(str(rel))
    return out
