"""Prototype matching: cosine-similarity maps and their peaks, in original-image pixels (x = column, y = row)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from P2SAMLogic.method.matching import peak_points, similarity_maps
from P2SAMLogic.models.frames import ImageFrame

C, G = 8, 16


def _basis(i: int) -> torch.Tensor:
    v = torch.zeros(C)
    v[i] = 1.0
    return v


def _features_with_cells(cells: dict) -> torch.Tensor:
    """``C x G x G`` features: every cell is e1 (times a varying positive norm), except the given cells."""
    f = _basis(1)[:, None, None] * torch.linspace(0.5, 3.0, G * G).reshape(1, G, G)
    for (r, c), vec in cells.items():
        f[:, r, c] = vec
    return f


def _cell_centre_xy(frame: ImageFrame, r: int, c: int) -> np.ndarray:
    stride = frame.input_size / G
    return frame.to_original(np.array([(c + 0.5) * stride, (r + 0.5) * stride]))


def test_similarity_maps_are_cosines():
    f = _features_with_cells({(3, 11): 5.0 * _basis(0), (7, 2): -2.0 * _basis(0)})
    protos = torch.stack([_basis(0), _basis(1)])
    maps = similarity_maps(protos, f)
    assert maps.shape == (2, G, G)
    assert maps[0, 3, 11].item() == pytest.approx(1.0)  # scale of the feature does not matter
    assert maps[0, 7, 2].item() == pytest.approx(-1.0)
    assert maps[0].abs().sum().item() == pytest.approx(2.0)  # all other cells orthogonal
    assert maps[1, 0, 0].item() == pytest.approx(1.0)
    assert maps[1, 3, 11].item() == pytest.approx(0.0)


@pytest.mark.parametrize(
    "shape,cell",
    [
        ((300, 500), (3, 11)),   # wide: valid rows 0..9, all columns
        ((500, 300), (11, 3)),   # tall: all rows, valid columns 0..9
        ((300, 500), (8, 1)),
    ],
)
def test_peak_points_x_is_column_y_is_row(shape, cell):
    r, c = cell
    frame = ImageFrame(original_size=shape, input_size=256)
    f = _features_with_cells({cell: 3.0 * _basis(0)})
    xy = peak_points(similarity_maps(_basis(0)[None], f), frame)
    assert xy.shape == (1, 2) and xy.dtype == np.float64
    expected = _cell_centre_xy(frame, r, c)
    cell_px = frame.input_size / G / frame.scale  # one feature cell in original pixels
    assert abs(xy[0, 0] - expected[0]) <= cell_px, (xy, expected)
    assert abs(xy[0, 1] - expected[1]) <= cell_px, (xy, expected)
    # inside the original image
    assert 0 <= xy[0, 0] <= shape[1] - 1 and 0 <= xy[0, 1] <= shape[0] - 1


def test_peak_points_several_prototypes_and_lowest():
    frame = ImageFrame(original_size=(300, 500), input_size=256)
    cells = {(2, 13): _basis(0), (9, 4): _basis(2), (5, 7): -_basis(0), (1, 1): -_basis(2)}
    f = _features_with_cells(cells)
    protos = torch.stack([_basis(0), _basis(2)])
    maps = similarity_maps(protos, f)
    cell_px = frame.input_size / G / frame.scale
    hi = peak_points(maps, frame)
    lo = peak_points(maps, frame, lowest=True)
    assert hi.shape == lo.shape == (2, 2)
    for got, (r, c) in [(hi[0], (2, 13)), (hi[1], (9, 4)), (lo[0], (5, 7)), (lo[1], (1, 1))]:
        np.testing.assert_allclose(got, _cell_centre_xy(frame, r, c), atol=cell_px)


@pytest.mark.parametrize("size", [256, 1024])
def test_peak_points_ignores_padding(size):
    """A maximum in the padded part of the grid must not be returned (it is outside the image)."""
    frame = ImageFrame(original_size=(300, 500), input_size=size)
    valid = frame.grid_valid(G)
    pad_row = int(np.flatnonzero(~valid[:, 0].numpy())[0]) + 2
    f = _features_with_cells({(pad_row, 5): _basis(0), (4, 6): 0.8 * _basis(0) + 0.6 * _basis(1)})
    xy = peak_points(similarity_maps(_basis(0)[None], f), frame)
    np.testing.assert_allclose(xy[0], _cell_centre_xy(frame, 4, 6), atol=frame.input_size / G / frame.scale)
