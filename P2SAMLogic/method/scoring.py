"""Step 4, scoring (retrieval): each candidate's Wasserstein distances to the reference's foreground and
background features, its agreement with a prior mask, the expected area."""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

import numpy as np
import torch

from ..models.base import Embedding
from .parts import foreground_cells
from .results import Candidate, ReferenceState
from .retrieval import gather_sets, resolve_solver, wasserstein_scores


class CandidateScoring:
    """The measures retrieval ranks candidates by.

    A part of :class:`~P2SAMLogic.method.segmenter.P2SAMSegmenter` (which inherits it): it reads
    ``self.model`` (a :class:`~P2SAMLogic.models.base.PromptableModel`) and ``self.config`` (a
    :class:`~P2SAMLogic.method.config.P2SAMConfig`) and calls the other steps through ``self``.
    """

    def _score(self, ref: ReferenceState, emb: Embedding, cands: List[Candidate],
               logits: torch.Tensor, iou: torch.Tensor) -> None:
        """Set each candidate's Wasserstein scores (lower is better; empty masks get ``inf``).

        All candidates' feature sets are gathered at once on the features' device and scored
        together (:func:`~P2SAMLogic.method.retrieval.wasserstein_scores`): exact transport on the CPU,
        batched Sinkhorn on a GPU (``config.transport`` when set, else ``auto``). Two host
        transfers per call: the IoUs, areas and set sizes, then the scores.
        """
        g = emb.grid
        valid = emb.frame.grid_valid(g).to(logits.device)
        cover = torch.nn.functional.adaptive_avg_pool2d((logits > 0).float(), g)[:, 0] * valid
        feats = emb.features[0]
        cells, weights = foreground_cells(cover)
        stats = torch.stack([iou.float(), cover.sum(dim=(1, 2)), cells.sum(1).float()]).cpu().numpy()
        for i, cd in enumerate(cands):
            cd.predicted_iou = float(stats[0, i])
            cd.area_cells = float(stats[1, i])
        sizes = np.where(stats[1] > 0, stats[2], 0).astype(np.int64)
        sets = gather_sets(feats, cells, weights, sizes, seed=0)
        solver = resolve_solver(getattr(self.config, "transport", "auto"), feats.device)
        fg, bg = wasserstein_scores(sets, [ref.prepared("foreground"), ref.prepared("background")], solver)
        for i, cd in enumerate(cands):
            cd.score = float(fg[i]) if sizes[i] > 0 else math.inf
            cd.background_distance = float(bg[i]) if sizes[i] > 0 else math.inf

    def _score_region(self, ref: ReferenceState, emb: Embedding, region_low: torch.Tensor) -> Tuple[float, float]:
        """Wasserstein distances of the target features under a region (bool ``L x L``) to the reference's
        foreground and background features: scored exactly like a candidate."""
        probe = Candidate(parts=0, locator="prior mask")
        self._score(ref, emb, [probe], region_low[None, None].float() * 2.0 - 1.0, torch.ones(1))
        return probe.score, probe.background_distance

    def _prior_low(self, emb: Embedding, prior_mask: Optional[np.ndarray]) -> Optional[torch.Tensor]:
        """A prior mask (bool ``H x W``, original frame) on the decoder's low-res grid (bool ``L x L``), or None."""
        if prior_mask is None or not np.any(prior_mask):
            return None
        low = 4 * emb.grid
        return torch.nn.functional.adaptive_avg_pool2d(
            emb.frame.mask_to_input(np.asarray(prior_mask, dtype=bool))[None, None], low)[0, 0].to(
            emb.features.device) >= 0.5

    @staticmethod
    def _agree(cands: List[Candidate], logits: torch.Tensor, prior_low: Optional[torch.Tensor]) -> None:
        """Each candidate's Dice with the prior mask on the low-res grid (``prior_low``: bool ``L x L``)."""
        if prior_low is None:
            return
        pred = logits[:, 0] > 0
        inter = (pred & prior_low[None]).sum(dim=(1, 2)).float()
        total = pred.sum(dim=(1, 2)).float() + float(prior_low.sum())
        values = (2.0 * inter / total.clamp(min=1.0)).cpu().tolist()
        for cd, v in zip(cands, values):
            cd.prior_agreement = float(v)

    @staticmethod
    def _expected_area(ref: ReferenceState, emb: Embedding, prior_low: Optional[torch.Tensor]) -> float:
        """The structure's expected area on this target's feature grid (cells): the prior mask's when given
        (3D: the registered prior on this slice), else the reference's, scaled to this image's frame."""
        if prior_low is not None:
            return float(prior_low.sum()) / float((prior_low.shape[-1] / emb.grid) ** 2)
        scale = emb.frame.scale / ref.embedding.frame.scale
        return float(ref.coverage.sum()) * scale * scale
