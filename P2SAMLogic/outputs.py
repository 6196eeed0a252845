"""Writing output files safely: atomic replacement, and JSON of numpy values. The one place for both.

Every file the engine (and the Slicer module's background runner) writes goes through
:func:`atomic_path`: the content goes to a temporary file beside the target, created with mode
0o666 so that the user's umask applies as for a plain write (``tempfile.mkstemp`` would make it
0600 and ``os.replace`` would keep that), and only a complete file replaces the target
(``os.replace``, atomic on one file system). On any failure the temporary file is removed and
an existing target is left as it was.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import uuid
from pathlib import Path
from typing import Any, Iterator, Union

PathLike = Union[str, Path]


@contextlib.contextmanager
def atomic_path(path: PathLike, suffix: str = "") -> Iterator[str]:
    """Yield the path of a new, empty temporary file beside ``path``; on success it replaces ``path``.

    Args:
        path: the file to write.
        suffix: ending of the temporary name, for writers that pick a format from it
            (``".nii.gz"``, ``".png"``).
    """
    target = os.path.abspath(str(path))
    tmp = os.path.join(os.path.dirname(target), f".{os.path.basename(target)}.{uuid.uuid4().hex[:12]}.tmp{suffix}")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666))
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        try:
            if os.path.exists(tmp):
                os.remove(tmp)
        except OSError:
            pass
        raise


def write_bytes_atomic(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(data)


def write_text_atomic(path: PathLike, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path, Path(str(path)).suffix) as tmp:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)


def json_default(o: Any) -> Any:
    """``json.dumps`` fallback: numpy integers, floats (non-finite -> null) and arrays; anything else as ``str``."""
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is a dependency
        np = None
    if np is not None:
        if isinstance(o, np.integer):
            return int(o)
        if isinstance(o, np.floating):
            return float(o) if math.isfinite(float(o)) else None
        if isinstance(o, np.ndarray):
            return o.tolist()
        if isinstance(o, np.bool_):
            return bool(o)
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    if isinstance(o, Path):
        return str(o)
    return str(o)


def dumps_json(obj: Any, **kwargs: Any) -> str:
    """``json.dumps`` with :func:`json_default` (numpy values, paths)."""
    return json.dumps(obj, default=json_default, **kwargs)
