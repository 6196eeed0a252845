"""Exact Wasserstein (earth mover's) distance with squared-Euclidean cost, against hand-computed cases."""
from __future__ import annotations

import math

import pytest
import torch

from P2SAMLogic.method.retrieval import wasserstein_distance


def t(rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_two_shifted_pairs():
    # every point moves up by 1: squared distance 1
    assert wasserstein_distance(t([[0, 0], [1, 0]]), t([[0, 1], [1, 1]])) == pytest.approx(1.0)


def test_optimal_matching_is_not_the_identity_pairing():
    a = t([[0, 0], [10, 0]])
    b = t([[10, 1], [0, 1]])  # pairing a_i with b_i would cost (100 + 1) each
    assert wasserstein_distance(a, b) == pytest.approx(1.0)
    a3 = t([[0, 0], [5, 0], [9, 0]])
    b3 = t([[9, 2], [0, 2], [5, 2]])
    assert wasserstein_distance(a3, b3) == pytest.approx(4.0)


def test_identical_and_permuted_sets_are_zero():
    x = torch.randn(20, 16, generator=torch.Generator().manual_seed(0))
    assert wasserstein_distance(x, x) == pytest.approx(0.0, abs=1e-9)
    assert wasserstein_distance(x, x[torch.randperm(20, generator=torch.Generator().manual_seed(1))]) == pytest.approx(0.0, abs=1e-9)


def test_empty_set_is_infinite():
    x = t([[0, 0], [1, 1]])
    empty = torch.zeros((0, 2))
    assert math.isinf(wasserstein_distance(x, empty))
    assert math.isinf(wasserstein_distance(empty, x))


def test_weighted_cases():
    # one point (mass 1) to two points with masses 0.75 / 0.25 at squared distances 1 and 9
    d = wasserstein_distance(t([[0, 0]]), t([[1, 0], [3, 0]]), torch.tensor([1.0]), torch.tensor([0.75, 0.25]))
    assert d == pytest.approx(0.75 * 1 + 0.25 * 9)
    # same support, different masses: 0.25 has to move a squared distance of 4
    d = wasserstein_distance(t([[0], [2]]), t([[0], [2]]), torch.tensor([0.5, 0.5]), torch.tensor([0.25, 0.75]))
    assert d == pytest.approx(1.0)
    # different set sizes, uniform default weights: 1/2 + 1/2 mass from one point to two
    d = wasserstein_distance(t([[0, 0]]), t([[1, 0], [0, 2]]))
    assert d == pytest.approx(0.5 * 1 + 0.5 * 4)


def test_weights_are_normalised():
    a, b = t([[0], [2]]), t([[0], [2]])
    d = wasserstein_distance(a, b, torch.tensor([2.0, 2.0]), torch.tensor([1.0, 3.0]))
    assert d == pytest.approx(1.0)


def test_symmetric_and_scales_quadratically():
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(12, 5, generator=g), torch.randn(9, 5, generator=g)
    d = wasserstein_distance(a, b)
    assert d > 0
    assert wasserstein_distance(b, a) == pytest.approx(d)
    assert wasserstein_distance(2 * a, 2 * b) == pytest.approx(4 * d)


def test_subsampling_large_sets_is_deterministic_and_finite():
    g = torch.Generator().manual_seed(4)
    a, b = torch.randn(50, 4, generator=g), torch.randn(40, 4, generator=g) + 3.0
    d1 = wasserstein_distance(a, b, max_cells=10)
    d2 = wasserstein_distance(a, b, max_cells=10)
    assert math.isfinite(d1) and d1 == d2
    # the shift of 3 in each of 4 dimensions dominates: roughly 4 * 9 + noise
    assert 30 < d1 < 60
