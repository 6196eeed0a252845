"""Reference pooling on the feature grid and part prototypes (k-means++)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from P2SAMLogic.models.frames import ImageFrame, coverage_on_grid
from P2SAMLogic.method.parts import INSIDE_FRACTION, PooledFeatures, background_features, foreground_features, part_prototypes


def _clustered(n_per=(7, 5, 9), dim=8, seed=0):
    """Three well-separated clusters with small noise; returns features, labels and the cluster centres."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.zeros(len(n_per), dim)
    for j in range(len(n_per)):
        centres[j, j] = 10.0
        centres[j, -1] = 1.0 + j
    xs, labels = [], []
    for j, n in enumerate(n_per):
        xs.append(centres[j] + 0.05 * torch.randn(n, dim, generator=g))
        labels += [j] * n
    return torch.cat(xs), np.array(labels), centres


def _uniform(x: torch.Tensor) -> PooledFeatures:
    n = len(x)
    return PooledFeatures(x, torch.full((n,), 1.0 / n), np.zeros((n, 2), dtype=int))


def _match_rows(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """For each row of a, the index of the closest row of b."""
    return torch.cdist(a, b).argmin(1).numpy()


def test_kmeans_prototypes_deterministic_unit_and_right():
    x, labels, _ = _clustered()
    pooled = _uniform(x)
    p1 = part_prototypes(pooled, 3, seed=0)
    p2 = part_prototypes(pooled, 3, seed=0)
    assert p1.shape == (3, x.shape[1]) and p1.dtype == torch.float32
    assert torch.equal(p1, p2)
    torch.testing.assert_close(p1.norm(dim=1), torch.ones(3))
    # the prototypes are the normalised cluster means (in some order)
    means = torch.stack([x[torch.as_tensor(labels == j)].mean(0) for j in range(3)])
    means = torch.nn.functional.normalize(means, dim=1)
    order = _match_rows(p1, means)
    assert sorted(order.tolist()) == [0, 1, 2]
    torch.testing.assert_close(p1, means[order], atol=1e-5, rtol=0)


def test_kmeans_weighted_centroids():
    """Inside a cluster the centroid is the weight-weighted mean."""
    x = torch.tensor([[10.0, 0.0], [10.0, 2.0], [0.0, 10.0], [2.0, 10.0]])
    w = torch.tensor([0.3, 0.1, 0.1, 0.5])
    p = part_prototypes(PooledFeatures(x, w, np.zeros((4, 2), dtype=int)), 2, seed=0)
    expected = torch.nn.functional.normalize(torch.tensor([[10.0, (0.1 * 2) / 0.4], [(0.5 * 2) / 0.6, 10.0]]), dim=1)
    order = _match_rows(p, expected)
    assert sorted(order.tolist()) == [0, 1]
    torch.testing.assert_close(p, expected[order], atol=1e-5, rtol=0)


def test_single_part_is_normalised_weighted_mean():
    x = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 4.0]])
    w = torch.tensor([0.5, 0.25, 0.25])
    p = part_prototypes(PooledFeatures(x, w, np.zeros((3, 2), dtype=int)), 1)
    expected = torch.nn.functional.normalize(torch.tensor([[0.5, 0.5, 1.0]]), dim=1)
    assert p.shape == (1, 3)
    torch.testing.assert_close(p, expected)


def test_fewer_distinct_features_than_parts():
    x = torch.tensor([[1.0, 0.0]] * 4 + [[0.0, 1.0]] * 3)
    p = part_prototypes(_uniform(x), 5, seed=0)
    assert p.shape == (2, 2)
    order = _match_rows(p, torch.eye(2))
    assert sorted(order.tolist()) == [0, 1]
    # all identical: one prototype
    p = part_prototypes(_uniform(torch.ones(6, 3)), 3)
    assert p.shape == (1, 3)


def _grid_features(c=4, g=16, seed=0):
    return torch.randn(c, g, g, generator=torch.Generator().manual_seed(seed))


def test_foreground_uses_cells_more_than_half_covered():
    g, S = 16, 256
    m = torch.zeros(S, S)
    m[32:80, 48:72] = 1.0  # rows: cells 2..4 fully; cols: cell 3 fully, cell 4 half (64..72)
    cov = coverage_on_grid(m, g)
    feats = _grid_features(g=g)
    fg = foreground_features(feats, cov)
    assert not fg.fallback
    cells = {tuple(rc) for rc in fg.cells.tolist()}
    assert cells == {(r, 3) for r in (2, 3, 4)}  # half-covered column 4 is not "more than half"
    torch.testing.assert_close(fg.weights, torch.full((3,), 1.0 / 3))
    for k, (r, c) in enumerate(fg.cells.tolist()):
        torch.testing.assert_close(fg.features[k], feats[:, r, c])


def test_foreground_fallback_for_tiny_mask():
    frame = ImageFrame(original_size=(256, 256), input_size=256)
    mask = np.zeros((256, 256), dtype=bool)
    mask[13:19, 10:16] = True  # 6 x 6 pixels straddling cells (0..1, 0)
    cov = coverage_on_grid(frame.mask_to_input(mask), 16)
    assert cov.max() <= INSIDE_FRACTION
    feats = _grid_features()
    fg = foreground_features(feats, cov)
    assert fg.fallback
    touched = torch.nonzero(cov > 0).tolist()
    assert sorted(fg.cells.tolist()) == sorted(touched)
    assert len(touched) >= 2
    assert fg.weights.sum().item() == pytest.approx(1.0)
    covs = torch.tensor([cov[r, c].item() for r, c in fg.cells.tolist()])
    torch.testing.assert_close(fg.weights, covs / covs.sum())
    # the most covered cell weighs most
    assert fg.cells[int(fg.weights.argmax())].tolist() == torch.nonzero(cov == cov.max())[0].tolist()


def test_foreground_empty_coverage_raises():
    with pytest.raises(ValueError):
        foreground_features(_grid_features(), torch.zeros(16, 16))


def test_background_excludes_mask_and_padding():
    # wide image: rows 10.. of the 16 x 16 grid are padding
    frame = ImageFrame(original_size=(300, 500), input_size=256)
    valid = frame.grid_valid(16)
    mask = np.zeros((300, 500), dtype=bool)
    mask[250:290, 200:260] = True  # near the bottom edge: the ring would run into the padding
    cov = coverage_on_grid(frame.mask_to_input(mask), 16)
    feats = _grid_features()
    bg = background_features(feats, cov, valid)
    assert bg is not None
    cells = bg.cells
    assert len(cells) > 0
    touched = (cov > 0).numpy()
    assert not touched[cells[:, 0], cells[:, 1]].any(), "background must not include a cell the mask touches"
    assert valid.numpy()[cells[:, 0], cells[:, 1]].all(), "background must stay inside the image"
    # the region is around the structure: within the box grown by its size (>= 2 cells) on each side
    rows, cols = np.nonzero(touched)
    gr = max(2, rows.max() - rows.min() + 1)
    gc = max(2, cols.max() - cols.min() + 1)
    assert cells[:, 0].min() >= rows.min() - gr and cells[:, 0].max() <= rows.max() + gr
    assert cells[:, 1].min() >= cols.min() - gc and cells[:, 1].max() <= cols.max() + gc
    # something on each side of the structure that lies inside the image
    assert (cells[:, 1] < cols.min()).any() and (cells[:, 1] > cols.max()).any() and (cells[:, 0] < rows.min()).any()
    torch.testing.assert_close(bg.weights, torch.full((len(cells),), 1.0 / len(cells)))
    torch.testing.assert_close(bg.features[0], feats[:, cells[0, 0], cells[0, 1]])


def test_background_none_when_structure_fills_image():
    frame = ImageFrame(original_size=(256, 256), input_size=256)
    cov = coverage_on_grid(frame.mask_to_input(np.ones((256, 256), dtype=bool)), 16)
    assert background_features(_grid_features(), cov, frame.grid_valid(16)) is None
