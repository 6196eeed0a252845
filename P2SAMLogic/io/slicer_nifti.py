"""Slicer segmentations (.seg.nrrd), labelmap volumes, and NIfTI labelmaps with their label table.

The NRRD reader and writer are the package's own (exact header control, UTF-8 segment names, no
extra dependency)."""
from __future__ import annotations

import bz2
import gzip
import json
import os
import re
import warnings
import zlib
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from .outputs import dumps_json
from .sanity import check_direction, check_file
from .volume import DEFAULT_COLORS, Segment
from .files import (
    PathLike, _LPS_FROM_RAS, _index_to_lps, _select, _sitk_reason, _strip_volume_extension, _to_reference,
    check_segmentation_grid, require_overlap, touches_grid_edge)


def _nrrd_type_table() -> Dict[str, str]:
    """NRRD ``type`` spellings -> numpy dtype codes."""
    spellings = (
        (("signed char", "int8", "int8_t"), "i1"),
        (("uchar", "unsigned char", "uint8", "uint8_t"), "u1"),
        (("short", "short int", "signed short", "signed short int", "int16", "int16_t"), "i2"),
        (("ushort", "unsigned short", "unsigned short int", "uint16", "uint16_t"), "u2"),
        (("int", "signed int", "int32", "int32_t"), "i4"),
        (("uint", "unsigned int", "uint32", "uint32_t"), "u4"),
        (("longlong", "long long", "long long int", "signed long long", "signed long long int", "int64", "int64_t"),
         "i8"),
        (("ulonglong", "unsigned long long", "unsigned long long int", "uint64", "uint64_t"), "u8"),
        (("float",), "f4"),
        (("double",), "f8"),
    )
    return {name: code for names, code in spellings for name in names}


_NRRD_TYPES = _nrrd_type_table()


def _read_nrrd_header(path: PathLike) -> Tuple[Dict[str, str], Dict[str, str], int]:
    """``(fields, custom key/values, data byte offset)`` of a NRRD file (attached or detached header)."""
    with open(path, "rb") as f:
        magic = f.readline()
        if not magic.startswith(b"NRRD"):
            raise ValueError("not a NRRD file")
        fields: Dict[str, str] = {}
        custom: Dict[str, str] = {}
        while True:
            line = f.readline()
            if not line:
                break
            text = line.decode("utf-8", errors="replace").rstrip("\r\n")
            if text == "":
                break
            if text.startswith("#"):
                continue
            colon = text.find(":")
            if colon < 0:
                continue
            key = text[:colon]
            if text[colon + 1: colon + 2] == "=":
                custom[key] = text[colon + 2:]
            else:
                fields[key.strip().lower()] = text[colon + 1:].strip()
        return fields, custom, f.tell()


def _read_nrrd(path: PathLike) -> Tuple[Dict[str, str], Dict[str, str], np.ndarray]:
    """Header fields, custom fields, and the data as a C-order array of shape ``reversed(sizes)``."""
    fields, custom, offset = _read_nrrd_header(path)
    dtype = _NRRD_TYPES.get(fields.get("type", "").lower())
    if dtype is None:
        raise ValueError(f"unsupported NRRD type {fields.get('type')!r}")
    sizes = [int(v) for v in fields.get("sizes", "").split()]
    if not sizes:
        raise ValueError("NRRD header has no sizes")
    endian = fields.get("endian", "little").lower()
    dt = np.dtype(dtype).newbyteorder("<" if endian == "little" else ">")
    data_file = fields.get("data file") or fields.get("datafile")
    if data_file:
        target = data_file if os.path.isabs(data_file) else os.path.join(os.path.dirname(str(path)), data_file)
        with open(target, "rb") as f:
            raw = f.read()
    else:
        with open(path, "rb") as f:
            f.seek(offset)
            raw = f.read()
    if int(fields.get("line skip", fields.get("lineskip", "0")) or 0):
        raise ValueError("NRRD 'line skip' is not supported")
    encoding = fields.get("encoding", "raw").lower()
    count = int(np.prod(sizes))
    nbytes = count * dt.itemsize
    if encoding in ("gzip", "gz"):
        raw = gzip.decompress(raw)
    elif encoding in ("bzip2", "bz2"):
        raw = bz2.decompress(raw)
    elif encoding in ("ascii", "text", "txt"):
        arr = np.array(raw.decode("ascii").split(), dtype=np.float64).astype(dt.newbyteorder("="))
        if arr.size != count:
            raise ValueError("NRRD data is incomplete")
        return fields, custom, arr.reshape(sizes[::-1])
    elif encoding != "raw":
        raise ValueError(f"unsupported NRRD encoding {encoding!r}")
    skip = int(fields.get("byte skip", fields.get("byteskip", "0")) or 0)
    if skip == -1:
        raw = raw[len(raw) - nbytes:] if len(raw) >= nbytes else raw
    elif skip > 0:
        raw = raw[skip:]
    if len(raw) < nbytes:
        raise ValueError(f"NRRD data is incomplete ({len(raw)} of {nbytes} bytes)")
    arr = np.frombuffer(raw[:nbytes], dtype=dt).astype(dt.newbyteorder("="))
    return fields, custom, arr.reshape(sizes[::-1])


def _parse_vector(text: str) -> Optional[List[float]]:
    text = text.strip()
    if text.lower() == "none":
        return None
    return [float(v) for v in text.strip("()").split(",")]


def _nrrd_space_matrix(space: str) -> np.ndarray:
    """Matrix taking the file's space to LPS."""
    s = space.strip().lower()
    table = {"left-posterior-superior": (1, 1, 1), "lps": (1, 1, 1),
             "right-anterior-superior": (-1, -1, 1), "ras": (-1, -1, 1),
             "left-anterior-superior": (1, -1, 1), "las": (1, -1, 1),
             "": (1, 1, 1)}
    if s not in table:
        raise ValueError(f"unsupported NRRD space {space!r}")
    return np.diag(np.array(table[s], dtype=np.float64))


def _fmt(v: float) -> str:
    v = float(v)
    return "0" if v == 0 else repr(v)


def _fmt_vec(values) -> str:
    return "(" + ",".join(_fmt(v) for v in values) + ")"


def _header_text(value: str) -> str:
    return str(value).replace("\r", " ").replace("\n", " ")


def _slicer_tag_text(key: str, value: str) -> Tuple[str, str]:
    k = _header_text(key).replace("|", "/").replace(":", "_")
    v = _header_text(value)
    if "|" in v:
        warnings.warn(f"segment tag {key!r}: '|' (Slicer's tag separator) replaced by '/'", stacklevel=3)
        v = v.replace("|", "/")
    return k, v


def _read_seg_nrrd(p: Path, reference: sitk.Image, names: Optional[Sequence[str]]) -> List[Segment]:
    try:
        fields, custom, data = _read_nrrd(p)
    except (OSError, ValueError, EOFError, zlib.error) as exc:
        raise InputError(p, f"is not a readable segmentation file ({exc})") from None
    sizes = [int(v) for v in fields["sizes"].split()]
    ndim = len(sizes)
    dirs = [_parse_vector(t) for t in re.findall(r"\([^)]*\)|none", fields.get("space directions", ""))]
    if len(dirs) != ndim:
        raise InputError(p, "segmentation header has no usable 'space directions'")
    domain = [a for a in range(ndim) if dirs[a] is not None]
    lists = [a for a in range(ndim) if dirs[a] is None]
    if len(domain) != 3 or len(lists) > 1:
        raise InputError(p, f"segmentation has {len(domain)} spatial axes; 3 are needed")
    to_lps = _nrrd_space_matrix(fields.get("space", "left-posterior-superior"))
    vecs = [to_lps @ np.array(dirs[a]) for a in domain]
    spacing = [float(np.linalg.norm(v)) for v in vecs]
    if min(spacing) <= 0:
        raise InputError(p, "segmentation header has a zero-length 'space directions' vector")
    direction = np.column_stack([v / s for v, s in zip(vecs, spacing)])
    check_direction(direction, p)
    origin = to_lps @ np.array(_parse_vector(fields.get("space origin", "(0,0,0)")) or [0, 0, 0])
    axes = [ndim - 1 - domain[2], ndim - 1 - domain[1], ndim - 1 - domain[0]]
    if lists:
        data = np.transpose(data, axes + [ndim - 1 - lists[0]])
    else:
        data = np.transpose(data, axes)[..., None]  # [k, j, i, layer]
    indices = sorted({int(m.group(1)) for k in custom for m in [re.match(r"Segment(\d+)_", k)] if m})
    infos = []
    for n in indices:
        def g(field: str, default: str = "", n: int = n) -> str:
            return custom.get(f"Segment{n}_{field}", default)

        name = g("Name") or g("ID") or f"Segment_{n}"
        try:
            color = tuple(float(v) for v in g("Color").split()[:3])
            if len(color) != 3:
                raise ValueError
        except ValueError:
            color = tuple(DEFAULT_COLORS[n % len(DEFAULT_COLORS)])
        layer = int(g("Layer", str(n if data.shape[3] > 1 else 0)) or 0)
        label = int(g("LabelValue", "1") or 1)
        extent = None
        try:
            e = [int(v) for v in g("Extent").split()]
            if len(e) == 6:
                extent = e
        except ValueError:
            extent = None
        tags = {}
        for item in g("Tags").split("|"):
            if ":" in item:
                k, v = item.split(":", 1)
                tags[k] = v
        infos.append(dict(name=name, color=color, layer=layer, label=label, extent=extent, tags=tags, id=g("ID")))
    chosen = _select(p, [i["name"] for i in infos], names)
    out = []
    for idx in chosen:
        info = infos[idx]
        if info["layer"] >= data.shape[3]:
            raise InputError(p, f"segment '{info['name']}' refers to layer {info['layer']}, "
                                f"but the file has {data.shape[3]}")
        arr = data[..., info["layer"]] == info["label"]
        e = info["extent"]
        if e is not None:
            keep = np.zeros_like(arr)
            if e[1] >= e[0] and e[3] >= e[2] and e[5] >= e[4]:
                keep[max(e[4], 0): e[5] + 1, max(e[2], 0): e[3] + 1, max(e[0], 0): e[1] + 1] = True
            arr = arr & keep
        mask = sitk.GetImageFromArray(arr.astype(np.uint8))
        mask.SetOrigin([float(v) for v in origin])
        mask.SetSpacing(spacing)
        mask.SetDirection([float(v) for v in direction.flatten()])
        require_overlap(p, mask, reference)
        out.append(Segment(name=info["name"], color=info["color"], mask=_to_reference(p, info["name"], mask, reference),
                           segment_id=info["id"] or info["name"], tags=info["tags"]))
    return out


def _sidecar_labels(p: Path) -> Dict[int, dict]:
    """Names/colours/tags per label value from ``<name>.labels.json`` or ``<name>.ctbl`` next to ``p``."""
    stem = _strip_volume_extension(p)
    out: Dict[int, dict] = {}
    js = stem + ".labels.json"
    if os.path.isfile(js):
        try:
            with open(js, "r", encoding="utf-8") as f:
                doc = json.load(f)
            for k, v in (doc.get("labels") or {}).items():
                out[int(k)] = {"name": str(v.get("name") or f"Label {k}"),
                               "color": tuple(float(c) for c in (v.get("color") or [])[:3]) or None,
                               "tags": {str(a): str(b) for a, b in (v.get("tags") or {}).items()},
                               "id": str(v.get("segment_id") or "")}
            return out
        except (OSError, ValueError, AttributeError, TypeError) as exc:
            warnings.warn(f"{js}: ignored, not a readable label table ({exc})", stacklevel=3)
            return {}
    ctbl = stem + ".ctbl"
    if os.path.isfile(ctbl):
        try:
            with open(ctbl, "r", encoding="utf-8") as f:
                for line in f:
                    parts = line.split()
                    if not parts or parts[0].startswith("#") or len(parts) < 5:
                        continue
                    out[int(parts[0])] = {"name": parts[1], "tags": {}, "id": "",
                                          "color": tuple(float(c) / 255.0 for c in parts[2:5])}
        except (OSError, ValueError) as exc:
            warnings.warn(f"{ctbl}: ignored, not a readable colour table ({exc})", stacklevel=3)
            return {}
    return out


def _read_labelmap(p: Path, reference: sitk.Image, names: Optional[Sequence[str]]) -> List[Segment]:
    check_file(p)
    try:
        img = sitk.ReadImage(str(p))
    except RuntimeError as exc:
        raise InputError(p, f"is not a readable labelmap or segmentation file ({_sitk_reason(exc)})") from None
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(p, "is a multi-component image, not a labelmap")
    if img.GetDimension() != 3:
        raise InputError(p, f"is a {img.GetDimension()}D image; a 3D labelmap is needed")
    check_direction(img.GetDirection(), p)
    arr = sitk.GetArrayFromImage(img)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise InputError(p, "has non-integer values: it is an image, not a labelmap")
    arr = arr.astype(np.int64)
    values = [int(v) for v in np.unique(arr) if v != 0]
    if not values:
        raise InputError(p, "labelmap is empty (no nonzero voxel)")
    if len(values) > 1000:
        raise InputError(p, f"has {len(values)} distinct values: it looks like an image, not a labelmap")
    covered = check_segmentation_grid(p, img, reference)
    table = _sidecar_labels(p)
    infos = []
    for n, v in enumerate(values):
        t = table.get(v, {})
        infos.append({"value": v, "name": t.get("name") or f"Label {v}",
                      "color": t.get("color") or tuple(DEFAULT_COLORS[n % len(DEFAULT_COLORS)]),
                      "tags": t.get("tags") or {}, "id": t.get("id") or str(v)})
    chosen = _select(p, [i["name"] for i in infos], names)
    out = []
    for idx in chosen:
        info = infos[idx]
        mask = sitk.GetImageFromArray((arr == info["value"]).astype(np.uint8))
        mask.CopyInformation(img)
        if covered < 0.99 and touches_grid_edge(sitk.GetArrayViewFromImage(mask)):
            warnings.warn(f"{p}: segment '{info['name']}' touches the edge of the labelmap's grid, inside the prior "
                          "image: it may be cut there; check it against the prior image", stacklevel=2)
        out.append(Segment(name=info["name"], color=tuple(info["color"]),
                           mask=_to_reference(p, info["name"], mask, reference),
                           segment_id=info["id"], tags=dict(info["tags"])))
    return out


def _sidecar_path(path: PathLike) -> str:
    return _strip_volume_extension(path) + ".labels.json"


def _layers(arrays: List[np.ndarray]) -> Tuple[List[np.ndarray], List[Tuple[int, int]]]:
    """Pack masks into as few uint8 label layers as possible without overlap: (layers, [(layer, label)])."""
    layers: List[np.ndarray] = []
    counts: List[int] = []
    where: List[Tuple[int, int]] = []
    for a in arrays:
        for li, layer in enumerate(layers):
            if counts[li] < 255 and not np.any(layer[a]):
                break
        else:
            layers.append(np.zeros(a.shape, dtype=np.uint8))
            counts.append(0)
            li = len(layers) - 1
        counts[li] += 1
        layers[li][a] = counts[li]
        where.append((li, counts[li]))
    return layers, where


def reference_geometry_string(reference: sitk.Image) -> str:
    """Slicer's serialised image geometry of ``reference``: the 4 x 4 IJK-to-RAS matrix (row major)
    then the extent ``0;nx-1;0;ny-1;0;nz-1;`` (as in ``vtkSegmentationConverter::SerializeImageGeometry``)."""
    M, o = _index_to_lps(reference)
    M_ras = _LPS_FROM_RAS @ M
    o_ras = _LPS_FROM_RAS @ o
    m4 = np.eye(4)
    m4[:3, :3] = M_ras
    m4[:3, 3] = o_ras
    nx, ny, nz = reference.GetSize()
    return "".join(_fmt(v) + ";" for v in m4.flatten()) + f"0;{nx - 1};0;{ny - 1};0;{nz - 1};"


def _write_seg_nrrd(tmp: str, segments: List[Segment], reference: sitk.Image, provenance: dict) -> None:
    arrays = [s.array() for s in segments]
    layers, where = _layers(arrays)
    nx, ny, nz = reference.GetSize()
    M, origin = _index_to_lps(reference)
    dir_text = " ".join(_fmt_vec(M[:, a]) for a in range(3))
    if len(layers) == 1:
        data = layers[0]  # [k, j, i]
        header = ["dimension: 3", f"sizes: {nx} {ny} {nz}", f"space directions: {dir_text}",
                  "kinds: domain domain domain"]
    else:
        data = np.stack(layers, axis=-1)  # [k, j, i, layer]: the layer index varies fastest in the file
        header = ["dimension: 4", f"sizes: {len(layers)} {nx} {ny} {nz}", f"space directions: none {dir_text}",
                  "kinds: list domain domain domain"]
    lines = ["NRRD0004", "# Complete NRRD file format specification at:",
             "# http://teem.sourceforge.net/nrrd/format.html", "type: unsigned char",
             header[0], "space: left-posterior-superior", header[1], header[2], header[3],
             "encoding: gzip", f"space origin: {_fmt_vec(origin)}"]
    custom = {"P2SAM_Provenance": dumps_json(provenance, sort_keys=True, ensure_ascii=True)}
    used_ids = set()
    for n, (s, (li, label)) in enumerate(zip(segments, where)):
        sid = _header_text(s.segment_id or "").strip()
        if not sid or sid in used_ids:
            sid = f"Segment_{n + 1}"
            while sid in used_ids:
                sid += "_"
        used_ids.add(sid)
        tags = [_slicer_tag_text(k, v) for k, v in s.tags.items()]
        c = [float(np.clip(v, 0.0, 1.0)) for v in s.color]
        custom.update({
            f"Segment{n}_Color": " ".join(_fmt(v) for v in c),
            f"Segment{n}_ColorAutoGenerated": "0",
            f"Segment{n}_Extent": f"0 {nx - 1} 0 {ny - 1} 0 {nz - 1}",
            f"Segment{n}_ID": sid,
            f"Segment{n}_LabelValue": str(label),
            f"Segment{n}_Layer": str(li),
            f"Segment{n}_Name": _header_text(s.name),
            f"Segment{n}_NameAutoGenerated": "0",
            f"Segment{n}_Tags": "".join(f"{k}:{v}|" for k, v in tags),
        })
    custom["Segmentation_ContainedRepresentationNames"] = "Binary labelmap|"
    custom["Segmentation_ConversionParameters"] = (
        "Reference image geometry|" + reference_geometry_string(reference)
        + "|Image geometry description string determining the geometry of the labelmap that is created in "
          "course of conversion. Can be copied from a volume, using the button.&")
    custom["Segmentation_MasterRepresentation"] = "Binary labelmap"
    custom["Segmentation_ReferenceImageExtentOffset"] = "0 0 0"
    lines += [f"{k}:={v}" for k, v in custom.items()]
    head = ("\n".join(lines) + "\n\n").encode("utf-8")
    with open(tmp, "wb") as f:
        f.write(head)
        f.write(gzip.compress(np.ascontiguousarray(data, dtype=np.uint8).tobytes(), compresslevel=1))


def _write_nifti(tmp: str, tmp_json: str, segments: List[Segment], reference: sitk.Image, provenance: dict) -> None:
    dtype = np.uint8 if len(segments) <= 255 else np.uint16
    labels = np.zeros(sitk.GetArrayViewFromImage(reference).shape, dtype=dtype)
    overlapping = []
    for n, s in enumerate(segments, start=1):
        a = s.array()
        if np.any(labels[a] != 0):
            overlapping.append(s.name)
        labels[a] = n
    if overlapping:
        warnings.warn("NIfTI labelmaps hold one label per voxel: where segments overlap, the later one wins "
                      f"({', '.join(repr(n) for n in overlapping)}); write .seg.nrrd to keep overlaps", stacklevel=3)
    img = sitk.GetImageFromArray(labels)
    img.CopyInformation(reference)
    sitk.WriteImage(img, tmp, useCompression=tmp.endswith(".gz"))
    doc = {"labels": {str(n): {"name": s.name, "color": [float(c) for c in s.color], "segment_id": s.segment_id,
                               "tags": {str(k): str(v) for k, v in s.tags.items()}}
                      for n, s in enumerate(segments, start=1)},
           "provenance": provenance}
    with open(tmp_json, "w", encoding="utf-8") as f:
        f.write(dumps_json(doc, indent=2) + "\n")
