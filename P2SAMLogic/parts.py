"""Reference features on the feature grid and their part prototypes (k-means++).

Frames: feature maps are ``C x g x g`` (channel-first, grid rows = y, columns = x),
as produced by :meth:`PromptableModel.encode` with the batch axis dropped.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from scipy import ndimage

#: A cell is "inside" the structure when the mask covers more than this fraction of it.
INSIDE_FRACTION = 0.5


@dataclass
class PooledFeatures:
    """Features of a set of grid cells.

    Attributes:
        features: float32 ``N x C`` raw (not normalised) encoder features.
        weights: float32 ``N``, summing to 1 (uniform, or area-weighted in the fallback).
        cells: int ``N x 2`` (row, col) grid indices of the cells.
        fallback: True when no cell was covered by more than half and partly
            covered cells were used instead, weighted by coverage.
    """

    features: torch.Tensor
    weights: torch.Tensor
    cells: np.ndarray
    fallback: bool = False


def foreground_features(features: torch.Tensor, coverage: torch.Tensor) -> PooledFeatures:
    """Features under a mask, given the mask's per-cell coverage.

    Cells covered more than :data:`INSIDE_FRACTION` count, with uniform weights
    (the reference method's patch-centre sampling). A structure too small for
    any such cell falls back to every partly covered cell, weighted by area,
    instead of failing.

    Args:
        features: float ``C x g x g``.
        coverage: float ``g x g`` in ``[0, 1]``.
    """
    inside = coverage > INSIDE_FRACTION
    fallback = not bool(inside.any())
    if fallback:
        inside = coverage > 0
    if not bool(inside.any()):
        raise ValueError("mask covers no feature cell")
    cells = torch.nonzero(inside, as_tuple=False)
    feats = features[:, cells[:, 0], cells[:, 1]].T.contiguous().float()
    if fallback:
        w = coverage[cells[:, 0], cells[:, 1]].float()
    else:
        w = torch.ones(len(cells), dtype=torch.float32, device=features.device)
    return PooledFeatures(feats, (w / w.sum()).to(feats.device), cells.cpu().numpy(), fallback)


def background_features(features: torch.Tensor, coverage: torch.Tensor, valid: torch.Tensor,
                        context: float = 1.0, min_ring: int = 2) -> Optional[PooledFeatures]:
    """Features of the background *around* the structure.

    The region is the structure's bounding box on the grid grown by ``context``
    times its size on each side (at least ``min_ring`` cells), minus every cell
    the mask touches, restricted to ``valid`` (unpadded) cells.

    Returns None when that region is empty (structure fills the image).
    """
    g = coverage.shape[-1]
    touched = (coverage > 0).cpu().numpy()
    rows, cols = np.nonzero(touched)
    r0, r1, c0, c1 = rows.min(), rows.max(), cols.min(), cols.max()
    grow_r = max(min_ring, int(np.ceil(context * (r1 - r0 + 1))))
    grow_c = max(min_ring, int(np.ceil(context * (c1 - c0 + 1))))
    region = np.zeros((g, g), dtype=bool)
    region[max(0, r0 - grow_r): r1 + grow_r + 1, max(0, c0 - grow_c): c1 + grow_c + 1] = True
    region &= ~ndimage.binary_dilation(touched)
    region &= valid.cpu().numpy()
    if not region.any():
        return None
    cells = np.argwhere(region)
    feats = features[:, cells[:, 0], cells[:, 1]].T.contiguous().float()
    w = torch.full((len(cells),), 1.0 / len(cells), dtype=torch.float32, device=feats.device)
    return PooledFeatures(feats, w, cells, False)


def part_prototypes(pooled: PooledFeatures, n_parts: int, seed: int = 0, n_init: int = 10) -> torch.Tensor:
    """Cluster features into ``n_parts`` with k-means++ and return L2-normalised centroids.

    ``n_parts == 1`` is the weighted mean (PerSAM's single prototype). The seed
    is fixed, so the same input always gives the same prototypes.

    Returns:
        float32 ``n x C`` unit vectors, on the features' device; ``n`` may be
        smaller than asked when there are fewer distinct features than parts.
    """
    x = pooled.features
    w = pooled.weights
    if n_parts <= 1 or len(x) <= 1:
        centres = (x * w[:, None]).sum(0, keepdim=True) / w.sum()
    else:
        from sklearn.cluster import KMeans

        xn = x.double().cpu().numpy()
        k = min(n_parts, len(np.unique(xn.round(6), axis=0)))
        if k <= 1:
            centres = (x * w[:, None]).sum(0, keepdim=True) / w.sum()
        else:
            km = KMeans(n_clusters=k, init="k-means++", n_init=n_init, random_state=seed)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                labels = km.fit_predict(xn, sample_weight=w.double().cpu().numpy())
            centres = torch.stack([
                (x[torch.as_tensor(labels == j, device=x.device)] * w[torch.as_tensor(labels == j, device=x.device), None]).sum(0)
                / w[torch.as_tensor(labels == j, device=x.device)].sum()
                for j in range(k) if (labels == j).any()
            ])
    return torch.nn.functional.normalize(centres.float(), dim=1)
