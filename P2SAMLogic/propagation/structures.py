"""Structures that are not one filled blob: decompose before propagation, recompose after.

A box prompt (LiteMedSAM's modality) always asks the model for a filled region: a ring such as
the myocardium, a vessel or bladder wall, or a PTV ring comes back filled, and a structure of
several pieces (lesions, lymph nodes) gets one box around all of them. So each prior structure is
planned first:

* its 3D connected components (26-connected) become **pieces**, each propagated with its own
  references and regions of interest (tiny pieces below ``min_piece_voxels`` stay with the main
  piece nearest to them: they are carried by registration only inside that piece);
* a piece whose slices hold **cavities** (in-plane holes: ``fill_holes(mask) & ~mask`` on at least
  ``min_ring_slice_fraction`` of its slices, with a cavity of at least ``min_cavity_fraction`` of the
  filled area there) is a **ring**: its *outer* region (holes filled, a blob) and its *cavity*
  (the holes, a blob) are propagated separately and the ring is recomposed as
  ``outer & ~cavity``. On slices where the (registered) ring has no cavity (an open "C" at the
  base of the heart, the cap of a shell), the outer blob would be wrong, so those slices keep
  the registered contour (:func:`ring_slices`).

Frames: prior masks are ``sitkUInt8`` images on the prior's grid; arrays are ``bool [k, j, i]``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

#: a component smaller than this (voxels) is not propagated on its own
MIN_PIECE_VOXELS = 20
#: a slice holds a cavity when its holes cover at least this fraction of the filled area
MIN_CAVITY_FRACTION = 0.05
#: a piece is a ring when at least this fraction of its slices hold a cavity
MIN_RING_SLICE_FRACTION = 0.3
#: a recomposed ring keeps a wall of at least this many pixels between its cavity and its outer contour
MIN_WALL_PIXELS = 1


@dataclass
class Part:
    """One blob of a structure, propagated on its own.

    Attributes:
        name: ``"GTV"``, ``"GTV piece 2"``, ``"Myocardium outer"``, ``"Myocardium cavity"``.
        role: ``whole`` (a filled piece), ``outer`` or ``cavity`` (of a ring).
        piece: index of the connected component it belongs to (0 = the largest).
        mask: ``sitkUInt8`` 0/1 on the prior's grid.
    """

    name: str
    role: str
    piece: int
    mask: sitk.Image


@dataclass
class StructurePlan:
    """How one prior structure is propagated: its parts, and what kind of shape it is."""

    name: str
    parts: List[Part]
    pieces: int = 1
    rings: List[int] = field(default_factory=list)  # pieces that are rings

    @property
    def shape(self) -> str:
        """``filled``, ``ring``, ``pieces`` or ``pieces with rings`` (for reports)."""
        if self.pieces > 1:
            return "pieces with rings" if self.rings else "pieces"
        return "ring" if self.rings else "filled"

    def describe(self) -> dict:
        return {"shape": self.shape, "pieces": self.pieces, "rings": list(self.rings),
                "parts": [p.name for p in self.parts]}


def fill_slices(mask: np.ndarray) -> np.ndarray:
    """In-plane hole filling of every slice ``k`` of a ``bool [k, j, i]`` array."""
    out = mask.copy()
    for k in np.flatnonzero(mask.reshape(mask.shape[0], -1).any(1)):
        out[k] = ndimage.binary_fill_holes(mask[k])
    return out


def erode_slices(mask: np.ndarray, pixels: int) -> np.ndarray:
    """In-plane erosion (cross-shaped, ``pixels`` times) of every slice of a ``bool [k, j, i]`` array."""
    if pixels <= 0:
        return mask.copy()
    out = np.zeros_like(mask)
    for k in np.flatnonzero(mask.reshape(mask.shape[0], -1).any(1)):
        out[k] = ndimage.binary_erosion(mask[k], iterations=pixels)
    return out


def cavity_slices(mask: np.ndarray, min_fraction: float = MIN_CAVITY_FRACTION) -> np.ndarray:
    """``bool [K]``: slices whose in-plane holes cover at least ``min_fraction`` of the filled area."""
    filled = fill_slices(mask)
    holes = (filled & ~mask).reshape(mask.shape[0], -1).sum(1)
    area = filled.reshape(mask.shape[0], -1).sum(1)
    return (area > 0) & (holes >= np.maximum(1, min_fraction * area))


def _image(array: np.ndarray, like: sitk.Image) -> sitk.Image:
    img = sitk.GetImageFromArray(array.astype(np.uint8))
    img.CopyInformation(like)
    return img


def plan_structure(name: str, mask: sitk.Image, *, decompose: bool = True,
                   min_piece_voxels: int = MIN_PIECE_VOXELS, min_cavity_fraction: float = MIN_CAVITY_FRACTION,
                   min_ring_slice_fraction: float = MIN_RING_SLICE_FRACTION) -> StructurePlan:
    """Split a prior structure into the blobs to propagate (see the module docstring).

    Args:
        mask: ``sitkUInt8`` on the prior's grid, non-empty.
        decompose: False = one ``whole`` part, as before (for comparisons).
    """
    arr = sitk.GetArrayViewFromImage(mask) > 0
    if not decompose:
        return StructurePlan(name, [Part(name, "whole", 0, mask)])
    labels, n = ndimage.label(arr, structure=np.ones((3, 3, 3), dtype=bool))
    sizes = ndimage.sum_labels(arr, labels, index=np.arange(1, n + 1)) if n else np.zeros(0)
    order = [int(i) + 1 for i in np.argsort(-sizes)]
    big = [lab for lab in order if sizes[lab - 1] >= min_piece_voxels] or order[:1]
    pieces = [labels == lab for lab in big]
    # tiny components join the nearest big piece (so that nothing is dropped)
    small = [lab for lab in order if lab not in big]
    if small and len(pieces) > 1:
        dist = [ndimage.distance_transform_edt(~p) for p in pieces]
        for lab in small:
            where = labels == lab
            nearest = int(np.argmin([float(d[where].min()) for d in dist]))
            pieces[nearest] = pieces[nearest] | where
    elif small:
        pieces[0] = pieces[0] | np.isin(labels, small)
    parts: List[Part] = []
    rings: List[int] = []
    multi = len(pieces) > 1
    for i, piece in enumerate(pieces):
        base = f"{name} piece {i + 1}" if multi else name
        ks = np.flatnonzero(piece.reshape(piece.shape[0], -1).any(1))
        cav = cavity_slices(piece, min_cavity_fraction)
        if ks.size and cav[ks].sum() >= max(1, min_ring_slice_fraction * ks.size):
            outer = fill_slices(piece)
            cavity = outer & ~piece
            rings.append(i)
            parts.append(Part(f"{base} outer", "outer", i, _image(outer, mask)))
            parts.append(Part(f"{base} cavity", "cavity", i, _image(cavity, mask)))
        else:
            parts.append(Part(base, "whole", i, _image(piece, mask)))
    return StructurePlan(name, parts, len(pieces), rings)


def ring_slices(registered_ring: np.ndarray, min_fraction: float = MIN_CAVITY_FRACTION) -> np.ndarray:
    """``bool [K]``: follow-up slices where the registered ring is closed around a cavity (the model's
    outer and cavity blobs are used there; elsewhere the registered ring stays)."""
    return cavity_slices(registered_ring, min_fraction)


def recompose(plan: StructurePlan, results: Dict[str, np.ndarray], registered_parts: Dict[str, np.ndarray],
              registered: np.ndarray, model_slices: Optional[Dict[str, np.ndarray]] = None) -> np.ndarray:
    """The structure on the follow-up grid from its parts' results (``bool [k, j, i]`` each).

    Args:
        results: part name -> the part's propagated mask.
        registered_parts: part name -> the part's registered prior (for rings: where it is closed).
        registered: the whole structure's registered prior (kept on a ring's open slices).
    """
    out = np.zeros(registered.shape, dtype=bool)
    for piece in range(plan.pieces):
        parts = [p for p in plan.parts if p.piece == piece]
        if piece in plan.rings:
            outer = next(p for p in parts if p.role == "outer")
            cavity = next(p for p in parts if p.role == "cavity")
            # the cavity stays inside the outer contour with a wall of at least one pixel
            cavity_inside = results[cavity.name] & erode_slices(results[outer.name], MIN_WALL_PIXELS)
            ring = results[outer.name] & ~cavity_inside
            reg_ring = registered_parts[outer.name] & ~registered_parts[cavity.name]
            closed = ring_slices(reg_ring)
            ring[~closed] = reg_ring[~closed]
            out |= ring
        else:
            out |= results[parts[0].name]
    return out
