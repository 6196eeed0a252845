"""Step 5, selection: the winning candidate from its scores (the Wasserstein distance alone, or a rank sum),
and the optional filter of the winner's cells that match the background better."""
from __future__ import annotations

import math
from typing import List, Optional

import numpy as np
import torch
from scipy.stats import rankdata

from ..models.base import Embedding
from .matching import similarity_maps
from .results import Candidate, ReferenceState


class CandidateSelection:
    """Which candidate wins.

    A part of :class:`~P2SAMLogic.method.segmenter.P2SAMSegmenter` (which inherits it): it reads
    ``self.model`` (a :class:`~P2SAMLogic.models.base.PromptableModel`) and ``self.config`` (a
    :class:`~P2SAMLogic.method.config.P2SAMConfig`) and calls the other steps through ``self``.
    """

    def _select(self, cands: List[Candidate], expected_area: Optional[float] = None) -> int:
        """Index of the winning candidate; sets each candidate's ``rank`` (lower is better, ``inf`` = empty).

        ``rank`` (box prompts' default) is the sum of five ranks: the Wasserstein distance to the
        reference foreground (low), its ratio to the distance to the reference background (low), the
        distance to the background itself (high), the decoder's predicted IoU (high) and, with
        ``expected_area``, the closeness of the candidate's area to it (``|log(area / expected)|``).
        Measured on the 2D development sets (Testing/Benchmarks/benchmark_selection.py, docs/accuracy.md):
        CVC-612 0.739 -> 0.779, PerSeg 0.664 -> 0.763, 4D-Lung pair unchanged, against the first three
        terms alone (``rank3``).
        """
        mode = self.config.selection
        if mode == "auto":
            mode = "wasserstein" if self.prompt_modality == "points" else "rank"
        ok = [i for i, cd in enumerate(cands) if math.isfinite(cd.score)]
        for cd in cands:
            cd.rank = math.inf
        if not ok:
            return 0
        w = np.array([cands[i].score for i in ok])
        if mode == "wasserstein":
            ranks = rankdata(w)
        else:
            bg = np.array([cands[i].background_distance for i in ok])
            contrast = np.where(np.isfinite(bg), w / np.maximum(bg, 1e-12), w)
            iou = np.array([cands[i].predicted_iou for i in ok])
            ranks = rankdata(w) + rankdata(contrast) + rankdata(-iou)
            if mode == "rank":
                if np.all(np.isfinite(bg)):
                    ranks = ranks + rankdata(-bg)
                if expected_area is not None and expected_area > 0:
                    area = np.array([max(cands[i].area_cells, 1e-6) for i in ok])
                    ranks = ranks + rankdata(np.abs(np.log(area / expected_area)))
            agree = np.array([cands[i].prior_agreement for i in ok])
            if self.config.rank_prior_agreement and np.all(np.isfinite(agree)):
                ranks = ranks + rankdata(-agree)
        for i, r in zip(ok, ranks):
            cands[i].rank = float(r)
        return ok[int(np.argmin(ranks))]

    def _negative_keep(self, ref: ReferenceState, emb: Embedding, parts: int) -> np.ndarray:
        neg = self._negatives(ref, max(1, self.config.negative_parts))
        if neg is None:
            return np.ones(emb.frame.original_size, dtype=bool)
        feats = emb.features[0]
        fg = similarity_maps(self._prototypes(ref, parts), feats).max(0).values
        bg = similarity_maps(neg, feats).max(0).values
        keep = (fg >= bg).float()[None, None]
        up = emb.frame.logits_to_original(torch.nn.functional.interpolate(keep, scale_factor=4) - 0.5)
        return up[0, 0].cpu().numpy() > 0
