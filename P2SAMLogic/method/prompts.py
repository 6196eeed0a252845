"""Step 2, prompt generation: where the reference's parts match on a target (positive points, box centres),
the background parts' matches (negative points), and the prior position of the structure."""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch

from ..models.base import Embedding
from .matching import peak_points, similarity_maps
from .results import ReferenceState


class PromptGeneration:
    """Prompts on a target: part peaks, box centres (median, density, prior), negative points.

    A part of :class:`~P2SAMLogic.method.segmenter.P2SAMSegmenter` (which inherits it): it reads
    ``self.model`` (a :class:`~P2SAMLogic.models.base.PromptableModel`) and ``self.config`` (a
    :class:`~P2SAMLogic.method.config.P2SAMConfig`) and calls the other steps through ``self``.
    """

    def prior_window(self, ref: ReferenceState, shape: Tuple[int, int]) -> Optional[np.ndarray]:
        """The target search window for a windowed reference: the reference window's size, centred
        at the reference structure's relative position in an image of ``shape`` ``(H, W)``."""
        if ref.window is None:
            return None
        centre = self._prior_centre(ref, shape)
        w, h = ref.window[2] - ref.window[0], ref.window[3] - ref.window[1]
        x0 = int(np.clip(round(centre[0] - w / 2.0), 0, max(0, shape[1] - w)))
        y0 = int(np.clip(round(centre[1] - h / 2.0), 0, max(0, shape[0] - h)))
        return np.array([x0, y0, min(shape[1], x0 + w), min(shape[0], y0 + h)], dtype=np.float64)

    @staticmethod
    def _prior_centre(ref: ReferenceState, shape: Tuple[int, int]) -> np.ndarray:
        """Centre of the reference box at the same relative position in an image of ``shape`` (x, y)."""
        hh, ww = ref.full_shape
        b = ref.full_box
        return np.array([(b[0] + b[2]) / 2.0 / ww * shape[1], (b[1] + b[3]) / 2.0 / hh * shape[0]])

    def _negative_points(self, ref: ReferenceState, emb: Embedding) -> np.ndarray:
        feats = emb.features[0]
        if self.config.method == "persam":
            return peak_points(similarity_maps(self._prototypes(ref, 1), feats), emb.frame, lowest=True)
        neg = self._negatives(ref, self.config.negative_parts)
        if neg is None:
            return np.zeros((0, 2))
        return peak_points(similarity_maps(neg, feats), emb.frame)

    def _box_centres(self, ref: ReferenceState, emb: Embedding, size: Tuple[float, float], prior: np.ndarray):
        """Candidate box centres ``(xy, locator, parts, part_peaks)`` for box-prompt models, de-duplicated."""
        c = self.config
        feats = emb.features[0]
        frame = emb.frame
        out = []
        for n in self.part_counts():
            protos = self._prototypes(ref, n)
            sims = similarity_maps(protos, feats)
            pos = peak_points(sims, frame)
            if c.method == "persam":
                out.append((pos[0], "peak", len(protos), pos))
                continue
            if "median" in c.locators or c.method == "no-retrieval":
                out.append((np.median(pos, axis=0), "median", len(protos), pos))
            if "density" in c.locators and c.method == "p2sam":
                out.append((self._density_peak(sims, frame, size), "density", len(protos), pos))
        if "prior" in c.locators and c.method == "p2sam":
            out.append((np.asarray(prior, dtype=np.float64), "prior", 0, np.zeros((0, 2))))
        unique = []
        radius = 0.2 * min(size)
        for item in out:
            if all(np.linalg.norm(item[0] - u[0]) > radius for u in unique):
                unique.append(item)
        return unique

    @staticmethod
    def _density_peak(sims: torch.Tensor, frame, size: Tuple[float, float]) -> np.ndarray:
        """Centre of the reference-sized window with the highest mean best-part similarity."""
        g = sims.shape[-1]
        stride = frame.input_size / g
        kw = max(1, int(round(size[0] * frame.scale / stride))) | 1
        kh = max(1, int(round(size[1] * frame.scale / stride))) | 1
        best = sims.max(0).values * frame.grid_valid(g).to(sims.device)
        dens = torch.nn.functional.avg_pool2d(best[None, None], (kh, kw), stride=1, padding=(kh // 2, kw // 2))
        return peak_points(dens[0], frame)[0]
