"""What the 2D method keeps and returns: the prepared reference, the candidates tried on a target, the result.

Frames: masks ``H x W`` bool in the original image frame; points ``(x, y)`` and boxes ``(x0, y0, x1, y1)``
in original-image pixels; feature-grid arrays ``g x g``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from ..models.base import Embedding
from .parts import PooledFeatures
from .retrieval import PreparedSet, prepare_set


@dataclass
class ReferenceState:
    """Everything derived from the reference image and mask, computed once and reused per target.

    Attributes:
        embedding: the reference image's encoding.
        mask: ``H x W`` bool reference mask (original frame).
        coverage: float ``g x g`` mask coverage of each feature cell.
        foreground / background: pooled features inside the mask / around it.
        box: ``(x0, y0, x1, y1)`` of the mask, original pixels (inclusive extent + 1).
        relative_size: ``(w, h)`` of the box divided by the image's longest side.
        window: ``(x0, y0, x1, y1)`` of the reference crop in the full reference
            image when a search window is used (``mask``, ``box``, ``embedding`` are
            then those of the crop), else None.
        full_shape / full_box: the full reference image's ``(H, W)`` and the mask's box in it.
        prototypes / negatives: part prototypes per part count, filled lazily.
        clusterings: how many k-means runs were made (one per part count, ever).
    """

    embedding: Embedding
    mask: np.ndarray
    coverage: torch.Tensor
    foreground: PooledFeatures
    background: Optional[PooledFeatures]
    box: np.ndarray
    relative_size: Tuple[float, float]
    window: Optional[np.ndarray] = None
    full_shape: Tuple[int, int] = (0, 0)
    full_box: Optional[np.ndarray] = None
    prototypes: Dict[int, torch.Tensor] = field(default_factory=dict)
    negatives: Dict[int, torch.Tensor] = field(default_factory=dict)
    clusterings: int = 0
    timings: Dict[str, float] = field(default_factory=dict)
    _prepared: Dict[str, Optional[PreparedSet]] = field(default_factory=dict, repr=False)

    def prepared(self, which: str) -> Optional[PreparedSet]:
        """``foreground`` / ``background`` features prepared for transport problems (once)."""
        if which not in self._prepared:
            pooled = self.foreground if which == "foreground" else self.background
            self._prepared[which] = None if pooled is None else prepare_set(pooled.features, pooled.weights, seed=1)
        return self._prepared[which]


@dataclass
class Candidate:
    """One prompt set tried on a target, and how it scored."""

    parts: int
    locator: str = "points"
    scale: float = 1.0
    transposed: bool = False
    positive_points: List[List[float]] = field(default_factory=list)
    negative_points: List[List[float]] = field(default_factory=list)
    box: Optional[List[float]] = None
    score: float = math.inf
    background_distance: float = math.inf
    predicted_iou: float = 0.0
    area_cells: float = 0.0
    prior_agreement: float = math.nan
    rank: float = math.inf

    def shift(self, offset: np.ndarray) -> None:
        """Move the prompts by ``offset`` (dx, dy) pixels (from a window's frame to the full image's)."""
        dx, dy = float(offset[0]), float(offset[1])
        self.positive_points = [[p[0] + dx, p[1] + dy] for p in self.positive_points]
        self.negative_points = [[p[0] + dx, p[1] + dy] for p in self.negative_points]
        if self.box is not None:
            self.box = [self.box[0] + dx, self.box[1] + dy, self.box[2] + dx, self.box[3] + dy]

    def summary(self) -> dict:
        d = asdict(self)
        for k in ("score", "background_distance", "rank", "prior_agreement"):
            d[k] = None if not math.isfinite(d[k]) else round(d[k], 4)
        d["predicted_iou"] = round(self.predicted_iou, 4)
        for k in ("positive_points", "negative_points"):
            d[k] = [[round(v, 1) for v in p] for p in d[k]]
        if d["box"] is not None:
            d["box"] = [round(v, 1) for v in d["box"]]
        return d


@dataclass
class SegmentationResult:
    """The outcome for one target image.

    Attributes:
        mask: ``H x W`` bool in the target's original frame.
        chosen: the winning :class:`Candidate` (its prompts are what to draw).
        candidates: every candidate tried, with its score.
        score: the winner's Wasserstein distance (lower is better; ``inf`` = empty).
        crop_box: ``(x0, y0, x1, y1)`` of the second-pass crop, or None.
        timings: seconds per stage.
        prior_score / prior_background: with a ``prior_mask``: the Wasserstein distances of the
            target's features under that mask to the reference foreground / background (the same
            measures as a candidate's ``score`` / ``background_distance``), else NaN.
    """

    mask: np.ndarray
    chosen: Candidate
    candidates: List[Candidate]
    score: float
    crop_box: Optional[List[float]]
    timings: Dict[str, float]
    window: Optional[List[float]] = None
    prior_score: float = math.nan
    prior_background: float = math.nan
    candidate_masks: Optional[List[np.ndarray]] = field(default=None, repr=False)

    def summary(self) -> dict:
        return {
            "chosen": self.chosen.summary(),
            "score": None if not math.isfinite(self.score) else round(self.score, 4),
            "area_pixels": int(self.mask.sum()),
            "crop_box": None if self.crop_box is None else [round(v, 1) for v in self.crop_box],
            "search_window": None if self.window is None else [round(v, 1) for v in self.window],
            "candidates": [c.summary() for c in self.candidates],
            "timings_s": {k: round(v, 4) for k, v in self.timings.items()},
        }
