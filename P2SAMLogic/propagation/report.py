"""QA outputs of a propagation: the JSON report and a PNG overlay montage.

The montage shows follow-up slices (ROI crops, intensity-windowed) with the proposed
contour in the segment's colour and the rigidly registered prior contour in white
(dotted), one tile per processed slice (flagged slices first, then evenly spread).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import List, Optional, Tuple, Union

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


def overlay_montage(followup: sitk.Image, result, max_tiles: int = 16, tile: int = 192,
                    window: Optional[Tuple[float, float]] = None) -> np.ndarray:
    """The montage as an ``H x W x 3`` uint8 array (see the module docstring)."""
    from PIL import Image, ImageDraw

    arr = sitk.GetArrayViewFromImage(followup)
    mod = guess_modality(followup)
    win = choose_window(followup, mod, window)
    tiles: List[Tuple[np.ndarray, str, bool]] = []
    per_seg = max(1, max_tiles // max(1, len(result.reports)))
    for seg, reg, rep in zip(result.segments, result.registered_prior, result.reports):
        prop = sitk.GetArrayViewFromImage(seg.mask).astype(bool)
        prior = sitk.GetArrayViewFromImage(reg.mask).astype(bool)
        slices = list(rep.slices)
        if not slices:
            continue
        flagged = [s for s in slices if s.flagged]
        rest = [s for s in slices if not s.flagged]
        pick = flagged[:per_seg]
        if len(pick) < per_seg and rest:
            idx = np.linspace(0, len(rest) - 1, min(len(rest), per_seg - len(pick))).round().astype(int)
            pick += [rest[i] for i in sorted(set(idx))]
        pick.sort(key=lambda s: s.index)
        # one crop for the segment: union of its windows (or of the masks)
        boxes = [s.window for s in slices if s.window]
        if boxes:
            b = np.array(boxes)
            x0, y0, x1, y1 = int(b[:, 0].min()), int(b[:, 1].min()), int(b[:, 2].max()), int(b[:, 3].max())
        else:
            both = (prop | prior).any(0)
            ys, xs = np.nonzero(both)
            if ys.size == 0:
                continue
            pad = 20
            y0, y1 = max(0, ys.min() - pad), min(arr.shape[1], ys.max() + pad + 1)
            x0, x1 = max(0, xs.min() - pad), min(arr.shape[2], xs.max() + pad + 1)
        for s in pick:
            k = s.index
            t = _tile(win.to_uint8(np.asarray(arr[k, y0:y1, x0:x1])), prop[k, y0:y1, x0:x1],
                      prior[k, y0:y1, x0:x1], seg.color, tile)
            qa = "" if not math.isfinite(s.qa) else f" qa {s.qa:.2f}"
            label = f"{seg.name} k={k} {s.status[:3]}{qa}"
            tiles.append((t, label, s.flagged))
    if not tiles:
        tiles.append((np.zeros((tile, tile, 3), np.uint8), "no slice processed", False))
    ncol = min(4, len(tiles))
    nrow = int(math.ceil(len(tiles) / ncol))
    cap = 16
    canvas = Image.new("RGB", (ncol * (tile + 4), nrow * (tile + cap + 4) + 20), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 4), "P2SAM proposal (colour) vs registered prior (white dots) - UNREVIEWED PROPOSAL",
              fill=(255, 255, 0))
    for n, (t, label, flag) in enumerate(tiles):
        r, c = divmod(n, ncol)
        x, y = c * (tile + 4), 20 + r * (tile + cap + 4)
        canvas.paste(Image.fromarray(t), (x, y + cap))
        draw.text((x + 2, y + 2), label + ("  REVIEW" if flag else ""), fill=(255, 80, 80) if flag else (220, 220, 220))
        if flag:
            draw.rectangle([x, y + cap, x + tile - 1, y + cap + tile - 1], outline=(255, 80, 80))
    return np.asarray(canvas)
