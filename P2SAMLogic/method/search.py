"""The search over candidates on one target, for the two prompt modalities: steps 2-5 in order.

Point-prompt models (SAM): one candidate per part count, the three-call cascade, retrieval.
Box-prompt models (LiteMedSAM): part peaks place boxes; two-stage retrieval over centre, then size/aspect.
"""
from __future__ import annotations

import time
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from ..models.base import Embedding
from .boxes import _box_around
from .matching import peak_points, similarity_maps
from .results import Candidate, ReferenceState


class CandidateSearch:
    """Candidates generated, decoded, scored and ranked on one encoded target.

    A part of :class:`~P2SAMLogic.method.segmenter.P2SAMSegmenter` (which inherits it): it reads
    ``self.model`` (a :class:`~P2SAMLogic.models.base.PromptableModel`) and ``self.config`` (a
    :class:`~P2SAMLogic.method.config.P2SAMConfig`) and calls the other steps through ``self``.
    """

    def _point_search(self, ref: ReferenceState, emb: Embedding, timings: Dict[str, float]):
        """Point-prompt models: one candidate per part count, the three-call cascade, retrieval."""
        t = time.perf_counter()
        negatives = self._negative_points(ref, emb).tolist()
        feats = emb.features[0]
        cands = []
        for n in self.part_counts():
            protos = self._prototypes(ref, n)
            pos = peak_points(similarity_maps(protos, feats), emb.frame)
            cands.append(Candidate(parts=len(protos), positive_points=pos.tolist(), negative_points=negatives))
        timings["match"] = time.perf_counter() - t
        t = time.perf_counter()
        logits, iou = self._cascade(emb, cands)
        timings["decode"] = time.perf_counter() - t
        t = time.perf_counter()
        self._score(ref, emb, cands, logits, iou)
        timings["retrieval"] = time.perf_counter() - t
        return cands, logits

    def _box_search(self, ref: ReferenceState, emb: Embedding, timings: Dict[str, float],
                    size: Tuple[float, float], prior: np.ndarray, prior_low: Optional[torch.Tensor] = None,
                    expected_area: Optional[float] = None):
        """Box-prompt models: part peaks place boxes; two-stage retrieval over centre, then size/aspect.

        ``size`` is the reference box's ``(w, h)`` in this image's pixels; ``prior`` the
        reference structure's position here (x, y).
        """
        c = self.config
        shape = emb.frame.original_size
        t = time.perf_counter()
        negatives = self._negative_points(ref, emb).tolist()
        centres = self._box_centres(ref, emb, size, prior)
        timings["match"] = time.perf_counter() - t

        def make(centre, locator, parts, pos, s, tr):
            wh = (size[1] * s, size[0] * s) if tr else (size[0] * s, size[1] * s)
            return Candidate(parts=parts, locator=locator, scale=s, transposed=tr, positive_points=pos.tolist(),
                             negative_points=negatives, box=_box_around(centre, wh, shape).tolist())

        decode_t = score_t = 0.0

        def score(cs: List[Candidate], lg: torch.Tensor, io: torch.Tensor) -> None:
            """Retrieval scores and agreement with the prior of ``cs``, timed into ``score_t``."""
            nonlocal score_t
            t = time.perf_counter()
            self._score(ref, emb, cs, lg, io)
            self._agree(cs, lg, prior_low)
            score_t += time.perf_counter() - t

        t = time.perf_counter()
        cands = [make(*cen, 1.0, False) for cen in centres]
        logits, iou = self._decode_boxes(emb, cands)
        decode_t += time.perf_counter() - t
        score(cands, logits, iou)
        if c.method == "p2sam":
            variants = [(s, False) for s in c.box_scales if s != 1.0]
            if c.transposed_boxes and abs(size[0] - size[1]) > 0.1 * max(size):
                variants += [(s, True) for s in c.box_scales]
            self._select(cands, expected_area)
            order = np.argsort([cd.rank for cd in cands])[: c.stage_two_centres]
            more = [make(*centres[i], s, tr) for i in order if np.isfinite(cands[i].score) for s, tr in variants]
            if more:
                t = time.perf_counter()
                more_logits, more_iou = self._decode_boxes(emb, more)
                decode_t += time.perf_counter() - t
                score(more, more_logits, more_iou)
                cands += more
                logits = torch.cat([logits, more_logits])
                iou = torch.cat([iou, more_iou])
        if c.registered_prompts and prior_low is not None:
            t = time.perf_counter()
            reg, reg_logits, reg_iou = self._registered_candidates(emb, prior, size, prior_low, negatives)
            decode_t += time.perf_counter() - t
            if reg:
                score(reg, reg_logits, reg_iou)
                cands = reg + cands
                logits = torch.cat([reg_logits, logits])
        best = self._select(cands, expected_area)
        if c.refine and np.isfinite(cands[best].score) and not cands[best].locator.startswith("registered"):
            t = time.perf_counter()
            for _ in range(c.refine_steps):
                out = self._refine(emb, logits[best:best + 1])
                if out is None or not bool((out.low_res_logits > 0).any()):
                    break
                logits[best:best + 1] = out.low_res_logits
            decode_t += time.perf_counter() - t
        timings["decode"] = decode_t
        timings["retrieval"] = score_t
        return cands, logits
