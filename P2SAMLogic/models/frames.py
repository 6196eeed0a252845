"""Coordinate frames between an original image and a model's square input.

Frames used throughout the package (all pixel coordinates are ``(x, y)``,
``x`` = column, ``y`` = row, origin at the top-left pixel's centre):

* **original**: the image as read from disk or a volume slice, ``H x W``.
* **model input**: the image resized so its longest side is ``input_size``
  (``scale = input_size / max(H, W)``), then zero-padded at the bottom and
  right to ``input_size x input_size``. A point maps as ``p_model = p_orig * scale``
  (the segment-anything convention).
* **feature grid**: the encoder output, ``grid x grid`` cells
  (``grid = input_size / stride``); cell ``(i, j)`` covers model-input pixels
  ``[j*stride, (j+1)*stride) x [i*stride, (i+1)*stride)``.
* **low-res mask**: decoder logits, ``L x L`` with ``L = 4 * grid``, covering the
  padded model input.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class ImageFrame:
    """How one original image sits inside a model's square input.

    Attributes:
        original_size: ``(H, W)`` of the original image, pixels.
        input_size: side ``S`` of the square model input, pixels.
    """

    original_size: Tuple[int, int]
    input_size: int

    @property
    def scale(self) -> float:
        """Model-input pixels per original pixel."""
        return self.input_size / float(max(self.original_size))

    @property
    def resized_size(self) -> Tuple[int, int]:
        """``(h, w)`` of the resized image inside the padded input (before padding)."""
        h, w = self.original_size
        s = self.scale
        return int(h * s + 0.5), int(w * s + 0.5)

    def to_model(self, xy: np.ndarray) -> np.ndarray:
        """Map ``(..., 2)`` or box ``(..., 4)`` XY(XY) coordinates from original to model-input pixels."""
        return np.asarray(xy, dtype=np.float64) * self.scale

    def to_original(self, xy: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`to_model`."""
        return np.asarray(xy, dtype=np.float64) / self.scale

    def mask_to_input(self, mask: np.ndarray) -> torch.Tensor:
        """Resize a binary ``H x W`` mask into the padded model frame.

        Returns a float32 ``S x S`` tensor in ``[0, 1]`` (bilinear, so border
        cells carry partial coverage); padding is 0.
        """
        h, w = self.resized_size
        m = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]
        m = F.interpolate(m, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
        out = torch.zeros((self.input_size, self.input_size), dtype=torch.float32)
        out[:h, :w] = m[0, 0].clamp(0, 1)
        return out

    def grid_valid(self, grid: int) -> torch.Tensor:
        """Bool ``grid x grid``: cells that overlap the (unpadded) image at all."""
        stride = self.input_size / grid
        h, w = self.resized_size
        valid = torch.zeros((grid, grid), dtype=torch.bool)
        valid[: int(np.ceil(h / stride)), : int(np.ceil(w / stride))] = True
        return valid

    def logits_to_original(self, low_res: torch.Tensor) -> torch.Tensor:
        """Upsample decoder logits ``B x C x L x L`` to the original frame ``B x C x H x W``."""
        s = self.input_size
        h, w = self.resized_size
        x = F.interpolate(low_res.float(), size=(s, s), mode="bilinear", align_corners=False)
        x = x[..., :h, :w]
        return F.interpolate(x, size=self.original_size, mode="bilinear", align_corners=False)

    def map_to_input(self, values: torch.Tensor) -> torch.Tensor:
        """Upsample grid maps ``N x g x g`` to the unpadded model input ``N x h x w`` (bilinear)."""
        s = self.input_size
        h, w = self.resized_size
        x = F.interpolate(values[None].float(), size=(s, s), mode="bilinear", align_corners=False)[0]
        return x[:, :h, :w]


def coverage_on_grid(mask_input: torch.Tensor, grid: int) -> torch.Tensor:
    """Fraction of each feature cell covered by a mask in the padded model frame.

    Args:
        mask_input: float ``S x S`` (or ``B x S x S``) in ``[0, 1]``.
        grid: feature-grid side ``g`` (``S`` must be a multiple of ``g``).
    Returns:
        float32 ``g x g`` (or ``B x g x g``) area fractions in ``[0, 1]``.
    """
    squeeze = mask_input.ndim == 2
    x = mask_input[None] if squeeze else mask_input
    out = F.adaptive_avg_pool2d(x[:, None].float(), grid)[:, 0]
    return out[0] if squeeze else out
