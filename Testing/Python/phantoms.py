"""Small synthetic MR-like studies with known truth, for tests of rings and several-piece structures.

Not anatomy: a textured background, an elliptic "body", and the structures drawn as discs and rings
of distinct intensities (a bright cavity inside a darker wall, as a heart's blood pool inside its
myocardium in cine MR). The follow-up is the same scene with the structures changed (a ring
thickens inward while its cavity shrinks; one piece of two shrinks) and shifted by a few millimetres.
Deterministic for a seed.
"""
from __future__ import annotations

from typing import Dict, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

SHAPE = (6, 96, 96)  # k, j, i
SPACING = (1.5, 1.5, 8.0)  # i, j, k (mm)


def _grid(shift_mm=(0.0, 0.0)):
    yy, xx = np.mgrid[: SHAPE[1], : SHAPE[2]].astype(float)
    return (yy * SPACING[1] - shift_mm[1]), (xx * SPACING[0] - shift_mm[0])


def _disc(cy_mm, cx_mm, r_mm, shift_mm=(0.0, 0.0)):
    y, x = _grid(shift_mm)
    return (y - cy_mm) ** 2 + (x - cx_mm) ** 2 <= r_mm ** 2


def _image(values: np.ndarray) -> sitk.Image:
    img = sitk.GetImageFromArray(values.astype(np.float32))
    img.SetSpacing(SPACING)
    img.SetOrigin((-72.0, -72.0, -20.0))
    return img


def _mask(arr: np.ndarray) -> sitk.Image:
    img = sitk.GetImageFromArray(arr.astype(np.uint8))
    img.SetSpacing(SPACING)
    img.SetOrigin((-72.0, -72.0, -20.0))
    return img


def _scene(labels: Dict[str, Tuple[np.ndarray, float]], seed: int, shift_mm) -> np.ndarray:
    """``[k, j, i]`` float: background texture, an elliptic body, the labelled regions painted in order.

    The texture is the same tissue in prior and follow-up (drawn once per seed, moved with the scene)."""
    y, x = _grid(shift_mm)
    body = ((y - 72.0) / 62.0) ** 2 + ((x - 72.0) / 66.0) ** 2 <= 1.0
    rng = np.random.default_rng(seed)
    texture = ndimage.gaussian_filter(rng.standard_normal(SHAPE), (0, 1.5, 1.5))
    texture = ndimage.shift(texture, (0, shift_mm[1] / SPACING[1], shift_mm[0] / SPACING[0]), order=1, mode="nearest")
    noise = np.random.default_rng([seed, int(abs(shift_mm[0]) * 10 + abs(shift_mm[1]))]).standard_normal(SHAPE)
    vol = np.zeros(SHAPE, dtype=np.float32)
    for k in range(SHAPE[0]):
        sl = np.where(body, 220.0, 20.0) + 25.0 * texture[k]
        for arr, value in labels.values():
            sl = np.where(arr[k], value + 15.0 * texture[k], sl)
        vol[k] = sl + 5.0 * noise[k]
    return ndimage.gaussian_filter(vol, (0, 0.7, 0.7))


def ring_study(seed: int = 0):
    """A wall (ring, 420) around a bright cavity (900): the follow-up's cavity shrinks from 13 to 9 mm
    radius, the wall's outer radius from 21 to 20 mm, everything shifted by (3, -2) mm.

    Returns ``(prior, {"Wall": mask}, followup, {"Wall": truth})``; the wall spans slices 1..4.
    """
    out: Dict[str, Tuple[sitk.Image, sitk.Image]] = {}
    for name, (r_out, r_in, shift) in {"prior": (21.0, 13.0, (0.0, 0.0)), "followup": (20.0, 9.0, (3.0, -2.0))}.items():
        wall = np.zeros(SHAPE, dtype=bool)
        cavity = np.zeros(SHAPE, dtype=bool)
        for k in range(1, 5):
            outer = _disc(70.0, 74.0, r_out, shift)
            inner = _disc(70.0, 74.0, r_in, shift)
            wall[k] = outer & ~inner
            cavity[k] = inner
        img = _image(_scene({"wall": (wall, 420.0), "cavity": (cavity, 900.0)}, seed, shift))
        out[name] = (img, _mask(wall))
    return out["prior"][0], {"Wall": out["prior"][1]}, out["followup"][0], {"Wall": out["followup"][1]}


def two_piece_study(seed: int = 0):
    """One segment of two bright nodules 45 mm apart (850); in the follow-up the second shrinks from 9 to
    6 mm radius and the scene is shifted by (-2, 3) mm. Returns ``(prior, {"Nodes": mask}, followup,
    {"Nodes": truth})``."""
    out = {}
    for name, (r2, shift) in {"prior": (9.0, (0.0, 0.0)), "followup": (6.0, (-2.0, 3.0))}.items():
        nodes = np.zeros(SHAPE, dtype=bool)
        for k in range(1, 5):
            nodes[k] = _disc(50.0, 45.0, 8.0, shift) | _disc(88.0, 95.0, r2, shift)
        img = _image(_scene({"nodes": (nodes, 850.0)}, seed, shift))
        out[name] = (img, _mask(nodes))
    return out["prior"][0], {"Nodes": out["prior"][1]}, out["followup"][0], {"Nodes": out["followup"][1]}


def components(arr: np.ndarray) -> Sequence[np.ndarray]:
    labels, n = ndimage.label(arr, structure=np.ones((3, 3, 3), dtype=bool))
    return [labels == i for i in range(1, n + 1)]
