"""No-model baselines for the accuracy tests: what a contour gets without looking at the image.

A test that claims to measure the model compares it with one of these on the same input, so that a
model that has learnt nothing fails it (docs/testing.md). All masks are ``bool [H, W]`` (or
``[K, H, W]``, slice by slice), rows = y, columns = x, in the image's pixel frame.
"""
from __future__ import annotations

import numpy as np


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks of one shape (1.0 counts as 0 / max(1, 0))."""
    return 2.0 * float((a & b).sum()) / max(1, int(a.sum()) + int(b.sum()))


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks (1.0 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def _box(mask: np.ndarray):
    ys, xs = np.nonzero(mask)
    return int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1


def filled_box(mask: np.ndarray) -> np.ndarray:
    """The pixels of a 2D mask's bounding box (``[H, W]``), or of each slice's (``[K, H, W]``; empty stays empty)."""
    if mask.ndim == 3:
        return np.stack([filled_box(m) if m.any() else np.zeros_like(m, dtype=bool) for m in mask])
    y0, y1, x0, x1 = _box(mask)
    out = np.zeros(mask.shape, dtype=bool)
    out[y0:y1, x0:x1] = True
    return out


def inscribed_ellipse(mask: np.ndarray) -> np.ndarray:
    """The ellipse inscribed in a 2D mask's bounding box (pixel centres inside it), or in each slice's."""
    if mask.ndim == 3:
        return np.stack([inscribed_ellipse(m) if m.any() else np.zeros_like(m, dtype=bool) for m in mask])
    y0, y1, x0, x1 = _box(mask)
    yy, xx = np.mgrid[: mask.shape[0], : mask.shape[1]]
    cx, cy, a, b = (x0 + x1) / 2.0, (y0 + y1) / 2.0, (x1 - x0) / 2.0, (y1 - y0) / 2.0
    return ((xx + 0.5 - cx) / a) ** 2 + ((yy + 0.5 - cy) / b) ** 2 <= 1.0


def best_box_baseline(prior: np.ndarray, truth: np.ndarray, score=dice) -> float:
    """The better of ``prior``'s filled box and inscribed ellipse, left where ``prior`` is, scored against
    ``truth`` (Dice by default)."""
    return max(score(filled_box(prior), truth), score(inscribed_ellipse(prior), truth))
