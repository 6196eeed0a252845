"""Square regions of interest around a box: the one place that sizes and places them.

A region of interest (ROI) is ``(x0, y0, x1, y1)`` in image pixels (x = column, y = row,
half-open: ``x1``/``y1`` one past the last pixel), float64. Three sizing rules share one
placement (:func:`place_square`):

* :func:`roi_mm` — 3D propagation and click correction: the box's larger side in millimetres
  plus a margin on each side, at least a minimum size (equal millimetres on both axes);
* :func:`roi_context` — 2D search windows, crop passes and click ROIs: the box's larger side
  grown by ``context`` times itself on each side.

Placement keeps the square's size and shifts it to stay inside the image (``clip=False``), or
cuts it at the image border (``clip=True``: the 2D search window, where a shifted window would
move the structure off-centre relative to the reference's).
"""
from __future__ import annotations

import math
from typing import Sequence, Tuple

import numpy as np


def place_square(centre: Sequence[float], size: Tuple[int, int], shape: Tuple[int, int], clip: bool = False
                 ) -> np.ndarray:
    """A ``size = (nx, ny)`` pixel window centred on ``centre = (x, y)`` inside ``shape = (H, W)``."""
    h, w = int(shape[0]), int(shape[1])
    nx, ny = int(size[0]), int(size[1])
    cx, cy = float(centre[0]), float(centre[1])
    if clip:
        x0, y0 = int(np.floor(cx - nx / 2.0)), int(np.floor(cy - ny / 2.0))
        x0, x1 = max(0, x0), min(w, x0 + nx)
        y0, y1 = max(0, y0), min(h, y0 + ny)
        return np.array([x0, y0, x1, y1], dtype=np.float64)
    nx, ny = min(w, nx), min(h, ny)
    x0 = int(np.clip(round(cx - nx / 2.0), 0, w - nx))
    y0 = int(np.clip(round(cy - ny / 2.0), 0, h - ny))
    return np.array([x0, y0, x0 + nx, y0 + ny], dtype=np.float64)


def _centre(box: Sequence[float]) -> Tuple[float, float]:
    return (float(box[0]) + float(box[2])) / 2.0, (float(box[1]) + float(box[3])) / 2.0


def roi_mm(box: Sequence[float], spacing_xy: Sequence[float], margin_mm: float, min_mm: float,
           shape: Tuple[int, int], min_px: int = 32) -> np.ndarray:
    """Square in millimetres around ``box``: its larger side (mm) + ``margin_mm`` per side, at least
    ``min_mm`` and ``min_px`` pixels per axis; shifted to stay inside ``shape`` ``(H, W)``.

    Args:
        spacing_xy: pixel size ``(column, row)`` in mm.
    """
    sx, sy = float(spacing_xy[0]), float(spacing_xy[1])
    side_mm = max((box[2] - box[0]) * sx, (box[3] - box[1]) * sy) + 2.0 * margin_mm
    side_mm = max(side_mm, min_mm)
    nx = max(min_px, int(math.ceil(side_mm / sx)))
    ny = max(min_px, int(math.ceil(side_mm / sy)))
    return place_square(_centre(box), (nx, ny), shape)


def roi_context(box: Sequence[float], shape: Tuple[int, int], context: float, minimum: float = 32.0,
                clip: bool = False) -> np.ndarray:
    """Square around ``box``: its larger side grown by ``context`` times itself on each side, at least
    ``minimum`` pixels; shifted inside ``shape`` (``clip=False``) or cut at its border (``clip=True``)."""
    side = int(math.ceil(max(minimum, max(box[2] - box[0], box[3] - box[1]) * (1.0 + 2.0 * context))))
    return place_square(_centre(box), (side, side), shape, clip=clip)
