"""The device paths of clustering, retrieval and model loading give the reference implementations' answers.

k-means: the batched torch k-means++ against scikit-learn (partitions and inertia); retrieval: the
batched, debiased Sinkhorn against exact earth mover's distances (POT); model loading: the network
cache against a fresh build. CPU tensors only (the same code runs on a GPU); speed is measured by
Testing/Benchmarks/benchmark_speed.py, never asserted here.
"""
from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from P2SAMLogic.errors import CheckpointError
from P2SAMLogic.models import load_model
from P2SAMLogic.models.checkpoint import MAX_CACHED_NETWORKS, clear_network_cache, no_weight_init
from P2SAMLogic.method.parts import (PooledFeatures, foreground_cells, foreground_features, kmeans_batched,
                              kmeans_sklearn, part_prototype_sets, part_prototypes, weighted_subsample)
from P2SAMLogic.method.retrieval import (gather_sets, prepare_set, resolve_solver, sinkhorn_divergences, wasserstein_prepared,
                                  wasserstein_scores)


def _blobs(sizes=(40, 25, 60, 30), dim=16, spread=0.6, seed=0):
    """Gaussian blobs (unit-scale centres, ``spread`` noise) with their labels."""
    g = torch.Generator().manual_seed(seed)
    centres = 3.0 * torch.randn(len(sizes), dim, generator=g)
    x = torch.cat([c + spread * torch.randn(n, dim, generator=g) for c, n in zip(centres, sizes)])
    labels = np.concatenate([np.full(n, j) for j, n in enumerate(sizes)])
    return x, labels


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Two labelings are the same partition (up to renaming the clusters)."""
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


# -- k-means ---------------------------------------------------------------------------------------

def test_batched_kmeans_finds_sklearns_partitions_on_separated_blobs():
    x, truth = _blobs()
    w = torch.rand(len(x), generator=torch.Generator().manual_seed(1)) + 0.5
    fits = kmeans_batched(x, w, [2, 3, 4, 5], n_init=10, seed=0, max_points=None)
    assert sorted(fits) == [2, 3, 4, 5]
    four = fits[4]
    assert _same_partition(four.labels.numpy(), truth)
    sk = kmeans_sklearn(x, w, 4, n_init=10, seed=0)
    assert _same_partition(sk.labels.numpy(), four.labels.numpy())
    assert four.inertia == pytest.approx(sk.inertia, rel=1e-6)
    # centres are the weighted means of their points
    wn = (w / w.sum()).double()
    for j in range(4):
        sel = four.labels == j
        mean = (x[sel].double() * wn[sel, None]).sum(0) / wn[sel].sum()
        torch.testing.assert_close(four.centres[j].double(), mean, atol=1e-5, rtol=0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batched_kmeans_inertia_within_one_percent_of_sklearn(seed):
    """Overlapping clusters (no unique answer): the best of 10 restarts is as good as scikit-learn's."""
    x, _ = _blobs(sizes=(50, 70, 40, 60, 30), dim=24, spread=2.5, seed=seed + 10)
    w = torch.rand(len(x), generator=torch.Generator().manual_seed(seed)) + 0.2
    fits = kmeans_batched(x, w, [2, 3, 4, 5], n_init=10, seed=seed, max_points=None)
    for k, fit in fits.items():
        sk = kmeans_sklearn(x, w, k, n_init=10, seed=seed)
        assert fit.inertia <= 1.01 * sk.inertia, (k, fit.inertia, sk.inertia)
        assert len(fit.centres) == k and fit.labels.shape == (len(x),)


def test_batched_kmeans_is_deterministic_and_independent_of_the_batch():
    x, _ = _blobs(spread=2.0, seed=3)
    w = torch.ones(len(x))
    a = kmeans_batched(x, w, [2, 3, 4, 5], seed=7, max_points=None)
    b = kmeans_batched(x, w, [2, 3, 4, 5], seed=7, max_points=None)
    alone = kmeans_batched(x, w, [3], seed=7, max_points=None)
    for k in a:
        assert torch.equal(a[k].centres, b[k].centres) and torch.equal(a[k].labels, b[k].labels)
    assert torch.equal(alone[3].centres, a[3].centres)
    # the prototypes a segmenter asks for one count at a time equal those of the batched call
    pooled = PooledFeatures(x, w / w.sum(), np.zeros((len(x), 2), dtype=int))
    sets = part_prototype_sets(pooled, [1, 2, 3, 4, 5], seed=7)
    for k in (1, 3, 5):
        assert torch.equal(sets[k], part_prototypes(pooled, k, seed=7))
    torch.testing.assert_close(sets[3].norm(dim=1), torch.ones(3))


def test_kmeans_backends_agree_on_separated_blobs():
    x, _ = _blobs(seed=4)
    pooled = PooledFeatures(x, torch.full((len(x),), 1.0 / len(x)), np.zeros((len(x), 2), dtype=int))
    ours = part_prototype_sets(pooled, [1, 4], seed=0, backend="torch")
    theirs = part_prototype_sets(pooled, [1, 4], seed=0, backend="sklearn")
    torch.testing.assert_close(ours[1], theirs[1])
    match = torch.cdist(ours[4], theirs[4]).argmin(1)
    assert sorted(match.tolist()) == [0, 1, 2, 3]
    torch.testing.assert_close(ours[4], theirs[4][match], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="backend"):
        part_prototype_sets(pooled, [2], backend="faiss")


def test_weighted_subsample_is_bounded_area_weighted_and_deterministic():
    w = torch.tensor([1.0] * 300 + [0.0] * 50 + [4.0] * 100)
    idx, ws = weighted_subsample(w, 100)
    assert len(idx) <= 100 and torch.equal(idx, idx.sort().values)
    assert ws.sum().item() == pytest.approx(1.0)
    assert not ((idx >= 300) & (idx < 350)).any(), "a zero-weight point was sampled"
    heavy = ws[idx >= 350].sum().item()
    assert heavy == pytest.approx(400 / 700, abs=0.02)  # the weighted mass is kept
    idx2, ws2 = weighted_subsample(w, 100)
    assert torch.equal(idx, idx2) and torch.equal(ws, ws2)


def test_subsampled_kmeans_keeps_partitions_and_fits_every_point():
    x, truth = _blobs(sizes=(400, 300, 500), dim=12, spread=0.5, seed=5)
    w = torch.ones(len(x))
    full = kmeans_batched(x, w, [3], max_points=None)[3]
    sub = kmeans_batched(x, w, [3], max_points=128)[3]
    assert sub.labels.shape == (1200,)
    assert _same_partition(sub.labels.numpy(), truth)
    assert sub.inertia == pytest.approx(full.inertia, rel=1e-3)


def test_fewer_distinct_points_than_parts_gives_fewer_centres():
    x = torch.tensor([[1.0, 0.0]] * 5 + [[0.0, 1.0]] * 4)
    fits = kmeans_batched(x, torch.ones(9), [2, 5], max_points=None)
    assert len(fits[5].centres) == 2 and fits[5].inertia == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError):
        kmeans_batched(torch.zeros((0, 2)), torch.zeros(0), [2])


# -- retrieval -------------------------------------------------------------------------------------

def _grid_and_masks(seed=0, g=12, c=8, b=6):
    gen = torch.Generator().manual_seed(seed)
    feats = torch.randn(c, g, g, generator=gen)
    cover = torch.zeros(b, g, g)
    for i in range(b):  # rectangles of different sizes and places, one tiny (fallback weights)
        r0, c0 = int(torch.randint(0, g - 4, (1,), generator=gen)), int(torch.randint(0, g - 4, (1,), generator=gen))
        cover[i, r0:r0 + 2 + i, c0:c0 + 3 + i // 2] = 1.0
    cover[-1] = 0.0
    cover[-1, 3, 4], cover[-1, 3, 5] = 0.4, 0.2
    return feats, cover


def test_foreground_cells_match_foreground_features():
    feats, cover = _grid_and_masks()
    cells, weights = foreground_cells(cover)
    for i in range(len(cover)):
        pooled = foreground_features(feats, cover[i])
        got = torch.nonzero(cells[i].view(cover.shape[1:])).numpy()
        assert np.array_equal(got, pooled.cells)
        w = weights[i][cells[i]]
        torch.testing.assert_close(w / w.sum(), pooled.weights)


def test_gathered_sets_are_the_prepared_sets():
    feats, cover = _grid_and_masks(seed=1, g=16, b=5)
    cover[1] = 1.0  # 256 cells: subsampled to max_cells
    cells, weights = foreground_cells(cover)
    sizes = cells.sum(1).numpy()
    sets = gather_sets(feats, cells, weights, sizes, max_cells=100, seed=0)
    assert sets.x.shape[1] == 100 and int(sets.sizes.max()) == 100
    for i in range(len(cover)):
        pooled = foreground_features(feats, cover[i])
        want = prepare_set(pooled.features, pooled.weights, max_cells=100, seed=0)
        got = sets.prepared(i)
        np.testing.assert_array_equal(got.x, want.x)
        np.testing.assert_allclose(got.w, want.w, rtol=1e-6)


def _candidate_sets(seed, n_cands=8, dim=16):
    """Disjoint candidate cell sets drawn around a reference with increasing shifts, one of them
    empty, and a background set: features ``dim x 24 x 24``, coverage ``n_cands x 24 x 24``."""
    gen = torch.Generator().manual_seed(seed)
    ref = torch.randn(60, dim, generator=gen)
    bg = torch.randn(50, dim, generator=gen) + 2.0
    g = 24
    feats = torch.randn(dim, g, g, generator=gen)
    cover = torch.zeros(n_cands, g, g)
    shift = torch.randn(dim, generator=gen)
    order = torch.randperm(g * g, generator=gen)
    start = 0
    for i in range(n_cands):
        n = 20 + 5 * i
        cells = order[start:start + n]
        start += n
        cover[i].view(-1)[cells] = 1.0
        pts = ref[torch.randint(0, 60, (n,), generator=gen)] + 0.3 * torch.randn(n, dim, generator=gen)
        feats.view(dim, -1)[:, cells] = (pts + (0.2 * (i + 1)) * shift).T
    cover[3] = 0.0  # an empty candidate
    return feats, cover, ref, bg


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_batched_sinkhorn_selects_like_exact_transport(seed):
    feats, cover, ref, bg = _candidate_sets(seed)
    cells, weights = foreground_cells(cover)
    sizes = cells.sum(1).numpy()
    sets = gather_sets(feats, cells, weights, sizes)
    refs = [prepare_set(ref, seed=1), prepare_set(bg, seed=1)]
    exact = wasserstein_scores(sets, refs, "exact")
    approx = wasserstein_scores(sets, refs, "sinkhorn")
    assert math.isinf(exact[0, 3]) and math.isinf(approx[0, 3]) and math.isinf(approx[1, 3])
    ok = np.isfinite(exact[0])
    for r in range(2):
        assert int(np.argmin(np.where(ok, approx[r], np.inf))) == int(np.argmin(np.where(ok, exact[r], np.inf)))
        np.testing.assert_allclose(approx[r][ok], exact[r][ok], rtol=0.03)
    # distances to the reference (distinct by construction): the same order of every candidate
    assert np.array_equal(np.argsort(approx[0][ok]), np.argsort(exact[0][ok]))


def test_exact_scores_are_todays_numbers_and_missing_references_are_infinite():
    feats, cover, ref, _ = _candidate_sets(5)
    cells, weights = foreground_cells(cover)
    sets = gather_sets(feats, cells, weights, cells.sum(1).numpy())
    r = prepare_set(ref, seed=1)
    got = wasserstein_scores(sets, [r, None], "exact")
    for i in range(len(cover)):
        if sets.sizes[i] == 0:
            assert math.isinf(got[0, i])
            continue
        pooled = foreground_features(feats, cover[i])
        assert got[0, i] == pytest.approx(wasserstein_prepared(prepare_set(pooled.features, pooled.weights), r),
                                          rel=1e-9)
    assert np.isinf(got[1]).all()
    assert np.isinf(wasserstein_scores(sets, [r, None], "sinkhorn")[1]).all()


def test_sinkhorn_divergence_of_a_set_to_itself_is_zero_and_grows_with_shift():
    x = torch.randn(30, 8, generator=torch.Generator().manual_seed(0))
    ref = prepare_set(x)
    feats = torch.zeros(8, 6, 6)
    feats.view(8, -1)[:, :30] = x.T
    cells = torch.zeros(3, 36, dtype=torch.bool)
    cells[:, :30] = True
    shifted = [feats.clone(), feats.clone() + 0.5, feats.clone() + 1.0]
    d = [float(sinkhorn_divergences(gather_sets(f, cells[:1], cells[:1].float(), [30]), [ref])[0, 0])
         for f in shifted]
    assert abs(d[0]) < 1e-3 * d[2]
    assert d[0] < d[1] < d[2]
    assert d[2] == pytest.approx(8 * 1.0, rel=0.05)  # a pure shift by 1 in 8 dimensions: W = 8


def test_transport_solver_choice():
    assert resolve_solver("auto", torch.device("cpu")) == "exact"
    assert resolve_solver("auto", torch.device("cuda")) == "sinkhorn"
    assert resolve_solver("sinkhorn", torch.device("cpu")) == "sinkhorn"
    with pytest.raises(ValueError, match="transport solver"):
        resolve_solver("greedy", torch.device("cpu"))


def test_segmenter_selects_the_same_candidate_with_sinkhorn(litemedsam, make_disc):
    from P2SAMLogic.method.segmenter import P2SAMConfig, P2SAMSegmenter

    ref_img, ref_mask = make_disc(90, 60, r=22, shape=(120, 200))
    tgt_img, tgt_mask = make_disc(100, 66, r=26, shape=(120, 200))
    seg = P2SAMSegmenter(litemedsam, P2SAMConfig())
    ref = seg.prepare_reference(ref_img, ref_mask)
    exact = seg.segment(ref, tgt_img)
    seg.config.transport = "sinkhorn"  # the switch segmenter._score reads (default auto: exact on the CPU)
    approx = seg.segment(ref, tgt_img)
    assert [c.box for c in approx.candidates] == [c.box for c in exact.candidates]
    assert approx.chosen.box == exact.chosen.box
    assert np.array_equal(approx.mask, exact.mask)
    s_exact = np.array([c.score for c in exact.candidates])
    s_approx = np.array([c.score for c in approx.candidates])
    ok = np.isfinite(s_exact)
    np.testing.assert_allclose(s_approx[ok], s_exact[ok], rtol=0.05)


# -- model loading ---------------------------------------------------------------------------------

def test_network_cache_reuses_and_is_invalidated_by_a_changed_file(tmp_path):
    from P2SAMLogic.models import checkpoint
    from P2SAMLogic.models.base import file_sha256

    torch.manual_seed(0)
    path = tmp_path / "weights.pth"
    torch.save(torch.nn.Linear(4, 3).state_dict(), path)
    builds = []

    def build_from(p):
        def build():
            net = torch.nn.Linear(4, 3)
            checkpoint.load_strict(net, checkpoint.read_state_dict(str(p)), str(p), "a 4 x 3 linear layer")
            builds.append(str(p))
            return net, {"built": len(builds)}
        return build

    cpu = torch.device("cpu")
    clear_network_cache()
    a, sha_a, _ = checkpoint.cached_network("test", str(path), cpu, build_from(path))
    b, sha_b, _ = checkpoint.cached_network("test", str(path), cpu, build_from(path))
    assert b is a and sha_b == sha_a == file_sha256(str(path)) and len(builds) == 1
    assert not a.training and not any(p.requires_grad for p in a.parameters())
    # touched, same content: the checksum is computed again and the network kept
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    assert checkpoint.cached_network("test", str(path), cpu, build_from(path))[0] is a and len(builds) == 1
    # different weights: a new checksum and a new network that holds them
    changed = {k: v + 1.0 for k, v in a.state_dict().items()}
    torch.save(changed, path)
    c, sha_c, _ = checkpoint.cached_network("test", str(path), cpu, build_from(path))
    assert c is not a and sha_c != sha_a and len(builds) == 2
    torch.testing.assert_close(c.weight, changed["weight"])
    # a broken file is an error that names it, whatever was cached, and nothing is cached for it
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="weights.pth"):
        checkpoint.cached_network("test", str(path), cpu, build_from(path))
    with pytest.raises(CheckpointError, match="weights.pth"):
        checkpoint.cached_network("test", str(path), cpu, build_from(path))
    # at most MAX_CACHED_NETWORKS networks are kept
    for i in range(MAX_CACHED_NETWORKS + 1):
        p = tmp_path / f"copy{i}.pth"
        torch.save(torch.nn.Linear(4, 3).state_dict(), p)
        checkpoint.cached_network("test", str(p), cpu, build_from(p))
    assert len(checkpoint._NETWORKS) == MAX_CACHED_NETWORKS
    clear_network_cache()
    assert not checkpoint._NETWORKS


def test_litemedsam_second_load_reuses_the_network(litemedsam):
    from P2SAMLogic.models.base import file_sha256

    a = load_model("litemedsam", device="cpu")
    b = load_model("litemedsam", device="cpu")
    assert b.net is a.net and b is not a
    assert b.cache is not a.cache and b.encode_calls == 0  # a fresh wrapper: its own embedding cache
    assert b.sha256 == file_sha256(b.checkpoint_path)


def test_skipping_random_init_loads_the_same_network(tiny_sam_net):
    from P2SAMLogic.models.sam import build_sam_network

    from conftest import TINY_ARCH

    linear = torch.nn.Linear(3, 2)
    with no_weight_init():
        net = build_sam_network(TINY_ARCH)
    net.load_state_dict(tiny_sam_net.state_dict(), strict=True)
    for k, v in tiny_sam_net.state_dict().items():
        assert torch.equal(net.state_dict()[k], v), k
    # the initialisers are back afterwards
    before = linear.weight.clone()
    linear.reset_parameters()
    assert not torch.equal(before, linear.weight)
