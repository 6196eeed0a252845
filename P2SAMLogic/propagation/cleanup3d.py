"""3D clean-up of per-slice proposals: keep what is consistent with the prior in 3D.

All arrays are ``bool [k, j, i]`` on the follow-up's voxel grid.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage


def ball(radius_vox: Sequence[float]) -> np.ndarray:
    """Ellipsoidal structuring element with per-axis radii ``(rk, rj, ri)`` in voxels."""
    r = [max(0, int(np.floor(v))) for v in radius_vox]
    grids = np.ogrid[tuple(slice(-v, v + 1) for v in r)]
    acc = np.zeros([2 * v + 1 for v in r])
    for g, v in zip(grids, radius_vox):
        acc = acc + (g / max(v, 1e-6)) ** 2 if v > 0 else acc + (g != 0) * 2.0
    return acc <= 1.0


def keep_consistent(mask: np.ndarray, prior: np.ndarray, spacing_kji: Sequence[float],
                    tolerance_mm: float = 5.0) -> np.ndarray:
    """Keep the 3D connected components of ``mask`` that touch ``prior`` grown by ``tolerance_mm``.

    Args:
        mask: proposal, ``bool [k, j, i]``.
        prior: the registered prior structure on the same grid.
        spacing_kji: voxel size in mm along ``k, j, i``.
    Components are 26-connected. When none touches the grown prior, the largest is kept
    (registration put the prior slightly off, but the model found one coherent structure).
    """
    if not mask.any():
        return mask.copy()
    labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    if n == 1:
        return mask.copy()
    radius = [tolerance_mm / max(s, 1e-6) for s in spacing_kji]
    grown = ndimage.binary_dilation(prior, structure=ball(radius)) if prior.any() else prior
    touching = np.unique(labels[grown & mask])
    touching = touching[touching > 0]
    if touching.size == 0:
        sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, n + 1))
        touching = np.array([int(np.argmax(sizes)) + 1])
    return np.isin(labels, touching)


def fill_holes_per_slice(mask: np.ndarray) -> np.ndarray:
    """Fill enclosed holes on every slice ``k`` (2D, in-plane), as a contour would."""
    out = mask.copy()
    for k in np.flatnonzero(mask.reshape(mask.shape[0], -1).any(1)):
        out[k] = ndimage.binary_fill_holes(mask[k])
    return out
