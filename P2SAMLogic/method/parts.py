"""Reference features on the feature grid and their part prototypes (k-means++).

Frames: feature maps are ``C x g x g`` (channel-first, grid rows = y, columns = x),
as produced by :meth:`PromptableModel.encode` with the batch axis dropped.
"""
from __future__ import annotations

import math
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Dict, Iterator, Optional, Sequence, Tuple, Union

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


def foreground_cells(coverage: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`foreground_features`' cell choice for ``B`` masks at once, without leaving the device.

    Args:
        coverage: float ``B x g x g`` in ``[0, 1]``.
    Returns:
        ``(cells, weights)``: bool ``B x G`` and float32 ``B x G`` (``G = g * g``, raster order):
        the cells covered more than :data:`INSIDE_FRACTION` with weight 1, or, for a mask with no
        such cell, every partly covered cell weighted by its coverage (not normalised).
    """
    cov = coverage.reshape(len(coverage), -1).float()
    inside = cov > INSIDE_FRACTION
    has = inside.any(1, keepdim=True)
    cells = torch.where(has, inside, cov > 0)
    return cells, torch.where(has, inside.float(), cov) * cells


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


#: Feature cells clustered at most: larger sets are clustered on a bounded, area-weighted subsample
#: (:func:`weighted_subsample`) and the result is fitted to every cell with one final Lloyd step,
#: so the cost of k-means no longer grows with the structure's size.
MAX_CLUSTER_POINTS = 512

#: ``torch``: batched k-means++ on the features' device (:func:`kmeans_batched`); ``sklearn``:
#: scikit-learn's KMeans on the CPU, one fit per part count (the former path, for comparisons).
KMEANS_BACKENDS = ("torch", "sklearn")


@contextmanager
def cpu_threads(device: torch.device, n: int = 1) -> Iterator[None]:
    """Run the block with ``n`` torch threads when ``device`` is the CPU (restored afterwards).

    k-means' tensors are small (hundreds of rows): on the shared 2-core development machine two
    threads made it 10x slower in wall time than one (threads waiting at every operation's
    barrier for a core another process holds; docs/speed.md), and one is never much slower.
    """
    before = torch.get_num_threads()
    if device.type != "cpu" or before == n:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def no_autocast(device: torch.device):
    """A context that switches off any autocast a caller opened on ``device``'s type: clustering,
    matching and retrieval run in float32 (only the image encoder may run in bf16)."""
    if device.type in ("cuda", "cpu"):
        return torch.autocast(device.type, enabled=False)
    return nullcontext()


@dataclass
class KMeansFit:
    """The best of the restarts for one part count.

    Attributes:
        centres: float32 ``k x C`` raw (not normalised) centroids: the weighted means of the
            points labelled with them (empty clusters dropped, so ``k`` may be smaller than asked).
        labels: int64 ``N``: each point's centroid (index into ``centres``).
        inertia: ``sum_i w_i |x_i - c_{label_i}|^2`` over all ``N`` points (float64 on the host).
        n_iter: Lloyd iterations of the winning restart.
    """

    centres: torch.Tensor
    labels: torch.Tensor
    inertia: float
    n_iter: int


def weighted_subsample(weights: torch.Tensor, size: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """A deterministic, area-weighted subsample of at most ``size`` points (systematic sampling).

    ``size`` equally spaced positions along the cumulative weights pick the points (in their
    given order, which for feature cells is raster order, so the sample spreads over the
    structure); a point picked several times (weight above ``1 / size``) is kept once with the
    multiplicity as its weight. The subsample's weights therefore estimate the full set's.

    Args:
        weights: float ``N``, non-negative, not all zero.
        size: the most points to keep (``>= 1``).
    Returns:
        ``(index, weight)``: int64 indices into the set (sorted, unique) and their float32
        weights (summing to 1), both on ``weights``' device.
    """
    w = weights.double()
    cum = torch.cumsum(w / w.sum(), 0)
    pos = (torch.arange(size, dtype=torch.float64, device=w.device) + 0.5) / size
    idx = torch.searchsorted(cum, pos).clamp_(max=len(w) - 1)
    idx, counts = torch.unique(idx, return_counts=True)
    return idx, (counts.float() / counts.sum())


def _sqdist(x: torch.Tensor, xsq: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Squared distances of ``N x C`` points to ``B x K x C`` centres: ``B x N x K`` (clamped at 0).

    One ``N x C`` by ``C x BK`` matrix product for all centres of all runs."""
    b, k, ch = c.shape
    d = (x @ c.reshape(b * k, ch).T).view(len(x), b, k).permute(1, 0, 2).mul(-2.0)
    d.add_(xsq[None, :, None]).add_((c * c).sum(-1)[:, None, :])
    return d.clamp_(min=0.0)


def _seeding_draws(ks: Sequence[int], n_init: int, seed: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Uniform draws of the k-means++ seeding of every run, made on the CPU.

    Run ``(k, r)`` (part count ``k``, restart ``r``) draws from its own generator seeded by
    ``(seed, k, r)``: a run's seeding does not depend on which other runs share its batch, nor
    on the device. Returns ``b`` first-centre draws and ``b x (kmax - 1) x t`` draws for the later
    centres (``t = 2 + log kmax`` candidates per step; a run with fewer candidates, as
    scikit-learn gives ``2 + log k``, repeats its first one).
    """
    kmax = max(ks)
    tmax = 2 + int(math.log(kmax))
    first, steps = [], []
    for k in ks:
        t = 2 + int(math.log(k))
        for r in range(n_init):
            g = torch.Generator().manual_seed((int(seed) * 1_000_003 + k * 10_007 + r) % (2 ** 63))
            u = torch.rand(1 + (k - 1) * t, generator=g, dtype=torch.float64)
            first.append(u[0])
            step = torch.zeros((kmax - 1, tmax), dtype=torch.float64)
            if k > 1:
                step[: k - 1, :t] = u[1:].view(k - 1, t)
                step[: k - 1, t:] = step[: k - 1, :1]
            steps.append(step)
    return torch.stack(first), torch.stack(steps)


def _sample(p: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF sampling: ``b x n`` non-negative weights, ``b x t`` uniforms in ``[0, 1)`` → ``b x t`` indices."""
    cum = torch.cumsum(p.double(), 1)
    return torch.searchsorted(cum, u * cum[:, -1:], right=True).clamp_(max=p.shape[1] - 1)


def kmeans_batched(x: torch.Tensor, w: torch.Tensor, counts: Sequence[int], n_init: int = 10, seed: int = 0,
                   max_iter: int = 300, tol: float = 1e-4,
                   max_points: Optional[int] = MAX_CLUSTER_POINTS) -> Dict[int, KMeansFit]:
    """Weighted k-means++ with restarts for several part counts in one batched computation.

    Every (part count, restart) pair is one run of a batch of ``len(counts) * n_init`` runs
    that share each tensor operation, on ``x``'s device (a GPU runs the whole search as a
    few dozen kernels per Lloyd iteration, with one host synchronisation per iteration).
    Each run is scikit-learn's algorithm: greedy k-means++ seeding weighted by ``w``
    (``2 + log k`` candidate centres per step, the one that lowers the potential most is
    kept), then Lloyd iterations until the centres move less than ``tol`` times the mean
    per-feature variance (squared shift summed over centres) or ``max_iter``; an empty
    cluster keeps its centre. For each part count the restart with the lowest inertia wins.
    Deterministic for a ``seed``: the seeding's random draws are made on the CPU per run
    (:func:`_seeding_draws`), so a run gives the same result whatever shares its batch, and
    the same draws on every device.

    Sets larger than ``max_points`` are clustered on :func:`weighted_subsample`; the winner is
    then fitted to all points with one more assignment and weighted-mean step.

    Args:
        x: float ``N x C`` features (any float dtype; computed in float32).
        w: float ``N`` non-negative weights (any scale).
        counts: part counts ``k >= 1`` (``k`` above the number of distinct points gives
            fewer centres, see :class:`KMeansFit`).
    Returns:
        ``{k: KMeansFit}`` for every distinct ``k`` in ``counts``.
    """
    ks = sorted({int(k) for k in counts})
    if not ks or ks[0] < 1:
        raise ValueError(f"part counts must be >= 1, got {list(counts)}")
    if len(x) == 0:
        raise ValueError("cannot cluster an empty feature set")
    x_all = x.float()
    w_all = w.float().to(x_all.device)
    if max_points is not None and len(x_all) > max_points:
        idx, ws = weighted_subsample(w_all, max_points)
        xs, ws = x_all[idx], ws
    else:
        xs, ws = x_all, w_all / w_all.sum()
    dev = xs.device
    n, kmax = len(xs), ks[-1]
    k_of_run = torch.tensor([k for k in ks for _ in range(n_init)], device=dev)
    b = len(k_of_run)
    rows = torch.arange(b, device=dev)
    xsq = (xs * xs).sum(1)
    first_u, step_u = _seeding_draws(ks, n_init, seed)
    first_u, step_u = first_u.to(dev), step_u.to(dev)

    # greedy k-means++ seeding, all runs at once
    first = _sample(ws.expand(b, n), first_u[:, None])[:, 0]
    centres = xs.new_zeros((b, kmax, xs.shape[1]))
    centres[:, 0] = xs[first]
    closest = _sqdist(xs, xsq, centres[:, :1])[..., 0]  # b x n
    for j in range(1, kmax):
        p = closest * ws
        p = torch.where(p.sum(1, keepdim=True) > 0, p, ws.expand(b, n))  # all points already centres
        cand = _sample(p, step_u[:, j - 1])  # b x trials
        dc = _sqdist(xs, xsq, xs[cand]).transpose(1, 2)  # b x trials x n
        new = torch.minimum(closest[:, None, :], dc)
        best = (new * ws).sum(-1).argmin(1)
        centres[:, j] = xs[cand[rows, best]]
        closest = new[rows, best]

    # Lloyd iterations, all runs at once; a run that has converged leaves the batch
    invalid = torch.where(torch.arange(kmax, device=dev)[None, :] < k_of_run[:, None], 0.0, math.inf)
    tol_abs = float(tol) * float(xs.var(0, unbiased=False).mean())
    iters = torch.zeros(b, dtype=torch.long, device=dev)
    act = rows
    for _ in range(max_iter):
        c = centres[act]
        a = len(act)
        labels = (_sqdist(xs, xsq, c) + invalid[act][:, None, :]).argmin(-1)  # a x n
        # weighted one-hot of every run's labels as one (a * kmax) x n matrix: sums by one product
        onehot = torch.zeros((a * kmax, n), device=dev).scatter_(
            0, labels + (torch.arange(a, device=dev) * kmax)[:, None], ws.expand(a, n))
        mass = onehot.sum(1).view(a, kmax, 1)
        sums = (onehot @ xs).view(a, kmax, -1)
        new = torch.where(mass > 0, sums / mass.clamp(min=1e-30), c)
        shift = ((new - c) ** 2).sum((1, 2))
        centres[act] = new
        iters[act] += 1
        act = act[shift > tol_abs]
        if len(act) == 0:
            break
    d = _sqdist(xs, xsq, centres) + invalid[:, None, :]
    inertia = (d.min(-1).values * ws).sum(1)  # b

    # the best restart per part count, fitted to every point
    best_runs = inertia.view(len(ks), n_init).argmin(1) + torch.arange(len(ks), device=dev) * n_init
    xsq_all = (x_all * x_all).sum(1)
    w_norm = w_all / w_all.sum()
    out: Dict[int, KMeansFit] = {}
    for k, r in zip(ks, best_runs.tolist()):
        c = centres[r:r + 1, :k]
        if xs is not x_all:  # one more Lloyd step on all points
            lab = _sqdist(x_all, xsq_all, c)[0].argmin(1)
            c = _weighted_means(x_all, w_norm, lab, k, c[0])[None]
        lab = _sqdist(x_all, xsq_all, c)[0].argmin(1)
        keep = torch.bincount(lab, minlength=k) > 0
        means = _weighted_means(x_all, w_norm, lab, k, c[0])[keep]
        remap = torch.cumsum(keep.long(), 0) - 1
        lab = remap[lab]
        err = ((x_all.double() - means.double()[lab]) ** 2).sum(1)
        out[k] = KMeansFit(means, lab, float((err * w_norm.double()).sum()), int(iters[r]))
    return out


def _weighted_means(x: torch.Tensor, w: torch.Tensor, labels: torch.Tensor, k: int,
                    fallback: torch.Tensor) -> torch.Tensor:
    """``k x C`` weighted means of ``x`` per label (``fallback``'s row where a label has no weight)."""
    sums = torch.zeros((k, x.shape[1]), dtype=x.dtype, device=x.device).index_add_(0, labels, x * w[:, None])
    mass = torch.zeros(k, dtype=x.dtype, device=x.device).index_add_(0, labels, w)
    return torch.where(mass[:, None] > 0, sums / mass.clamp(min=1e-30)[:, None], fallback)


def kmeans_sklearn(x: torch.Tensor, w: torch.Tensor, k: int, n_init: int = 10, seed: int = 0) -> KMeansFit:
    """scikit-learn's ``KMeans`` (k-means++, ``n_init`` restarts, float64, on the CPU) for one ``k``,
    with centres recomputed as float32 weighted means like :func:`kmeans_batched`'s."""
    from sklearn.cluster import KMeans

    xn = x.double().cpu().numpy()
    wn = w.double().cpu().numpy()
    km = KMeans(n_clusters=k, init="k-means++", n_init=n_init, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning when there are fewer distinct points than k
        labels = km.fit_predict(xn, sample_weight=wn)
    lab = torch.as_tensor(labels, dtype=torch.long, device=x.device)
    keep = torch.bincount(lab, minlength=k) > 0
    xf, wf = x.float(), (w / w.sum()).float().to(x.device)
    means = _weighted_means(xf, wf, lab, k, xf.new_zeros((k, x.shape[1])))[keep]
    lab = (torch.cumsum(keep.long(), 0) - 1)[lab]
    err = ((xf.double() - means.double()[lab]) ** 2).sum(1)
    return KMeansFit(means, lab, float((err * wf.double()).sum()), int(km.n_iter_))


def part_prototype_sets(pooled: PooledFeatures, counts: Sequence[int], seed: int = 0, n_init: int = 10,
                        backend: str = "torch", max_points: Union[int, None, str] = "default"
                        ) -> Dict[int, torch.Tensor]:
    """Part prototypes for several part counts at once: L2-normalised k-means++ centroids.

    ``n == 1`` is the weighted mean (PerSAM's single prototype); the other counts are
    clustered together by :func:`kmeans_batched` (``backend="torch"``, on the features'
    device) or one scikit-learn fit each (``backend="sklearn"``, CPU, every point). The seed
    is fixed, so the same input always gives the same prototypes.

    ``max_points``: the torch backend's subsample bound (``"default"``: :data:`MAX_CLUSTER_POINTS`
    as it is at the call, None: every point).

    Returns:
        ``{n: float32 n' x C unit vectors}`` on the features' device, ``n' <= n`` (fewer
        when there are fewer distinct features than parts).
    """
    if backend not in KMEANS_BACKENDS:
        raise ValueError(f"unknown k-means backend '{backend}'; expected one of {', '.join(KMEANS_BACKENDS)}")
    x, w = pooled.features, pooled.weights.to(pooled.features.device)
    out: Dict[int, torch.Tensor] = {}
    ks = sorted({int(n) for n in counts})
    many = [k for k in ks if k > 1 and len(x) > 1]
    for k in ks:
        if k not in many:
            out[k] = (x.float() * w[:, None]).sum(0, keepdim=True) / w.sum()
    if many:
        if backend == "torch":
            cap = MAX_CLUSTER_POINTS if max_points == "default" else max_points
            with cpu_threads(x.device, 1), no_autocast(x.device):
                fits = kmeans_batched(x, w, many, n_init=n_init, seed=seed, max_points=cap)
        else:
            fits = {k: kmeans_sklearn(x, w, k, n_init=n_init, seed=seed) for k in many}
        out.update({k: f.centres for k, f in fits.items()})
    return {k: torch.nn.functional.normalize(out[k].float(), dim=1) for k in ks}


def part_prototypes(pooled: PooledFeatures, n_parts: int, seed: int = 0, n_init: int = 10,
                    backend: str = "torch") -> torch.Tensor:
    """Cluster features into ``n_parts`` with k-means++ and return L2-normalised centroids.

    One part count of :func:`part_prototype_sets` (the same prototypes as asking for it among
    other counts: each restart's seeding depends on its part count, restart and seed only).

    Returns:
        float32 ``n x C`` unit vectors, on the features' device; ``n`` may be
        smaller than asked when there are fewer distinct features than parts.
    """
    return part_prototype_sets(pooled, [max(1, int(n_parts))], seed, n_init, backend)[max(1, int(n_parts))]
