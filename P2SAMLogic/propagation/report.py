"""QA outputs of a propagation: the JSON report and a PNG overlay montage.

The montage shows follow-up slices (ROI crops, intensity-windowed) with the proposed
contour in the segment's colour and the registered prior contour in white (dotted): the
flagged slices first (of every segment), then the others (those with a contour first), each tile captioned
with the segment, the slice and where its contour came from (:func:`slice_origin`).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ..io.outputs import dumps_json, write_text_atomic
from ..io.intensity import choose_window
from ..io.volume import guess_modality

PathLike = Union[str, Path]


def write_report(path: PathLike, result, extra: Optional[dict] = None) -> None:
    """Write ``result.report_dict()`` (+ ``extra``) as JSON, atomically."""
    d = result.report_dict()
    if extra:
        d.update(extra)
    write_text_atomic(path, dumps_json(d, indent=2))


#: :func:`slice_origin`'s words, by what happened on the slice
ORIGIN_MODEL = "model"
ORIGIN_MIXED = "model and registration"
ORIGIN_NOT_TRUSTED = "registration (model not trusted)"
ORIGIN_AGREES = "registration (model agrees)"
ORIGIN_REGISTRATION = "registration"
ORIGIN_ABSENT = "absent"


def slice_origin(s) -> str:
    """Where the contour on one slice came from, in a planner's words.

    Args:
        s: a :class:`P2SAMLogic.propagate.SliceReport` (uses ``source``, ``flagged``, ``reason``,
            ``agreement``).

    Returns:
        ``"model"`` (the model's proposal), ``"model and registration"`` (a structure of several
        parts whose parts differ), ``"registration (model not trusted)"`` (the registered contour was
        kept and the model disagrees: the slice is flagged), ``"registration (model agrees)"`` (kept,
        and the model's proposal confirms it), ``"registration"`` (kept; no model opinion counts
        here, e.g. ``--method deformable`` or a ring's registered outer contour) or ``"absent"``
        (no contour on this slice).
    """
    if s.source == "model":
        return ORIGIN_MODEL
    if s.source == "mixed":
        return ORIGIN_MIXED
    if s.source == "absent" or s.status == "rejected":
        return ORIGIN_ABSENT
    if "model not trusted" in s.reason:
        return ORIGIN_NOT_TRUSTED
    if "proposal agrees" in s.reason:
        return ORIGIN_AGREES
    return ORIGIN_REGISTRATION


def montage_slices(reports: Sequence, max_tiles: int = 16) -> List[Tuple[int, object]]:
    """The slices the montage shows, in its order: ``[(segment position in reports, SliceReport)]``.

    Each segment gets ``max(1, max_tiles // len(reports))`` tiles: its flagged slices first, the rest
    filled with its other slices that have a contour, evenly spread, then (if room is left) empty ones. The montage then lists the flagged tiles of every
    segment first, then the others (each group by segment, then slice index).
    """
    per_seg = max(1, max_tiles // max(1, len(reports)))
    flagged_tiles: List[Tuple[int, object]] = []
    other_tiles: List[Tuple[int, object]] = []
    for n, rep in enumerate(reports):
        slices = list(rep.slices)
        flagged = [s for s in slices if s.flagged]
        pick = flagged[:per_seg]
        # then the unflagged slices with a contour, evenly spread; empty ones only if room is left
        for rest in ([s for s in slices if not s.flagged and s.status == "accepted"],
                     [s for s in slices if not s.flagged and s.status != "accepted"]):
            if len(pick) < per_seg and rest:
                idx = np.linspace(0, len(rest) - 1, min(len(rest), per_seg - len(pick))).round().astype(int)
                pick += [rest[i] for i in sorted(set(idx))]
        pick.sort(key=lambda s: s.index)
        flagged_tiles += [(n, s) for s in pick if s.flagged]
        other_tiles += [(n, s) for s in pick if not s.flagged]
    return flagged_tiles + other_tiles


def _outline(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask)


def _tile(gray: np.ndarray, proposal: np.ndarray, prior: np.ndarray, color: Tuple[float, float, float],
          size: int) -> np.ndarray:
    """``size x size x 3`` uint8 tile: grey crop, prior contour dotted white, proposal in ``color``."""
    h, w = gray.shape
    scale = size / float(max(h, w))
    nh, nw = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
    rows = np.minimum((np.arange(nh) / scale).astype(int), h - 1)
    cols = np.minimum((np.arange(nw) / scale).astype(int), w - 1)
    g = gray[rows][:, cols]
    rgb = np.repeat(g[:, :, None], 3, axis=2).astype(np.uint8)
    p = _outline(prior[rows][:, cols])
    dots = (np.add.outer(np.arange(nh), np.arange(nw)) // 2) % 2 == 0
    rgb[p & dots] = (255, 255, 255)
    q = ndimage.binary_dilation(_outline(proposal[rows][:, cols]))
    rgb[q] = tuple(int(255 * c) for c in color)
    out = np.zeros((size, size, 3), dtype=np.uint8)
    out[:nh, :nw] = rgb
    return out


def _crop(slices, masks: np.ndarray, shape) -> Optional[Tuple[int, int, int, int]]:
    """One crop ``(y0, y1, x0, x1)`` for a segment's tiles: the union of its slices' ROI windows, else of
    ``masks`` (``bool [k, j, i]``) with a 20-pixel margin; None when there is nothing to show."""
    boxes = [s.window for s in slices if s.window]
    if boxes:
        b = np.array(boxes)
        return int(b[:, 1].min()), int(b[:, 3].max()), int(b[:, 0].min()), int(b[:, 2].max())
    ys, xs = np.nonzero(masks.any(0))
    if ys.size == 0:
        return None
    pad = 20
    return (max(0, ys.min() - pad), min(shape[1], ys.max() + pad + 1),
            max(0, xs.min() - pad), min(shape[2], xs.max() + pad + 1))


def overlay_montage(followup: sitk.Image, result, max_tiles: int = 16, tile: int = 192,
                    window: Optional[Tuple[float, float]] = None) -> np.ndarray:
    """The montage as an ``H x W x 3`` uint8 array (see the module docstring)."""
    from PIL import Image, ImageDraw

    arr = sitk.GetArrayViewFromImage(followup)
    mod = guess_modality(followup)
    win = choose_window(followup, mod, window)
    tiles: List[Tuple[np.ndarray, str, str, bool]] = []
    crops = {}
    for n, s in montage_slices(result.reports, max_tiles):
        seg, reg, rep = result.segments[n], result.registered_prior[n], result.reports[n]
        prop = sitk.GetArrayViewFromImage(seg.mask).astype(bool)
        prior = sitk.GetArrayViewFromImage(reg.mask).astype(bool)
        if n not in crops:
            crops[n] = _crop(rep.slices, prop | prior, arr.shape)
        if crops[n] is None:
            continue
        y0, y1, x0, x1 = crops[n]
        k = s.index
        t = _tile(win.to_uint8(np.asarray(arr[k, y0:y1, x0:x1])), prop[k, y0:y1, x0:x1],
                  prior[k, y0:y1, x0:x1], seg.color, tile)
        qa = "" if not math.isfinite(s.qa) else f"  qa {s.qa:.2f}"
        tiles.append((t, f"{seg.name} k={k}{qa}", slice_origin(s), s.flagged))
    if not tiles:
        tiles.append((np.zeros((tile, tile, 3), np.uint8), "no slice processed", "", False))
    ncol = min(4, len(tiles))
    nrow = int(math.ceil(len(tiles) / ncol))
    cap = 28
    canvas = Image.new("RGB", (ncol * (tile + 4), nrow * (tile + cap + 4) + 20), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 4), "P2SAM proposal (colour) vs registered prior (white dots) - UNREVIEWED PROPOSAL",
              fill=(255, 255, 0))
    for n, (t, label, origin, flag) in enumerate(tiles):
        r, c = divmod(n, ncol)
        x, y = c * (tile + 4), 20 + r * (tile + cap + 4)
        canvas.paste(Image.fromarray(t), (x, y + cap))
        colour = (255, 80, 80) if flag else (220, 220, 220)
        draw.text((x + 2, y + 2), label + ("  REVIEW" if flag else ""), fill=colour)
        draw.text((x + 2, y + 14), origin, fill=colour)
        if flag:
            draw.rectangle([x, y + cap, x + tile - 1, y + cap + tile - 1], outline=(255, 80, 80))
    return np.asarray(canvas)
