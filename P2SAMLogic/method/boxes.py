"""Boxes of masks and the feature-grid regions a box is decoded on.

Boxes are ``(x0, y0, x1, y1)`` float in original-image pixels (``x1``, ``y1`` exclusive); grid regions
``(row0, row1, col0, col1)`` half-open, in feature cells.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np

from ..models.base import Embedding


def mask_box(mask: np.ndarray) -> Optional[np.ndarray]:
    """``(x0, y0, x1, y1)`` float box of a bool ``H x W`` mask (x1 = last column + 1), None if empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=np.float64)


def box_region(emb: Embedding, box: Sequence[float], grow: float = 0.5, minimum: int = 16) -> Tuple[int, int, int, int]:
    """Feature-grid region ``(row0, row1, col0, col1)`` (half-open) to decode a box on: the box
    (original pixels) grown by ``grow`` times its size per side (at least 2 cells), at least
    ``minimum`` cells per side, inside the grid."""
    g = emb.grid
    stride = emb.frame.input_size / g
    x0, y0, x1, y1 = emb.frame.to_model(np.asarray(box, dtype=np.float64)) / stride
    grow_x, grow_y = max(2.0, grow * (x1 - x0)), max(2.0, grow * (y1 - y0))
    c0, c1 = int(np.floor(x0 - grow_x)), int(np.ceil(x1 + grow_x))
    r0, r1 = int(np.floor(y0 - grow_y)), int(np.ceil(y1 + grow_y))
    minimum = min(minimum, g)

    def span(a: int, b: int) -> Tuple[int, int]:
        if b - a < minimum:
            pad = minimum - (b - a)
            a, b = a - pad // 2, b + pad - pad // 2
        a, b = max(0, a), min(g, b)
        if b - a < minimum:
            a, b = (0, minimum) if a == 0 else (g - minimum, g)
        return a, b

    r0, r1 = span(r0, r1)
    c0, c1 = span(c0, c1)
    return r0, r1, c0, c1


def union_region(a: Tuple[int, int, int, int], b: Tuple[int, int, int, int]) -> Tuple[int, int, int, int]:
    """The smallest ``(row0, row1, col0, col1)`` region holding both regions."""
    return min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3])


def _area(r: Tuple[int, int, int, int]) -> int:
    return (r[1] - r[0]) * (r[3] - r[2])


def _box_around(centre: np.ndarray, size: Tuple[float, float], shape: Tuple[int, int]) -> np.ndarray:
    w, h = size
    x0 = np.clip(centre[0] - w / 2.0, 0, shape[1] - 1)
    y0 = np.clip(centre[1] - h / 2.0, 0, shape[0] - 1)
    x1 = np.clip(centre[0] + w / 2.0, x0 + 1, shape[1])
    y1 = np.clip(centre[1] + h / 2.0, y0 + 1, shape[0])
    return np.array([x0, y0, x1, y1])
