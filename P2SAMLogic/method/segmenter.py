"""P²SAM in 2D: part-aware positive prompts, negative background prompts, retrieval.

Usage::

    model = load_model("litemedsam")
    seg = P2SAMSegmenter(model, P2SAMConfig())
    ref = seg.prepare_reference(ref_rgb, ref_mask)      # encode + cluster once
    for target in targets:
        result = seg.segment(ref, target)               # encode target, prompt, decode, retrieve

:class:`P2SAMSegmenter` composes the method's steps, one module each:

1. reference preparation (:mod:`.reference`): encode, pool, cluster into parts, once per reference;
2. prompt generation (:mod:`.prompts`): part peaks, box centres, negative points on a target;
3. candidate decoding (:mod:`.decoding`): the decoder on each candidate's prompts, refinements;
4. scoring (:mod:`.scoring`): Wasserstein retrieval distances, agreement with a prior mask;
5. selection (:mod:`.selection`): the winner from the scores.

:mod:`.search` runs steps 2-5 on one encoded target; this module encodes the target, places it in
its search window and assembles the :class:`~.results.SegmentationResult`.

Frames: images are ``H x W x 3`` uint8 RGB and masks ``H x W`` bool, both in
the original pixel frame; points ``(x, y)`` and boxes ``(x0, y0, x1, y1)`` are in
original-image pixels (see :mod:`P2SAMLogic.models.frames`).
"""
from __future__ import annotations

import math
import time
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from ..errors import InputError
from ..models.base import PromptableModel
from .boxes import box_region, mask_box, union_region
from .config import METHODS, P2SAMConfig
from .decoding import CandidateDecoding
from .prompts import PromptGeneration
from .reference import ReferencePreparation
from .results import Candidate, ReferenceState, SegmentationResult
from .scoring import CandidateScoring
from .search import CandidateSearch
from .selection import CandidateSelection

__all__ = ["METHODS", "Candidate", "P2SAMConfig", "P2SAMSegmenter", "ReferenceState", "SegmentationResult",
           "box_region", "mask_box", "union_region"]


class P2SAMSegmenter(ReferencePreparation, PromptGeneration, CandidateSearch, CandidateDecoding, CandidateScoring,
                     CandidateSelection):
    """P²SAM on one promptable model; see the module docstring for usage.

    Public: :meth:`prepare_reference`, :meth:`segment`, :meth:`segment_with_box`, :meth:`prior_window`,
    :meth:`part_counts`, :attr:`prompt_modality`; the steps' methods come from the step classes.
    """

    def __init__(self, model: PromptableModel, config: Optional[P2SAMConfig] = None) -> None:
        self.model = model
        self.config = (config or P2SAMConfig()).validate()

    def segment(self, ref: ReferenceState, image: np.ndarray,
                window: Optional[Sequence[float]] = None,
                prior_box: Optional[Sequence[float]] = None,
                prior_mask: Optional[np.ndarray] = None) -> SegmentationResult:
        """Segment the reference's structure in one target image (``H x W x 3`` uint8 RGB).

        Args:
            window: ``(x0, y0, x1, y1)`` region of the target to search (target pixels);
                default: the whole image, or :meth:`prior_window` for a windowed reference.
            prior_box: ``(x0, y0, x1, y1)`` where the structure is expected in the target
                (target pixels; e.g. the registered prior contour's box in 3D). Box models
                centre their "prior" candidate on it and take its size as the base box size;
                default: the reference box's relative position and size.
            prior_mask: bool ``H x W`` (target frame): where the structure is expected (3D: the
                registered prior on this slice). Scored like a candidate (``prior_score``,
                ``prior_background`` of the result) and, with ``rank_prior_agreement``, each
                candidate's agreement with it joins the ranking. Only without a search window.
        """
        full_shape = image.shape[:2]
        if window is None:
            window = self.prior_window(ref, full_shape)
        offset = np.zeros(2)
        if window is not None:
            x0, y0, x1, y1 = [int(round(v)) for v in window]
            x0, y0 = max(0, x0), max(0, y0)
            x1, y1 = min(full_shape[1], x1), min(full_shape[0], y1)
            if x1 - x0 < 2 or y1 - y0 < 2:
                raise InputError("window", f"search window {list(window)} does not overlap the target image")
            image = np.ascontiguousarray(image[y0:y1, x0:x1])
            offset = np.array([x0, y0], dtype=np.float64)
        if prior_mask is not None:
            prior_mask = np.asarray(prior_mask).astype(bool)
            if prior_mask.shape != tuple(full_shape):
                raise InputError("prior mask", f"shape {prior_mask.shape} differs from the image's {tuple(full_shape)}")
            if window is not None:
                y0_, y1_, x0_, x1_ = int(offset[1]), int(offset[1]) + image.shape[0], int(offset[0]), int(offset[0]) + image.shape[1]
                prior_mask = np.ascontiguousarray(prior_mask[y0_:y1_, x0_:x1_])
        result = self._segment_view(ref, image, full_shape, offset, prior_box, prior_mask)
        if window is not None:
            full = np.zeros(full_shape, dtype=bool)
            full[y0:y1, x0:x1] = result.mask
            result.mask = full
            if result.candidate_masks is not None:
                placed = []
                for m in result.candidate_masks:
                    f = np.zeros(full_shape, dtype=bool)
                    f[y0:y1, x0:x1] = m
                    placed.append(f)
                result.candidate_masks = placed
            result.window = [float(x0), float(y0), float(x1), float(y1)]
            for cd in result.candidates:
                cd.shift(offset)
            if result.crop_box is not None:
                result.crop_box = (np.array(result.crop_box) + np.tile(offset, 2)).tolist()
        return result

    def _segment_view(self, ref: ReferenceState, image: np.ndarray, full_shape: Tuple[int, int],
                      offset: np.ndarray, prior_box: Optional[Sequence[float]] = None,
                      prior_mask: Optional[np.ndarray] = None) -> SegmentationResult:
        timings: Dict[str, float] = {}
        t = time.perf_counter()
        emb = self.model.encode([image])[0]
        timings["encode"] = time.perf_counter() - t
        if ref.window is not None:  # same pixel size as the reference crop
            size = (ref.box[2] - ref.box[0], ref.box[3] - ref.box[1])
        else:
            longest = float(max(image.shape[:2]))
            size = (ref.relative_size[0] * longest, ref.relative_size[1] * longest)
        prior = self._prior_centre(ref, full_shape) - offset
        if prior_box is not None:
            pb = np.asarray(prior_box, dtype=np.float64)
            prior = np.array([(pb[0] + pb[2]) / 2.0, (pb[1] + pb[3]) / 2.0]) - offset
            size = (max(1.0, pb[2] - pb[0]), max(1.0, pb[3] - pb[1]))
        prior_low = self._prior_low(emb, prior_mask)
        expected = self._expected_area(ref, emb, prior_low)
        if self.prompt_modality == "points":
            candidates, logits = self._point_search(ref, emb, timings)
            self._agree(candidates, logits, prior_low)
        else:
            candidates, logits = self._box_search(ref, emb, timings, size, prior, prior_low, expected)
        best = self._select(candidates, expected)
        chosen = candidates[best]
        mask = emb.frame.logits_to_original(logits[best:best + 1])[0, 0].cpu().numpy() > 0
        if self.config.negative_filter:
            mask &= self._negative_keep(ref, emb, max(1, chosen.parts))
        crop_box = None
        if self.config.crop_pass and mask.any():
            t = time.perf_counter()
            mask, crop_box = self._crop_pass(image, mask, timings)
            timings["crop_total"] = time.perf_counter() - t
        timings["total"] = sum(v for k, v in timings.items()
                               if k in ("encode", "match", "decode", "retrieval", "crop_total"))
        result = SegmentationResult(mask=mask, chosen=chosen, candidates=candidates, score=chosen.score,
                                    crop_box=None if crop_box is None else crop_box.tolist(), timings=timings)
        if self.config.keep_candidate_masks:
            result.candidate_masks = list(emb.frame.logits_to_original(logits)[:, 0].cpu().numpy() > 0)
        if prior_low is not None:
            t = time.perf_counter()
            result.prior_score, result.prior_background = self._score_region(ref, emb, prior_low)
            timings["retrieval"] = timings.get("retrieval", 0.0) + time.perf_counter() - t
        return result

    def segment_with_box(self, image: np.ndarray, box: Sequence[float], ref: Optional[ReferenceState] = None,
                         prior_mask: Optional[np.ndarray] = None, refine: Optional[bool] = None,
                         locator: str = "given box") -> SegmentationResult:
        """Decode one given box (``x0, y0, x1, y1`` original pixels), refined as ``config.refine`` says
        (or ``refine``), with the crop pass when configured.

        The oracle-box ceiling of the benchmarks, a user-drawn box in Slicer, and in 3D the registered
        contour's box on each slice. With ``ref`` (a prepared reference) the mask is scored like a
        retrieval candidate (its Wasserstein distances to the reference's foreground and background
        features); with ``prior_mask`` (bool ``H x W``: the registered contour on this slice) that
        region is scored too (``prior_score`` / ``prior_background`` of the result): the evidence of
        the 3D decision.
        """
        timings: Dict[str, float] = {}
        t = time.perf_counter()
        emb = self.model.encode([image])[0]
        timings["encode"] = time.perf_counter() - t
        t = time.perf_counter()
        cand = Candidate(parts=0, locator=locator, box=[float(v) for v in box])
        logits, iou = self._decode_boxes(emb, [cand])
        if self.config.refine if refine is None else refine:
            out = self._refine(emb, logits)
            if out is not None:
                logits, iou = out.low_res_logits, out.iou
        timings["decode"] = time.perf_counter() - t
        mask = emb.frame.logits_to_original(logits[:1])[0, 0].cpu().numpy() > 0
        crop_box = None
        if self.config.crop_pass and mask.any():
            mask, crop_box = self._crop_pass(image, mask, timings)
        cand.predicted_iou = float(iou[0])
        result = SegmentationResult(mask, cand, [cand], math.nan, None if crop_box is None else crop_box.tolist(),
                                    timings)
        if ref is not None:
            t = time.perf_counter()
            self._score(ref, emb, [cand], logits, iou)
            result.score = cand.score
            prior_low = self._prior_low(emb, prior_mask)
            if prior_low is not None:
                self._agree([cand], logits, prior_low)
                result.prior_score, result.prior_background = self._score_region(ref, emb, prior_low)
            timings["retrieval"] = time.perf_counter() - t
        return result
