"""Matching prototypes to a target: cosine-similarity maps and their peaks.

Frames: ``features`` are ``C x g x g``; maps are ``N x g x g``; points are
``(x, y)`` in original-image pixels (see :mod:`P2SAMLogic.models.frames`).
"""
from __future__ import annotations

import numpy as np
import torch

from ..models.frames import ImageFrame


def similarity_maps(prototypes: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of each prototype (``N x C``, unit) to every cell of ``C x g x g`` → ``N x g x g``."""
    c, g, _ = features.shape
    f = torch.nn.functional.normalize(features.reshape(c, -1).float(), dim=0)
    return (prototypes.float() @ f).reshape(-1, g, g)


def peak_points(maps: torch.Tensor, frame: ImageFrame, lowest: bool = False) -> np.ndarray:
    """The location of each map's maximum (or minimum), in original-image pixels.

    Each ``g x g`` map is upsampled bilinearly to the unpadded model input
    (``h x w``); its arg-max pixel (row ``i``, column ``j``) becomes the point
    ``(x, y) = (j, i) / scale`` in the original image.

    Args:
        maps: float ``N x g x g``.
        frame: the target image's frame.
        lowest: take the minimum instead (PerSAM's negative point).
    Returns:
        float64 ``N x 2`` (x, y).
    """
    up = frame.map_to_input(maps)
    n, h, w = up.shape
    flat = up.reshape(n, -1)
    idx = (flat.argmin(1) if lowest else flat.argmax(1)).cpu().numpy()
    rows, cols = idx // w, idx % w
    xy_model = np.stack([cols, rows], axis=1).astype(np.float64)
    xy = frame.to_original(xy_model)
    hh, ww = frame.original_size
    xy[:, 0] = np.clip(xy[:, 0], 0, ww - 1)
    xy[:, 1] = np.clip(xy[:, 1], 0, hh - 1)
    return xy
