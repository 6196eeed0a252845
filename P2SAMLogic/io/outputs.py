"""Writing output files safely: atomic replacement, all-or-nothing runs, and JSON of numpy values.

Every file the engine (and the Slicer module's background runner) writes goes through
:func:`atomic_path`: the content goes to a temporary file beside the target, created with mode
0o666 so that the user's umask applies as for a plain write (``tempfile.mkstemp`` would make it
0600 and ``os.replace`` would keep that), and only a complete file replaces the target
(``os.replace``, atomic on one file system). On any failure the temporary file is removed and
an existing target is left as it was.

A run that writes several files (segmentation, label table, report, overlay) wraps them in
:func:`transaction`: inside it, :func:`atomic_path` keeps each finished temporary file instead of
moving it into place; when the block ends without an error every target is replaced (each old
file first moved aside, restored if a later replacement fails, deleted at the end). If anything
fails -- a writer, the disk, an interruption -- every temporary file is removed and every old
file is left byte for byte as it was.
"""
from __future__ import annotations

import contextlib
import contextvars
import json
import math
import os
import uuid
from pathlib import Path
from typing import Any, Iterator, List, Optional, Tuple, Union

PathLike = Union[str, Path]


class _Transaction:
    """The finished temporary files of a :func:`transaction`, waiting to replace their targets."""

    def __init__(self) -> None:
        self.pending: List[Tuple[str, str]] = []  # (temporary file, target), in the order written

    def add(self, tmp: str, target: str) -> None:
        for i, (old_tmp, old_target) in enumerate(self.pending):
            if old_target == target:  # written twice in one run: the later content wins
                _remove_quietly(old_tmp)
                del self.pending[i]
                break
        self.pending.append((tmp, target))

    def discard(self) -> None:
        for tmp, _ in self.pending:
            _remove_quietly(tmp)
        self.pending = []

    def commit(self) -> None:
        """Replace every target; on a failure put every old file back and raise."""
        done: List[Tuple[str, Optional[str]]] = []  # (target, its old file moved aside, or None)
        try:
            for tmp, target in self.pending:
                backup = None
                if os.path.lexists(target):
                    backup = _sibling(target, "old")
                    os.replace(target, backup)
                try:
                    os.replace(tmp, target)
                except BaseException:
                    if backup is not None:
                        os.replace(backup, target)
                    raise
                done.append((target, backup))
        except BaseException:
            for target, backup in reversed(done):
                try:
                    if backup is not None:
                        os.replace(backup, target)
                    else:
                        os.remove(target)
                except OSError:
                    pass
            self.discard()
            raise
        self.pending = []
        for _, backup in done:
            if backup is not None:
                _remove_quietly(backup)


_ACTIVE: "contextvars.ContextVar[Optional[_Transaction]]" = contextvars.ContextVar("p2sam_output_transaction",
                                                                                  default=None)


def _remove_quietly(path: str) -> None:
    try:
        if os.path.lexists(path):
            os.remove(path)
    except OSError:
        pass


def _sibling(target: str, kind: str, suffix: str = "") -> str:
    """A hidden, unique file name beside ``target``: ``.<name>.<random>.<kind><suffix>``."""
    return os.path.join(os.path.dirname(target), f".{os.path.basename(target)}.{uuid.uuid4().hex[:12]}.{kind}{suffix}")


@contextlib.contextmanager
def transaction() -> Iterator[None]:
    """All-or-nothing writing of every :func:`atomic_path` file inside the block (see the module docstring).

    Nested blocks join the outer one. Raises what the block or the final replacement raised; the
    old files are then intact and no temporary file is left.
    """
    if _ACTIVE.get() is not None:
        yield
        return
    tx = _Transaction()
    token = _ACTIVE.set(tx)
    try:
        yield
    except BaseException:
        _ACTIVE.reset(token)
        tx.discard()
        raise
    _ACTIVE.reset(token)
    tx.commit()


@contextlib.contextmanager
def atomic_path(path: PathLike, suffix: str = "") -> Iterator[str]:
    """Yield the path of a new, empty temporary file beside ``path``; on success it replaces ``path``
    (inside a :func:`transaction`: when the transaction ends).

    Args:
        path: the file to write.
        suffix: ending of the temporary name, for writers that pick a format from it
            (``".nii.gz"``, ``".png"``).
    """
    target = os.path.abspath(str(path))
    tmp = _sibling(target, "tmp", suffix)
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666))
    try:
        yield tmp
        tx = _ACTIVE.get()
        if tx is not None:
            tx.add(tmp, target)
        else:
            os.replace(tmp, target)
    except BaseException:
        _remove_quietly(tmp)
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


def write_all(writers: "List[Tuple[PathLike, Any]]") -> List[str]:
    """Run ``writers`` (``(target path, callable that writes it through atomic_path)``, in order) in one
    :func:`transaction`: every target is replaced, or none.

    Returns:
        The targets, as given.
    Raises:
        OutputError: naming the file that could not be written (``OSError``: disk full, I/O error),
            or the first target when moving the finished files into place failed; the old files are
            intact and no temporary file is left. Other errors of a writer propagate unchanged (with
            the same guarantee).
    """
    from ..errors import OutputError

    done: List[str] = []
    current = str(writers[0][0]) if writers else ""
    try:
        with transaction():
            for target, write in writers:
                current = str(target)
                write()
                done.append(current)
            current = done[0] if done else current
    except OSError as exc:
        what = exc.strerror or str(exc) or exc.__class__.__name__
        raise OutputError(current, f"could not be written ({what}); nothing was written, the old output files "
                                   "are intact") from None
    return done


def write_all_into(folder: PathLike, writers: "List[Tuple[PathLike, Any]]") -> List[str]:
    """:func:`write_all` into ``folder``, creating it when missing; when the writers fail, a folder this
    call created is removed again (it is empty: :func:`write_all` leaves nothing behind)."""
    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        return write_all(writers)
    except BaseException:
        if created:
            try:
                folder.rmdir()
            except OSError:
                pass
        raise
