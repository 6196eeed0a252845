"""Scoring a predicted mask against the reference: exact Wasserstein distance (POT)."""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch

#: Cap on feature cells per side of one transport problem (deterministic subsample above it).
MAX_CELLS = 200


def _subsample(x: torch.Tensor, w: torch.Tensor, cap: int, seed: int):
    if len(x) <= cap:
        return x, w
    idx = np.random.default_rng(seed).choice(len(x), size=cap, replace=False)
    idx = torch.as_tensor(np.sort(idx), device=x.device)
    ws = w[idx]
    return x[idx], ws / ws.sum()


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
    import ot

    if len(a) == 0 or len(b) == 0:
        return math.inf
    wa = torch.full((len(a),), 1.0 / len(a), device=a.device) if wa is None else wa
    wb = torch.full((len(b),), 1.0 / len(b), device=b.device) if wb is None else wb
    a, wa = _subsample(a, wa, max_cells, 0)
    b, wb = _subsample(b, wb, max_cells, 1)
    a64 = a.double().cpu().numpy()
    b64 = b.double().cpu().numpy()
    cost = ot.dist(a64, b64)  # squared Euclidean
    wa64 = wa.double().cpu().numpy()
    wb64 = wb.double().cpu().numpy()
    return float(ot.emd2(wa64 / wa64.sum(), wb64 / wb64.sum(), cost, numItermax=1_000_000))
