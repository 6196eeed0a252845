"""Scoring a predicted mask against the reference: Wasserstein distance, exact (POT) or entropic.

A feature set is prepared once (:func:`prepare_set`: subsampled, float64, squared norms)
and then scored against many others: the reference's foreground and background sets are
prepared once per reference, each candidate's set once for both of its distances.
:func:`gather_sets` builds all candidate sets of one image at once on the features' device and
:func:`wasserstein_scores` scores them together: exactly (POT's network simplex per problem, the
CPU default) or with a batched, debiased log-domain Sinkhorn (the GPU default; :func:`resolve_solver`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from .parts import no_autocast

#: Cap on feature cells per side of one transport problem (deterministic subsample above it).
MAX_CELLS = 200


@dataclass
class PreparedSet:
    """A weighted feature set ready for transport problems.

    Attributes:
        x: float64 ``N x C`` features (at most ``max_cells`` rows); w: float64 ``N``
        weights summing to 1; sq: float64 ``N`` squared norms of the rows.
        on_device: per device, float32 copies and the entropic terms the batched solver caches.
    """

    x: np.ndarray
    w: np.ndarray
    sq: np.ndarray
    on_device: dict = field(default_factory=dict, repr=False, compare=False)

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


# -- all candidates of one image at once ---------------------------------------------------------

#: ``exact``: POT's network simplex per problem on the CPU (float64); ``sinkhorn``: entropic
#: transport in the log domain for all problems of a call in one batched computation on the
#: features' device (float32). ``auto`` picks per device (:func:`resolve_solver`).
TRANSPORT_SOLVERS = ("auto", "exact", "sinkhorn")


def resolve_solver(solver: str, device: torch.device) -> str:
    """``exact`` or ``sinkhorn`` for ``solver`` on ``device``.

    ``auto`` is ``exact`` on the CPU (the batched Sinkhorn needs hundreds of passes over
    ``B x n x m`` cost tensors: ~10x the network simplex's time on 2 CPU cores, see
    docs/speed.md) and ``sinkhorn`` on a GPU (one batched computation instead of a host
    round trip and a CPU solve per problem). The ``P2SAM_TRANSPORT`` environment variable
    (``exact`` / ``sinkhorn``) overrides ``auto``.
    """
    import os

    if solver not in TRANSPORT_SOLVERS:
        raise ValueError(f"unknown transport solver '{solver}'; expected one of {', '.join(TRANSPORT_SOLVERS)}")
    if solver == "auto":
        forced = os.environ.get("P2SAM_TRANSPORT", "").strip().lower()
        if forced in ("exact", "sinkhorn"):
            return forced
        return "exact" if device.type == "cpu" else "sinkhorn"
    return solver


@dataclass
class SetBatch:
    """``B`` weighted feature sets padded to a common size, on one device.

    Attributes:
        x: float32 ``B x P x C`` features (padding rows are zero).
        w: float32 ``B x P`` weights, each row summing to 1 (padding 0; an empty set is all 0).
        sizes: int ``B`` number of real rows per set (host NumPy).
    """

    x: torch.Tensor
    w: torch.Tensor
    sizes: np.ndarray

    def __len__(self) -> int:
        return len(self.x)

    def prepared(self, i: int) -> PreparedSet:
        """Set ``i`` as a float64 host :class:`PreparedSet` (what :func:`prepare_set` would give)."""
        return self.on_host()[i]

    def on_host(self) -> List[PreparedSet]:
        """Every set as a float64 host :class:`PreparedSet`, with one device-to-host transfer."""
        x = self.x.detach().double().cpu().numpy()
        w = self.w.detach().double().cpu().numpy()
        out = []
        for i, n in enumerate(self.sizes):
            x64 = np.ascontiguousarray(x[i, :int(n)])
            w64 = w[i, :int(n)]
            total = w64.sum()
            out.append(PreparedSet(x64, w64 / total if total > 0 else w64, np.einsum("ij,ij->i", x64, x64)))
        return out


@lru_cache(maxsize=4096)
def _subsample_ranks(n: int, max_cells: int, seed: int) -> np.ndarray:
    """The ranks :func:`prepare_set` keeps of a set of ``n`` rows (sorted), or all of them."""
    if n <= max_cells:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_cells, replace=False))


def gather_sets(features: torch.Tensor, cells: torch.Tensor, weights: torch.Tensor, sizes: Sequence[int],
                max_cells: int = MAX_CELLS, seed: int = 0) -> SetBatch:
    """Gather ``B`` cell sets of one feature map into a :class:`SetBatch`, subsampled as :func:`prepare_set`.

    Args:
        features: float ``C x g x g`` (or ``C x G`` flat) feature map.
        cells: bool ``B x G`` (``G = g * g``, raster order): each set's cells.
        weights: float ``B x G`` non-negative cell weights (read where ``cells``).
        sizes: host ints ``B``: ``cells[i].sum()`` (the caller's one host transfer).
        max_cells, seed: a set of ``n > max_cells`` cells keeps the ``n``-dependent random subset
            of ranks that :func:`prepare_set` keeps (``numpy.random.default_rng(seed)``), so both
            paths solve exactly the same problems.
    Returns:
        the sets, ``P = min(max_cells, max(sizes))`` rows each, weights renormalised per set.
    """
    dev = features.device
    flat = features.reshape(features.shape[0], -1)
    b, big_g = cells.shape
    sizes = np.asarray(sizes, dtype=np.int64)
    kept = np.minimum(sizes, max_cells)
    p = max(1, int(kept.max()) if len(kept) else 1)
    keep = cells
    if (sizes > max_cells).any():  # rank of every cell within its set, then the kept ranks' lookup table
        table = np.zeros((b, int(sizes.max())), dtype=bool)
        for i, n in enumerate(sizes):
            table[i, _subsample_ranks(int(n), max_cells, seed)] = True
        rank = (torch.cumsum(cells.long(), 1) - 1).clamp_(min=0)
        keep = cells & torch.as_tensor(table, device=dev).gather(1, rank.clamp_(max=table.shape[1] - 1))
    pos = torch.arange(big_g, device=dev)
    order = torch.where(keep, pos, pos + big_g).sort(1).values[:, :p]  # kept cells first, raster order
    valid = order < big_g
    idx = torch.where(valid, order, torch.zeros_like(order))
    x = flat.T.float()[idx] * valid[..., None]
    w = weights.float().gather(1, idx) * valid
    w = w / w.sum(1, keepdim=True).clamp(min=1e-30)
    return SetBatch(x, w, kept)


#: Sinkhorn: the regularisation epsilon is ``SINKHORN_EPS`` times the reference foreground's mean
#: squared distance between its own features (one absolute epsilon per reference, so that every
#: candidate's scores are comparable); it decreases geometrically from ``SINKHORN_EPS_START`` times
#: that scale over ``SINKHORN_LEVELS`` levels, ``SINKHORN_STEPS`` sweeps per level and
#: ``SINKHORN_FINAL`` at the last. Chosen by measurement on the 2D benchmark's candidates (docs/speed.md).
SINKHORN_EPS = 2e-3
SINKHORN_EPS_START = 1.0
SINKHORN_LEVELS = 10
SINKHORN_STEPS = 4
SINKHORN_FINAL = 30


def _schedule(scale: float) -> List[Tuple[float, int]]:
    """``(epsilon, sweeps)`` pairs of the epsilon-scaling schedule for a cost scale."""
    levels = max(1, int(SINKHORN_LEVELS))
    eps = np.geomspace(SINKHORN_EPS_START * scale, SINKHORN_EPS * scale, levels) if levels > 1 else [SINKHORN_EPS * scale]
    return [(float(e), int(SINKHORN_STEPS)) for e in eps[:-1]] + [(float(eps[-1]), int(SINKHORN_FINAL))]


def _sqdist_batch(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances ``B x n x m`` between ``B x n x C`` and ``B x m x C`` (clamped at 0)."""
    d = torch.matmul(x, y.transpose(1, 2)).mul_(-2.0)
    d.add_((x * x).sum(-1)[:, :, None]).add_((y * y).sum(-1)[:, None, :])
    return d.clamp_(min=0.0)


def sinkhorn_ot(cost: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                schedule: Sequence[Tuple[float, int]]) -> torch.Tensor:
    """Entropic optimal-transport values ``OT_eps(a, b)`` of ``B`` problems, log-domain Sinkhorn.

    Epsilon scaling with warm-started dual potentials ``f, g`` and a fixed number of sweeps
    (no convergence test, so no host synchronisation). Returns the dual value
    ``<f, a> + <g, b>`` after a final column update (whose marginal is then exact).

    Args:
        cost: float ``B x n x m``; a: ``B x n`` and b: ``B x m`` weights, each row summing to 1
            (zero entries are padding and carry no mass).
        schedule: ``(epsilon, sweeps)`` pairs, the last epsilon being the regularisation.
    Returns:
        float ``B``.
    """
    la, lb = torch.log(a), torch.log(b)  # -inf on padding
    f = torch.zeros_like(a)
    g = torch.zeros_like(b)
    for e, n in schedule:
        for _ in range(n):
            f = -e * torch.logsumexp((g[:, None, :] - cost) / e + lb[:, None, :], dim=2)
            g = -e * torch.logsumexp((f[:, :, None] - cost) / e + la[:, :, None], dim=1)
    return torch.where(a > 0, f * a, torch.zeros_like(f)).sum(1) + torch.where(b > 0, g * b, torch.zeros_like(g)).sum(1)


def _reference_terms(s: PreparedSet, device: torch.device, scale: Optional[float] = None) -> dict:
    """A prepared set on ``device`` with its cost scale and its entropic self-transport (cached on the set).

    ``x``, ``w``: float32 tensors; ``scale``: its mean squared distance between its own features
    (``sum_ij w_i w_j |x_i - x_j|^2``); ``self``: ``{epsilon scale: OT_eps(w, w)}``.
    """
    key = str(device)
    if key not in s.on_device:
        x = torch.as_tensor(s.x, dtype=torch.float32, device=device)
        w = torch.as_tensor(s.w, dtype=torch.float32, device=device)
        c = _sqdist_batch(x[None], x[None])[0]
        s.on_device[key] = {"x": x, "w": w, "cost": c, "scale": float(w @ c @ w), "self": {}}
    d = s.on_device[key]
    if scale is not None and scale not in d["self"]:
        d["self"][scale] = sinkhorn_ot(d["cost"][None], d["w"][None], d["w"][None], _schedule(scale))[0]
    return d


def sinkhorn_divergences(sets: SetBatch, refs: Sequence[PreparedSet]) -> torch.Tensor:
    """Debiased Sinkhorn divergences of every set to every reference set, one batched computation.

    ``S(a, b) = OT_eps(a, b) - OT_eps(a, a) / 2 - OT_eps(b, b) / 2`` (Feydy et al. 2019): the
    entropic bias of ``OT_eps`` largely cancels, so ``S`` orders candidates like the exact
    Wasserstein distance (measured: docs/speed.md) at an epsilon large enough for few sweeps.
    The cross problems of all references and the sets' self problems run as one batch of
    ``B * (R + 1)`` problems padded to a common size; the references' self terms are cached.

    Args:
        sets: ``B`` candidate sets (empty sets give meaningless values: mask them).
        refs: ``R`` reference sets; the first one's cost scale sets epsilon.
    Returns:
        float32 ``R x B`` on the sets' device.
    """
    dev = sets.x.device
    scale = _reference_terms(refs[0], dev)["scale"]
    terms = [_reference_terms(r, dev, scale) for r in refs]
    b, p, ch = sets.x.shape
    k = max([p] + [len(r) for r in refs])

    def pad(x: torch.Tensor, w: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        extra = k - x.shape[-2]
        if extra == 0:
            return x, w
        return (torch.nn.functional.pad(x, (0, 0, 0, extra)), torch.nn.functional.pad(w, (0, extra)))

    wx = torch.where(torch.as_tensor(sets.sizes > 0, device=dev)[:, None], sets.w,
                     torch.full_like(sets.w, 1.0 / p))  # empty sets: any finite problem
    x, wx = pad(sets.x, wx)
    ys = [pad(t["x"], t["w"]) for t in terms]
    left = torch.cat([x] * (len(refs) + 1))
    wl = torch.cat([wx] * (len(refs) + 1))
    right = torch.cat([y.expand(b, k, ch) for y, _ in ys] + [x])
    wr = torch.cat([w.expand(b, k) for _, w in ys] + [wx])
    ot = sinkhorn_ot(_sqdist_batch(left, right), wl, wr, _schedule(scale)).view(len(refs) + 1, b)
    self_ref = torch.stack([t["self"][scale] for t in terms])[:, None]
    return ot[:-1] - 0.5 * ot[-1:] - 0.5 * self_ref


def wasserstein_scores(sets: SetBatch, refs: Sequence[Optional[PreparedSet]], solver: str = "exact") -> np.ndarray:
    """Distances of every set in ``sets`` to each reference set (squared-Euclidean cost).

    ``exact``: :func:`wasserstein_prepared` per problem (today's numbers, to rounding);
    ``sinkhorn``: :func:`sinkhorn_divergences`, all problems in one batched computation on the
    sets' device and one host transfer. Empty sets, and references that are None or empty,
    give ``inf``.

    Returns:
        float64 ``R x B`` (host).
    """
    out = np.full((len(refs), len(sets)), math.inf)
    nonempty = np.flatnonzero(sets.sizes > 0)
    live = [i for i, r in enumerate(refs) if r is not None and len(r) > 0]
    if not live or len(nonempty) == 0:
        return out
    if solver == "exact":
        host = sets.on_host()
        for i in nonempty:
            mine = host[int(i)]
            for r in live:
                out[r, i] = wasserstein_prepared(mine, refs[r])
        return out
    if solver != "sinkhorn":
        raise ValueError(f"unknown transport solver '{solver}'; expected exact or sinkhorn")
    with no_autocast(sets.x.device):
        d = sinkhorn_divergences(sets, [refs[r] for r in live]).double().cpu().numpy()
    for j, r in enumerate(live):
        out[r, nonempty] = d[j, nonempty]
    return out
