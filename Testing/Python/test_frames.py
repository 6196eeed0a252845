"""Coordinate frames: original image <-> padded square model input <-> feature grid / low-res masks."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from P2SAMLogic.models.frames import ImageFrame, coverage_on_grid

SHAPES = [(300, 500), (500, 300)]  # (H, W): wide and tall
SIZES = [256, 1024]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("size", SIZES)
def test_points_and_boxes_round_trip(shape, size):
    frame = ImageFrame(original_size=shape, input_size=size)
    h, w = shape
    rng = np.random.default_rng(0)
    pts = np.stack([rng.uniform(0, w - 1, 20), rng.uniform(0, h - 1, 20)], axis=1)  # (x, y)
    boxes = np.concatenate([pts[:10], pts[10:] + 5.0], axis=1)  # B x 4
    for arr in (pts, pts.reshape(4, 5, 2), boxes):
        model = frame.to_model(arr)
        assert model.shape == arr.shape
        np.testing.assert_allclose(frame.to_original(model), arr, rtol=0, atol=1e-9)
    # the model frame is the original scaled by input_size / longest side, same factor on x and y
    s = size / max(shape)
    np.testing.assert_allclose(frame.to_model(pts), pts * s)
    # the far corner (W, H) of the original lands on the far corner of the resized image
    rh, rw = frame.resized_size
    np.testing.assert_allclose(frame.to_model(np.array([w, h])), [rw, rh], atol=0.5)


@pytest.mark.parametrize("shape", SHAPES + [(256, 256), (37, 1000), (1000, 37)])
@pytest.mark.parametrize("size", SIZES)
def test_resized_size_keeps_aspect(shape, size):
    frame = ImageFrame(original_size=shape, input_size=size)
    rh, rw = frame.resized_size
    assert max(rh, rw) == size
    assert abs(rh - shape[0] * size / max(shape)) <= 0.5
    assert abs(rw - shape[1] * size / max(shape)) <= 0.5
    # long side stays the long side
    assert (rh >= rw) == (shape[0] >= shape[1])


def _centroid_xy(m: np.ndarray) -> np.ndarray:
    rows, cols = np.mgrid[: m.shape[0], : m.shape[1]]
    total = m.sum()
    return np.array([(cols * m).sum() / total, (rows * m).sum() / total])


@pytest.mark.parametrize("shape,block", [((300, 500), (100, 160, 200, 300)), ((500, 300), (300, 400, 50, 120))])
@pytest.mark.parametrize("size", SIZES)
def test_mask_to_input_centroid_and_padding(shape, block, size):
    frame = ImageFrame(original_size=shape, input_size=size)
    r0, r1, c0, c1 = block
    mask = np.zeros(shape, dtype=bool)
    mask[r0:r1, c0:c1] = True
    out = frame.mask_to_input(mask)
    assert out.shape == (size, size) and out.dtype == torch.float32
    m = out.numpy()
    assert m.min() >= 0.0 and m.max() <= 1.0
    rh, rw = frame.resized_size
    assert not m[rh:, :].any() and not m[:, rw:].any(), "padding must be zero"
    # centroid of the resized mask = centroid of the original mask, scaled (within one model pixel)
    expected = frame.to_model(_centroid_xy(mask.astype(np.float64)))
    np.testing.assert_allclose(_centroid_xy(m.astype(np.float64)), expected, atol=1.0)
    # area is preserved up to the scale squared
    s = frame.scale
    assert m.sum() == pytest.approx(mask.sum() * s * s, rel=0.03)


@pytest.mark.parametrize("shape", SHAPES)
def test_mask_to_input_full_mask_fills_exactly_the_resized_image(shape):
    frame = ImageFrame(original_size=shape, input_size=256)
    m = frame.mask_to_input(np.ones(shape, dtype=bool)).numpy()
    rh, rw = frame.resized_size
    assert m[:rh, :rw].min() > 0.99
    assert not m[rh:, :].any() and not m[:, rw:].any()
    assert (rh, rw) != (256, 256)  # some padding was checked


@pytest.mark.parametrize(
    "shape,size,low_block",
    [
        ((300, 500), 256, (10, 20, 20, 40)),    # wide frame, LiteMedSAM-sized input (L = 64)
        ((500, 300), 1024, (150, 200, 30, 60)),  # tall frame, SAM-sized input (L = 256)
    ],
)
def test_logits_to_original_places_block(shape, size, low_block):
    frame = ImageFrame(original_size=shape, input_size=size)
    L = size // 4
    r0, r1, c0, c1 = low_block
    low = torch.full((2, 1, L, L), -10.0)
    low[0, 0, r0:r1, c0:c1] = 10.0
    out = frame.logits_to_original(low)
    assert out.shape == (2, 1) + shape
    pos = out[0, 0].numpy() > 0
    assert not (out[1, 0] > 0).any()
    # low-res pixel k covers model pixels [4k, 4k + 4), i.e. original [4k / s, (4k + 4) / s)
    per = size / L / frame.scale
    exp_r0, exp_r1, exp_c0, exp_c1 = r0 * per, r1 * per, c0 * per, c1 * per
    rows = np.flatnonzero(pos.any(axis=1))
    cols = np.flatnonzero(pos.any(axis=0))
    assert abs(rows[0] - exp_r0) <= 2 and abs(rows[-1] + 1 - exp_r1) <= 2
    assert abs(cols[0] - exp_c0) <= 2 and abs(cols[-1] + 1 - exp_c1) <= 2
    # and it is the whole rectangle (bilinear rounds the corners by a pixel or two), not just its outline
    assert pos[rows[0] + 2:rows[-1] - 1, cols[0] + 2:cols[-1] - 1].all()
    assert pos.sum() >= 0.97 * (rows[-1] + 1 - rows[0]) * (cols[-1] + 1 - cols[0])


def test_logits_in_padding_do_not_reach_original():
    frame = ImageFrame(original_size=(300, 500), input_size=256)
    rh, _ = frame.resized_size  # 154: low-res rows >= 38.5 are padding
    low = torch.full((1, 1, 64, 64), -10.0)
    low[0, 0, 40:, :] = 10.0
    out = frame.logits_to_original(low)
    assert out.shape == (1, 1, 300, 500)
    assert not (out > 0).any()


def test_coverage_on_grid_exact_and_partial_cells():
    S, g = 256, 16  # stride 16
    m = torch.zeros(S, S)
    m[48:64, 80:96] = 1.0  # exactly cell (row 3, col 5)
    cov = coverage_on_grid(m, g)
    assert cov.shape == (g, g)
    assert cov[3, 5].item() == pytest.approx(1.0)
    assert cov.sum().item() == pytest.approx(1.0)

    half = torch.zeros(S, S)
    half[48:56, 80:96] = 1.0  # top half of cell (3, 5)
    cov = coverage_on_grid(half, g)
    assert cov[3, 5].item() == pytest.approx(0.5)
    assert cov.sum().item() == pytest.approx(0.5)

    straddle = torch.zeros(S, S)
    straddle[56:72, 88:104] = 1.0  # one cell's area centred on the corner of cells (3..4, 5..6)
    cov = coverage_on_grid(straddle, g)
    for r, c in [(3, 5), (3, 6), (4, 5), (4, 6)]:
        assert cov[r, c].item() == pytest.approx(0.25)
    assert cov.sum().item() == pytest.approx(1.0)

    batched = coverage_on_grid(torch.stack([m, half]), g)
    assert batched.shape == (2, g, g)
    assert batched[0, 3, 5].item() == pytest.approx(1.0) and batched[1, 3, 5].item() == pytest.approx(0.5)


def test_grid_valid_and_map_to_input_follow_resized_image():
    frame = ImageFrame(original_size=(300, 500), input_size=256)
    rh, rw = frame.resized_size  # (154, 256)
    valid = frame.grid_valid(16)
    assert valid.dtype == torch.bool
    assert valid[:10].all() and not valid[10:].any()  # ceil(154 / 16) = 10 rows overlap the image
    tall = ImageFrame(original_size=(500, 300), input_size=256).grid_valid(16)
    assert tall[:, :10].all() and not tall[:, 10:].any()
    maps = torch.rand(3, 16, 16)
    up = frame.map_to_input(maps)
    assert up.shape == (3, rh, rw)
