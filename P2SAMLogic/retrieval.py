"""Scoring a predicted mask against the reference: exact Wasserstein distance (POT).

A feature set is prepared once (:func:`prepare_set`: subsampled, float64, squared norms)
and then scored against many others: the reference's foreground and background sets are
prepared once per reference, each candidate's set once for both of its distances.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

#: Cap on feature cells per side of one transport problem (deterministic subsample above it).
MAX_CELLS = 200


@dataclass
class PreparedSet:
    """A weighted feature set ready for transport problems.

    Attributes:
        x: float64 ``N x C`` features (at most ``max_cells`` rows); w: float64 ``N``
        weights summing to 1; sq: float64 ``N`` squared norms of the rows.
    """

    x: np.ndarray
    w: np.ndarray
    sq: np.ndarray

    def __len__(self) -> int:
        return len(self.x)


def prepare_set(x: torch.Tensor, w: Optional[torch.Tensor] = None, max_cells: int = MAX_CELLS,
                seed: int = 0) -> PreparedSet:
    """Subsample (fixed ``seed``, without replacement) a float ``N x C`` set with weights ``N``
    (default uniform) to at most ``max_cells`` rows, renormalise the weights, move to float64 NumPy."""
    x64 = x.detach().double().cpu().numpy()
    w64 = (np.full(len(x64), 1.0 / max(1, len(x64))) if w is None else w.detach().double().cpu().numpy())
    if len(x64) > max_cells:
        idx = np.sort(np.random.default_rng(seed).choice(len(x64), size=max_cells, replace=False))
        x64, w64 = x64[idx], w64[idx]
    total = w64.sum()
    w64 = w64 / total if total > 0 else w64
    x64 = np.ascontiguousarray(x64)
    return PreparedSet(x64, w64, np.einsum("ij,ij->i", x64, x64))


def wasserstein_prepared(a: PreparedSet, b: PreparedSet) -> float:
    """Exact earth mover's distance between two prepared sets (squared Euclidean cost); ``inf`` if one is empty."""
    import ot

    if len(a) == 0 or len(b) == 0:
        return math.inf
    cost = a.sq[:, None] + b.sq[None, :] - 2.0 * (a.x @ b.x.T)
    np.maximum(cost, 0.0, out=cost)
    return float(ot.emd2(a.w, b.w, cost, numItermax=1_000_000))


def wasserstein_distance(a: torch.Tensor, b: torch.Tensor, wa: Optional[torch.Tensor] = None,
                         wb: Optional[torch.Tensor] = None, max_cells: int = MAX_CELLS) -> float:
    """Exact earth mover's distance between two weighted feature sets.

    Cost is the squared Euclidean distance between raw features (``ot.dist``
    default); weights default to uniform. Sets larger than ``max_cells`` are
    subsampled with a fixed seed (the solve is cubic in the set size).

    Args:
        a: float ``N x C``; b: float ``M x C``; wa: ``N``; wb: ``M`` (each summing to 1).
    Returns:
        ``sum_ij T_ij * |a_i - b_j|^2`` for the optimal plan ``T``; ``inf`` if a set is empty.
    """
    if len(a) == 0 or len(b) == 0:
        return math.inf
    return wasserstein_prepared(prepare_set(a, wa, max_cells, 0), prepare_set(b, wb, max_cells, 1))
