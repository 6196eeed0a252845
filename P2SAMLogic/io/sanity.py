"""Input sanity: what a reader accepts but the method would silently get wrong.

Every check raises :class:`~P2SAMLogic.errors.InputError` naming the file, before anything is
computed or written:

* **incomplete files** (:func:`check_file`): ITK reads a truncated NIfTI file
  (``.nii`` or ``.nii.gz``) without complaint and fills the missing voxels with zeros. A NIfTI
  file's data must hold ``vox_offset + voxels x bitpix / 8`` bytes (from its header); a gzip
  stream must end with its end-of-stream marker and a matching CRC. A ``.nii.gz`` is therefore
  decompressed once here (streamed, never held in memory: ~0.3 s per 100 MB of voxels). NRRD
  and MetaImage readers already refuse a truncated file;
* **sheared direction cosines** (:func:`check_direction`): a voxel grid whose axes are not
  perpendicular (3 x 3 direction matrix ``D`` with ``max |D^T D - I| > 1e-3``, about 0.06°).
  The engine's resampling, slice planes and millimetre margins assume a rectangular grid; ITK's
  NIfTI reader also silently replaces a sheared ``sform`` by a rotation (so the NIfTI header is
  checked before ITK reads it);
* **non-finite voxels** (:func:`check_finite`): NaN or ±infinity. They are **refused**, not
  replaced: a scanner never writes them, so they mean a broken export or a processing step that
  failed, and any value put in their place (air, the median...) would be a guess that changes
  the registration and the model's input without anyone seeing it. NIfTI float data is scanned
  in the file by :func:`check_file` (ITK's NIfTI reader turns NaN into 0); every image is
  checked again after reading (:func:`check_volume`), and by ``propagate.check_inputs`` for
  images that come from elsewhere (the Slicer module, the server).
"""
from __future__ import annotations

import math
import os
import struct
import zlib
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import InputError

PathLike = Union[str, Path]

#: largest ``|D^T D - I|`` entry accepted for a direction matrix ``D`` (1e-3 ~ axes 0.06° off perpendicular)
ORTHOGONALITY_TOLERANCE = 1e-3
_CHUNK = 1 << 22


# ------------------------------------------------------------------------------------------------
# NIfTI headers


def _nifti_header(head: bytes) -> Optional[dict]:
    """The fields of a NIfTI-1 or NIfTI-2 header this module needs, or None when ``head`` is not one.

    Returns ``{"version", "dims" (the used dims), "bitpix", "dtype" (numpy dtype of the voxels, None
    when not a plain numeric type), "vox_offset", "single_file", "sform" (3 x 4 array, None unless
    sform_code > 0)}``.
    """
    if len(head) < 348:
        return None
    for endian in ("<", ">"):
        size = struct.unpack(endian + "i", head[:4])[0]
        if size == 348 and head[344:347] in (b"n+1", b"ni1"):
            datatype = struct.unpack(endian + "h", head[70:72])[0]
            dim = struct.unpack(endian + "8h", head[40:56])
            bitpix = struct.unpack(endian + "h", head[72:74])[0]
            vox_offset = float(struct.unpack(endian + "f", head[108:112])[0])
            sform_code = struct.unpack(endian + "h", head[254:256])[0]
            srow = np.array(struct.unpack(endian + "12f", head[280:328]), dtype=np.float64).reshape(3, 4)
            single = head[344:347] == b"n+1"
            version = 1
        elif size == 540 and len(head) >= 540 and head[4:7] in (b"n+2", b"ni2"):
            datatype = struct.unpack(endian + "h", head[12:14])[0]
            dim = struct.unpack(endian + "8q", head[16:80])
            bitpix = struct.unpack(endian + "h", head[14:16])[0]
            vox_offset = float(struct.unpack(endian + "q", head[168:176])[0])
            sform_code = struct.unpack(endian + "i", head[348:352])[0]
            srow = np.array(struct.unpack(endian + "12d", head[400:496]), dtype=np.float64).reshape(3, 4)
            single = head[4:7] == b"n+2"
            version = 2
        else:
            continue
        n = int(dim[0])
        if not 1 <= n <= 7:
            return None
        float_types = {16: "f4", 64: "f8"}  # NIFTI_TYPE_FLOAT32, FLOAT64 (the only ones that hold NaN / inf)
        dtype = np.dtype(endian + float_types[datatype]) if datatype in float_types else None
        offset = int(math.ceil(vox_offset)) if vox_offset > 0 else (352 if version == 1 else 544)
        return {"version": version, "dims": [int(d) for d in dim[1: n + 1]], "bitpix": int(bitpix),
                "dtype": dtype, "offset": offset, "single_file": single,
                "sform": srow if sform_code > 0 else None}
    return None


def _nifti_data_bytes(info: dict) -> int:
    """Bytes a single-file NIfTI must hold: the voxel data's end (offset + voxels x bitpix / 8)."""
    voxels = 1
    for d in info["dims"]:
        voxels *= max(1, d)
    return info["offset"] + voxels * max(1, info["bitpix"]) // 8


def _chunks(path: PathLike, compressed: bool) -> Iterator[bytes]:
    """The file's bytes (decompressed when ``compressed``: every gzip member, its CRC and length checked).

    Raises:
        InputError: a gzip stream that ends early (truncated file) or is corrupt.
    """
    with open(str(path), "rb") as f:
        if not compressed:
            while True:
                block = f.read(_CHUNK)
                if not block:
                    return
                yield block
        z = zlib.decompressobj(16 + zlib.MAX_WBITS)
        started = False
        while True:
            block = f.read(_CHUNK)
            if not block:
                break
            while block:
                try:
                    out = z.decompress(block)
                except zlib.error as exc:
                    raise InputError(path, f"is not a valid gzip file ({exc}); copy the file again") from None
                started = True
                if out:
                    yield out
                if z.eof:  # end of one gzip member; another may follow
                    block = z.unused_data
                    z = zlib.decompressobj(16 + zlib.MAX_WBITS)
                    started = False
                    if block.strip(b"\x00") == b"":
                        block = b""
                else:
                    block = b""
        if started:
            raise InputError(path, "is truncated: its gzip stream ends before its end-of-stream marker (an "
                                   "interrupted copy or download?); the reader would fill the missing voxels with "
                                   "zeros. Copy the file again")


class _FiniteScan:
    """Counts NaN / infinite float voxels in a NIfTI byte stream fed block by block from byte 0."""

    def __init__(self, info: dict) -> None:
        self.dtype = info["dtype"]
        self.offset = info["offset"]
        self.voxels = (_nifti_data_bytes(info) - self.offset) // self.dtype.itemsize
        self.seen = 0  # bytes fed so far
        self.rest = b""  # bytes of an item split between two blocks
        self.index = 0  # voxel index of the next item
        self.nan = self.inf = 0
        self.first: Optional[int] = None

    def feed(self, block: bytes) -> None:
        start = self.seen
        self.seen += len(block)
        if self.seen <= self.offset:
            return
        if start < self.offset:
            block = block[self.offset - start:]
        data = self.rest + block
        usable = len(data) - len(data) % self.dtype.itemsize
        usable = min(usable, (self.voxels - self.index) * self.dtype.itemsize)
        if usable <= 0:
            self.rest = b""
            return
        values = np.frombuffer(data[:usable], dtype=self.dtype)
        self.rest = data[usable:] if self.index + usable // self.dtype.itemsize < self.voxels else b""
        bad = ~np.isfinite(values)
        if bad.any():
            if self.first is None:
                self.first = self.index + int(np.flatnonzero(bad)[0])
            n_nan = int(np.count_nonzero(np.isnan(values)))
            self.nan += n_nan
            self.inf += int(np.count_nonzero(bad)) - n_nan
        self.index += len(values)


def check_file(path: PathLike) -> None:
    """Refuse a volume file that the reader would misread silently (see the module docstring).

    * any ``*.gz`` file: its gzip stream must be complete and intact (end-of-stream marker, CRC);
    * ``.nii`` / ``.nii.gz`` (NIfTI-1 and NIfTI-2, single file): the data must be as long as its
      header says; a ``sform`` with sheared axes is refused (ITK would turn it into a rotation);
      float voxels must be finite (ITK's NIfTI reader turns NaN into 0).

    Other formats are left to their readers (NRRD and MetaImage readers refuse truncated files)
    and to :func:`check_volume` after reading.

    Raises:
        InputError: naming ``path``.
    """
    name = os.path.basename(str(path)).lower()
    compressed = name.endswith(".gz")
    nifti = name.endswith((".nii", ".nii.gz"))
    if not (compressed or nifti) or not os.path.isfile(str(path)):
        return  # a missing file: the reader reports it
    total = 0
    head = b""
    info: Optional[dict] = None
    scan: Optional[_FiniteScan] = None
    for block in _chunks(path, compressed):
        total += len(block)
        if scan is not None:
            scan.feed(block)
        elif nifti and info is None and head is not None:
            head += block
            if len(head) < 540:
                continue
            info, head, scan = _start_nifti(path, head)
    if nifti and info is None and head:
        info, head, scan = _start_nifti(path, head)
    if info is None:
        return  # not a single-file NIfTI: the reader decides
    need = _nifti_data_bytes(info)
    if total < need:
        raise InputError(path, f"is truncated: its header describes {need} bytes of header and voxels, but the "
                               f"file holds {total} ({100.0 * total / need:.0f}%); the reader would fill the "
                               "missing voxels with zeros. Copy the file again")
    if scan is not None and scan.first is not None:
        dims = (info["dims"] + [1, 1, 1])[:3]
        f = scan.first
        kji = [(f // (dims[0] * dims[1])) % dims[2], (f // dims[0]) % dims[1], f % dims[0]]
        kinds = [w for w, c in (("NaN", scan.nan), ("infinite", scan.inf)) if c]
        raise InputError(path, _non_finite_message(scan.nan + scan.inf, kinds, kji))


def _start_nifti(path: PathLike, head: bytes) -> Tuple[Optional[dict], Optional[bytes], Optional[_FiniteScan]]:
    """Parse the header at the start of ``head``; check its sform; a scanner for float voxels fed with ``head``."""
    info = _nifti_header(head[:540])
    if info is None or not info["single_file"]:
        return None, None, None
    if info["sform"] is not None:
        m = info["sform"][:, :3]
        norms = np.linalg.norm(m, axis=0)
        if np.all(norms > 0):
            check_direction(m / norms, path, "its NIfTI sform's voxel axes")
    scan = _FiniteScan(info) if info["dtype"] is not None else None
    if scan is not None:
        scan.feed(head)
    return info, None, scan


# ------------------------------------------------------------------------------------------------
# geometry and values


def axis_angles(direction: Sequence[float]) -> Tuple[float, float, float]:
    """Angles (degrees) between the i/j, i/k and j/k axes of a row-major 3 x 3 direction matrix (columns = axes)."""
    d = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    d = d / np.maximum(np.linalg.norm(d, axis=0), 1e-12)
    out = []
    for a, b in ((0, 1), (0, 2), (1, 2)):
        out.append(math.degrees(math.acos(float(np.clip(d[:, a] @ d[:, b], -1.0, 1.0)))))
    return out[0], out[1], out[2]


def check_direction(direction, source: PathLike, what: str = "its voxel axes") -> None:
    """Refuse a sheared (non-orthogonal) or degenerate direction matrix.

    Args:
        direction: 9 numbers (row-major, columns = the i, j, k axes in LPS) or a 3 x 3 array.
        source: the input named in the message.
    """
    d = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    if not np.all(np.isfinite(d)) or abs(float(np.linalg.det(d))) < 1e-6:
        raise InputError(source, f"{what} are degenerate (direction matrix {np.round(d, 4).tolist()}); the "
                                 "header is broken")
    err = float(np.abs(d.T @ d - np.eye(3)).max())
    if err > ORTHOGONALITY_TOLERANCE:
        ij, ik, jk = axis_angles(d)
        raise InputError(source, f"{what} are not perpendicular (a sheared grid: angles between the axes "
                                 f"{ij:.2f}°, {ik:.2f}°, {jk:.2f}° instead of 90°); the method needs a rectangular "
                                 "voxel grid: resample the scan onto one (e.g. Slicer's Resample Scalar Volume) "
                                 "or fix its header")


def _non_finite_message(n: int, kinds: List[str], first_kji: List[int]) -> str:
    return (f"holds {n} voxel(s) that are not finite numbers ({' and '.join(kinds)}; the first at [k, j, i] = "
            f"{first_kji}); a scan's voxels are finite numbers: this file is broken or was written by a failed "
            "processing step. Re-export it, or replace those voxels with a value you choose")


def check_finite(array: np.ndarray, source: PathLike) -> None:
    """Refuse an image ``[k, j, i]`` holding NaN or infinite voxels (counted, the first one named)."""
    a = np.asarray(array)
    if a.dtype.kind not in "fc":
        return
    bad = ~np.isfinite(a)
    n = int(np.count_nonzero(bad))
    if not n:
        return
    first = [int(v) for v in np.argwhere(bad)[0]]
    kinds = [w for w, f in (("NaN", np.isnan), ("infinite", np.isinf)) if f(a).any()]
    raise InputError(source, _non_finite_message(n, kinds, first))


def check_volume(image, source: PathLike) -> None:
    """:func:`check_direction` and :func:`check_finite` on a ``SimpleITK.Image``."""
    import SimpleITK as sitk

    if image.GetDimension() == 3:
        check_direction(image.GetDirection(), source)
    check_finite(sitk.GetArrayViewFromImage(image), source)
