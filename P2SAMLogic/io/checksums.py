"""SHA-256 checksums of a run's input files, recorded in its provenance (``inputs_sha256``).

They let a later run tell whether an output still belongs to its inputs (``p2sam propagate-many``
resumes only cases whose recorded checksums, engine version and parameters still match).

* a file: the SHA-256 of its bytes; for a ``.nhdr`` / ``.mhd`` header with one detached data file,
  of the header's bytes followed by the data file's;
* a folder (a DICOM series): the SHA-256 of every regular file under it, recursively, in sorted
  order of their relative paths, each contributing its relative path and its own checksum (a file
  added, removed, renamed or changed changes the folder's checksum; an unreadable file counts by
  its name only).
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Dict, Iterable, Optional, Tuple, Union

PathLike = Union[str, Path]
_BLOCK = 1 << 20


def _file_digest(path: PathLike, h=None):
    h = h or hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_BLOCK), b""):
            h.update(block)
    return h


def _detached_data(path: Path) -> Optional[Path]:
    """The one data file a ``.nhdr`` / ``.mhd`` header names (None for lists, patterns or attached data)."""
    name = path.name.lower()
    if not name.endswith((".nhdr", ".mhd")):
        return None
    try:
        text = path.read_bytes()[:65536].decode("latin-1")
    except OSError:
        return None
    pattern = r"^\s*data ?file\s*:\s*(.+?)\s*$" if name.endswith(".nhdr") else r"^\s*ElementDataFile\s*=\s*(.+?)\s*$"
    m = re.search(pattern, text, re.MULTILINE | re.IGNORECASE)
    if not m:
        return None
    value = m.group(1)
    if value.upper() in ("LOCAL", "LIST") or " " in value or "%" in value:
        return None
    data = Path(value) if os.path.isabs(value) else path.parent / value
    return data if data.is_file() else None


def sha256_of(path: PathLike) -> str:
    """The checksum of an input file or folder (module docstring); raises ``OSError`` if unreadable."""
    p = Path(path)
    if p.is_dir():
        h = hashlib.sha256()
        for f in sorted(q for q in p.rglob("*") if q.is_file()):
            h.update(str(f.relative_to(p).as_posix()).encode("utf-8") + b"\0")
            try:
                h.update(_file_digest(f).hexdigest().encode("ascii"))
            except OSError:  # a file the reader skipped too (no permission): counted by name only
                h.update(b"unreadable")
        return h.hexdigest()
    h = _file_digest(p)
    data = _detached_data(p)
    if data is not None:
        _file_digest(data, h)
    return h.hexdigest()


def input_checksums(inputs: Iterable[Tuple[str, PathLike]]) -> Dict[str, str]:
    """``{role: sha256}`` for ``(role, path)`` pairs (``prior_image``, ``prior_segmentation``, ``followup``)."""
    return {role: sha256_of(path) for role, path in inputs}
