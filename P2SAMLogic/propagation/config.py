"""The parameters of :func:`~.pipeline.propagate` (:class:`PropagationConfig`), all recorded in every
output's provenance, and the methods it runs."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import List, Optional, Tuple

from ..errors import InputError
from .decide import DecisionRule
from .registration import DEFORMABLE_METHODS
from .scale import EncodingScale

#: ``p2sam``: the method; ``registered-box``: the model with the registered prior's box on each slice
#: (a baseline); ``deformable``: registration only (rigid + deformable); ``rigid``: rigid registration only
METHODS = ("p2sam", "registered-box", "deformable", "rigid")

DECISION_MODES = ("evidence", "model")

PROPOSAL_MODES = ("registered-first", "search")

#: methods that run no model (registration only)
REGISTRATION_ONLY = ("deformable", "rigid")


def needs_model(method: str) -> bool:
    """Whether ``method`` runs a segmentation model (everything but the registration-only baselines)."""
    return method not in REGISTRATION_ONLY


#: the default per-slice ``trust_score_ratio`` by encoding: the whole slice (MR) / a window around the
#: structure (CT), chosen on the development sets (docs/accuracy.md, "Choosing the decision thresholds")
TRUST_SCORE_RATIO = {"whole": 1.2, "window": 1.05}
#: the default part gate ``gate_score_ratio`` (low, high) by encoding, chosen the same way
GATE_SCORE_RATIO = {"whole": (1.15, 1.4), "window": (0.95, 1.05)}


@dataclass
class PropagationConfig:
    """Parameters of :func:`propagate` (all recorded in the output's provenance).

    Attributes:
        segments: names of the prior segments to propagate, in this order (None: all).
        method: see :data:`METHODS`.
        deformable: the deformable registration stage: ``auto`` (demons for same-modality pairs,
            B-spline across modalities), ``demons``, ``bspline`` or ``none`` (rigid only).
        decision: ``evidence`` (default: per slice, the model where the evidence trusts it, else
            the registered prior) or ``model`` (every non-empty proposal is kept: no fallback).
        trust_iou, trust_agreement, trust_score_ratio: the per-slice evidence thresholds
            (``trust_score_ratio`` None: :data:`TRUST_SCORE_RATIO` by the resolved encoding scale);
            gate_score_ratio: the part-level gate (does the model see this structure at all?; None:
            :data:`GATE_SCORE_RATIO` by the resolved encoding scale);
            end_absent_iou: at the ends of the registered extent, slices whose proposal has a lower
            predicted IoU are empty (the structure ends earlier); see :mod:`P2SAMLogic.propagation.decide`.
        ring_outer: a ring's filled outer region from ``registered`` (default: LiteMedSAM, prompted with a
            box around a ring, segments the bright cavity inside it; on the cardiac development set the
            registered outer contour minus the model's cavity is the best ring) or ``model``.
        followup_references: slices where the model was not trusted get a second proposal with a
            confidently segmented neighbouring follow-up slice as the reference
            (:func:`P2SAMLogic.propagation.slices.followup_pass`), kept where the decision rule trusts it.
        ring_area_ratio: a ring's outer region takes the model's proposal only where its area is
            within ``[r, 1/r]`` times the registered outer area (0 turns the check off).
        decompose: rings and several-piece structures are propagated part by part (see
            :mod:`P2SAMLogic.propagation.structures`); False: every structure as one blob.
        rank_prior_agreement: candidates' agreement with the registered prior joins P²SAM's
            retrieval rank sum.
        max_parts: largest foreground part count tried by P²SAM's retrieval.
        proposals: how slices inside the registered extent are proposed: ``registered-first`` (the
            registered contour's box at the chosen scale, scored against the reference) or ``search``
            (P²SAM's part-prompt candidates and retrieval); see :func:`P2SAMLogic.propagation.slices.propose_slices`.
        registered_prompts: with ``search``, candidates prompted by the registered contour itself join
            P²SAM's part prompts (see :class:`P2SAMLogic.method.segmenter.P2SAMConfig`).
        negative_parts: background parts (negative prompts / contrast of the retrieval).
        scale: what the model sees of each slice (:class:`P2SAMLogic.propagation.scale.EncodingScale`): ``auto`` (the
            whole slice for MR, a square of 4 x the structure's box for CT: measured on the development
            sets, docs/ablation.md), ``whole`` (the whole slice, as LiteMedSAM was trained; one encoding
            per slice shared by every structure), ``ctxC[:zoomZ]`` (a square of C x the structure's
            box, zoom capped at Z) or ``crop`` (the box + ``roi_margin_mm`` per side, at least
            ``min_roi_mm``: the former ROI).
        roi_margin_mm, min_roi_mm: the ``crop`` scale's margin per side and smallest side.
        slice_margin_mm: slices examined beyond the registered prior's extent, each side.
        registration_margin_mm: rigid registration metric region = structures grown by this.
        intensity_window: ``(low, high)`` in scanner units; None: CT ``[-910, 590]`` HU,
            MR 0.5-99.5 percentiles.
        presence_threshold: beyond the registered extent a slice is kept when the proposal's
            Wasserstein distance to the reference foreground divided by its distance to the
            reference background is below this.
        prior_weight: where the model is trusted, the output contour is the zero level of
            ``(1 - w) * SDF(model) + w * SDF(registered prior)`` (signed distances in mm).
            0 = the model's mask alone, 1 = the registered prior alone.
        cleanup_tolerance_mm: 3D components must touch the registered prior grown by this.
        qa_flag_below: model slices whose QA score is below this are flagged for review.
        confirm_agreement: a slice that kept the registered contour is flagged unless the model's
            own proposal there agrees with it (Dice at least this): the model then confirms the
            registration, and the slice needs no more attention than any other.
        min_overlap: the fraction of a prior segment that must land inside the follow-up's
            field of view after registration.
        allow_poor_registration: a structure whose rigid registration fails the plausibility check
            (:mod:`P2SAMLogic.propagation.regcheck`) is propagated anyway, every slice flagged and its change
            reported as not measurable; False (default): the run stops with an error naming the
            follow-up.
        registration: ``per-structure`` (default: one rigid registration around each
            structure) or ``joint`` (one around all of them).
        batch_size: follow-up crops encoded per model call.
        seed: k-means seed.
    """

    segments: Optional[List[str]] = None
    method: str = "p2sam"
    deformable: str = "auto"
    decision: str = "evidence"
    trust_iou: float = 0.5
    trust_agreement: float = 0.3
    trust_score_ratio: Optional[float] = None
    gate_score_ratio: Optional[Tuple[float, float]] = None
    end_absent_iou: float = 0.75
    ring_outer: str = "registered"
    ring_area_ratio: float = 0.75
    followup_references: bool = False
    decompose: bool = True
    rank_prior_agreement: bool = False
    max_parts: int = 5
    negative_parts: int = 1
    proposals: str = "registered-first"
    registered_prompts: Tuple[str, ...] = ()
    scale: str = "auto"
    roi_margin_mm: float = 15.0
    min_roi_mm: float = 30.0
    slice_margin_mm: float = 5.0
    registration_margin_mm: float = 40.0
    intensity_window: Optional[Tuple[float, float]] = None
    presence_threshold: float = 0.7
    prior_weight: float = 0.0
    cleanup_tolerance_mm: float = 5.0
    qa_flag_below: float = 0.6
    confirm_agreement: float = 0.8
    min_overlap: float = 0.5
    allow_poor_registration: bool = False
    registration: str = "per-structure"
    batch_size: int = 8
    seed: int = 0

    def validate(self) -> "PropagationConfig":
        if self.method not in METHODS:
            raise InputError("method", f"unknown method '{self.method}'; expected one of {', '.join(METHODS)}")
        if self.deformable not in DEFORMABLE_METHODS:
            raise InputError("deformable", f"unknown deformable stage '{self.deformable}'; expected one of "
                                           f"{', '.join(DEFORMABLE_METHODS)}")
        if self.decision not in DECISION_MODES:
            raise InputError("decision", f"unknown decision mode '{self.decision}'; expected one of "
                                         f"{', '.join(DECISION_MODES)}")
        if self.max_parts < 1:
            raise InputError("max_parts", "must be at least 1")
        if self.negative_parts < 0:
            raise InputError("negative_parts", "must be 0 or more")
        for name in ("roi_margin_mm", "min_roi_mm", "slice_margin_mm", "registration_margin_mm",
                     "cleanup_tolerance_mm"):
            if not getattr(self, name) >= 0:
                raise InputError(name, "must be 0 or more")
        for name in ("prior_weight", "trust_iou", "trust_agreement", "confirm_agreement"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise InputError(name, "must be between 0 and 1")
        if not 0.0 <= self.ring_area_ratio <= 1.0:
            raise InputError("ring_area_ratio", "must be between 0 and 1")
        if self.trust_score_ratio is not None and not self.trust_score_ratio > 0:
            raise InputError("trust_score_ratio", "must be positive")
        if self.gate_score_ratio is not None and (
                len(self.gate_score_ratio) != 2 or not 0 < self.gate_score_ratio[0] < self.gate_score_ratio[1]):
            raise InputError("gate_score_ratio", f"{self.gate_score_ratio}: expected (low, high) with 0 < low < high")
        if not 0.0 <= self.end_absent_iou <= 1.0:
            raise InputError("end_absent_iou", "must be between 0 and 1")
        if self.ring_outer not in ("registered", "model"):
            raise InputError("ring_outer", f"unknown source '{self.ring_outer}'; expected registered or model")
        if self.intensity_window is not None and not self.intensity_window[1] > self.intensity_window[0]:
            raise InputError("intensity_window", f"{self.intensity_window}: high must exceed low")
        if self.proposals not in PROPOSAL_MODES:
            raise InputError("proposals", f"unknown proposal mode '{self.proposals}'; expected one of "
                                          f"{', '.join(PROPOSAL_MODES)}")
        unknown = [v for v in self.registered_prompts if v not in ("box", "box refined", "box+mask")]
        if unknown:
            raise InputError("registered_prompts", f"unknown prompt kind(s) {unknown}; expected any of box, "
                                                   "'box refined', box+mask")
        if self.registration not in ("per-structure", "joint"):
            raise InputError("registration", f"unknown mode '{self.registration}'; expected per-structure or joint")
        if self.batch_size < 1:
            raise InputError("batch_size", "must be at least 1")
        self.encoding_scale()
        return self

    def encoding_scale(self) -> EncodingScale:
        """The parsed :attr:`scale`."""
        return EncodingScale.parse(self.scale, self.roi_margin_mm, self.min_roi_mm)

    def as_dict(self) -> dict:
        d = asdict(self)
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}

    def rule(self, role: str = "whole", scale: Optional[EncodingScale] = None) -> DecisionRule:
        """The decision thresholds for one part; ``role`` as in :class:`P2SAMLogic.propagation.structures.Part`;
        ``scale``: the resolved encoding scale of the slices (sets the defaults of ``trust_score_ratio`` and
        ``gate_score_ratio``)."""
        encoding = "whole" if scale is not None and scale.kind == "whole" else "window"
        ratio = TRUST_SCORE_RATIO[encoding] if self.trust_score_ratio is None else self.trust_score_ratio
        gate = GATE_SCORE_RATIO[encoding] if self.gate_score_ratio is None else self.gate_score_ratio
        bounds = (0.0, math.inf)
        if role == "outer" and self.ring_area_ratio > 0:
            bounds = (self.ring_area_ratio, 1.0 / self.ring_area_ratio)
        return DecisionRule(mode=self.decision, trust_iou=self.trust_iou, trust_agreement=self.trust_agreement,
                            trust_score_ratio=float(ratio),
                            gate_score_ratio=(float(gate[0]), float(gate[1])),
                            end_absent_iou=self.end_absent_iou, prior_weight=self.prior_weight,
                            presence_threshold=self.presence_threshold, area_ratio_bounds=bounds)
