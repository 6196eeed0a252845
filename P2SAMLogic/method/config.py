"""The parameters of P²SAM in 2D (:class:`P2SAMConfig`), all recorded in every result's provenance."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

from ..errors import InputError


METHODS = ("p2sam", "persam", "no-retrieval")


@dataclass
class P2SAMConfig:
    """Parameters of the method (all recorded in every result's provenance).

    Attributes:
        method: ``p2sam`` (retrieval over part counts and, for box models, box
            sizes), ``persam`` (one prototype, one positive and one negative
            prompt), or ``no-retrieval`` (fixed ``max_parts`` parts, one candidate).
        search_context: search a window instead of the whole image: the
            reference is cropped to its structure's box grown by this many times
            its size on each side, and each target is searched in a window of the
            same pixel size at the same relative position (a follow-up of the same
            patient or scene). ``None``: whole images (objects anywhere).
        max_parts: largest number of foreground parts ``n`` (candidates ``1..n``).
        negative_parts: number of background parts ``m`` (negative prompts).
        background_context: background region = structure box grown by this
            fraction of its size on each side (feature grid).
        box_scales: box-model candidates: reference box size times these.
        transposed_boxes: box-model candidates also with width and height swapped.
        locators: where box-model candidates are centred: ``median`` of the
            part peaks (per part count), ``density`` = peak of the part-similarity
            map averaged over a reference-sized window (per part count),
            ``prior`` = the reference box's relative position in the target.
        stage_two_centres: box models: the best centres of stage one (one
            reference-sized box each) that get every scale/aspect in stage two.
        refine: box models: a second decoder call with the box of the first
            mask and its logits as ``mask_input``.
        refine_steps: how many such refinements the winner gets.
        crop_pass: re-encode a crop around the chosen mask and decode again at
            the higher resolution (for small structures).
        crop_context: crop = chosen box grown by this fraction of its size per side.
        negative_filter: drop predicted cells whose features match a background
            part better than every foreground part.
        prompts: ``auto`` (the model's own modality: points for SAM, boxes for
            LiteMedSAM), or force ``points`` / ``box`` (for comparisons).
        local_decode: box prompts: decode each box on the feature-grid region
            around it (the box grown by half its size, at least 16 cells) instead
            of the whole grid -- several times cheaper per candidate.
        decode_context: that region is the box grown by this fraction of its size per side.
        local_refine: decode the refinement call on such a region too. 3D demo case:
            ``decode_context=0.25`` with ``local_refine`` cut decoding time by ~30 % but lost
            0.004-0.01 GTV Dice over the 3D benchmark's cases, so both stay off by default.
        batch_region_slack: candidates whose regions are equal share one batched decoder call
            (same results, cheaper per candidate on a CPU); with a number, also candidates whose
            union region is at most ``1 + slack`` times the largest of theirs (decoded on that
            union: more context, slightly different masks). 3D uses 0.25 (Dice unchanged on the
            3D benchmark); in 2D it lowered CVC-612 from 0.736 to 0.697, so None there.
        selection: how retrieval picks the winner. ``wasserstein``: the smallest
            Wasserstein distance to the reference foreground (the paper's rule).
            ``rank3``: the best rank sum of three measures -- that distance, the
            same distance divided by the distance to the reference *background*
            parts (the negatives act as contrast), and the decoder's predicted
            IoU. ``rank``: those three, the distance to the background itself and
            the closeness of the candidate's area to the expected area (see
            :meth:`P2SAMSegmenter._select`). ``auto``: ``rank`` for box prompts
            (measured better for LiteMedSAM, docs/accuracy.md), ``wasserstein`` for
            point prompts.
        rank_prior_agreement: with a ``prior_mask`` given to :meth:`P2SAMSegmenter.segment`
            (3D: the registered prior on this slice), the rank sum gets a fourth term: each
            candidate's Dice with that mask (on the decoder's low-res grid).
        box_negatives: box models: each box is decoded together with the negative prompts (the
            background parts' peaks as negative points; the paper's negatives). Off by default:
            LiteMedSAM was trained with boxes alone (ablation in docs/ablation.md).
        registered_prompts: with a ``prior_mask`` (3D: the registered contour on this slice), candidates
            prompted by that contour itself join the retrieval: ``box`` (its tight box), ``box refined``
            (that decode, re-prompted with its own mask's box and logits) and ``box+mask`` (the box with
            the registered mask as the decoder's mask input, at +-``mask_prompt_logit``); see
            :meth:`P2SAMSegmenter._registered_candidates`.
        keep_candidate_masks: every candidate's mask is returned too (``candidate_masks`` of the
            result; for the benchmark's "selected vs best generated" analysis, not for production).
        kmeans_init: k-means++ restarts; seed: their random seed.
    """

    method: str = "p2sam"
    search_context: Optional[float] = 2.0
    max_parts: int = 5
    negative_parts: int = 1
    background_context: float = 1.0
    box_scales: Tuple[float, ...] = (0.8, 1.0, 1.25)
    transposed_boxes: bool = True
    locators: Tuple[str, ...] = ("median", "density", "prior")
    stage_two_centres: int = 3
    refine: bool = True
    refine_steps: int = 1
    crop_pass: bool = False
    crop_context: float = 1.0
    negative_filter: bool = False
    prompts: str = "auto"
    local_decode: bool = True
    decode_context: float = 0.5
    local_refine: bool = False
    batch_region_slack: Optional[float] = None
    selection: str = "auto"
    rank_prior_agreement: bool = False
    box_negatives: bool = False
    keep_candidate_masks: bool = False
    registered_prompts: Tuple[str, ...] = ()
    mask_prompt_logit: float = 4.0
    kmeans_init: int = 10
    seed: int = 0

    def validate(self) -> "P2SAMConfig":
        if self.method not in METHODS:
            raise InputError("--method", f"unknown method '{self.method}'; expected one of {', '.join(METHODS)}")
        if not 1 <= int(self.max_parts) <= 16:
            raise InputError("--max-parts", f"must be between 1 and 16, got {self.max_parts}")
        if not 0 <= int(self.negative_parts) <= 16:
            raise InputError("--negative-parts", f"must be between 0 and 16, got {self.negative_parts}")
        if self.prompts not in ("auto", "points", "box"):
            raise InputError("prompts", f"must be auto, points or box, got '{self.prompts}'")
        if self.search_context is not None and not 0 <= self.search_context <= 50:
            raise InputError("--search-context", f"must be between 0 and 50, got {self.search_context}")
        if self.selection not in ("auto", "rank", "rank3", "wasserstein"):
            raise InputError("selection", f"must be auto, rank, rank3 or wasserstein, got '{self.selection}'")
        if not self.box_scales or min(self.box_scales) <= 0:
            raise InputError("box_scales", f"must be positive numbers, got {self.box_scales}")
        return self
