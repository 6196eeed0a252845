"""Carry prior-visit segments onto a follow-up volume (the main job).

:func:`propagate` reads as its stages, each a named function testable alone:

1. **check** (:func:`check_inputs`) — geometry, segments, modality, intensity windows.
2. **register** (:func:`P2SAMLogic.propagation.registration.register_structures`) — per structure, rigid
   registration around it, then a deformable stage (demons for same-modality pairs, a
   mutual-information B-spline across modalities) on a box around it. The *registered prior* is
   the prior structure carried by that transform: the localiser, the shape prior and the floor.
3. **plan** (:func:`P2SAMLogic.propagation.structures.plan_structure`) — a structure of several pieces is
   propagated piece by piece; a ring (myocardium, a wall, a PTV ring) as its filled outer region
   and its cavity, two blobs a box prompt can segment.
4. **references** (:func:`P2SAMLogic.propagation.slices.make_references`) — every native prior slice of a
   part, resampled on the follow-up's slice grid, cropped to a square ROI, encoded and clustered once.
5. **slices** (:func:`P2SAMLogic.propagation.slices.propose_slices`) — P²SAM on each follow-up slice from
   the registered prior's first to last slice plus ``slice_margin_mm`` either side.
6. **decide** (:func:`P2SAMLogic.propagation.decide.decide_part`) — per slice, the model's proposal (fused
   with the registered prior) where the evidence trusts it, else the registered prior, flagged;
   beyond the registered extent only what looks like the structure.
7. **clean up** (:func:`clean_up`) — per part, 3D components consistent with the registered
   prior, in-plane hole filling; then the parts are recomposed (ring = outer minus cavity).
8. **report** (:func:`build_report`) — volumes, change, per-slice source / QA / flags, provenance.

Frames: all images are ``SimpleITK.Image`` (LPS mm); arrays ``[k, j, i]``; 2D boxes and
windows are ``(x0, y0, x1, y1)`` in follow-up slice pixels (x = column ``i``, y = row ``j``).
"""
from __future__ import annotations

import datetime
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk

from .. import __version__
from .cleanup3d import fill_holes_per_slice, keep_consistent
from .config import PropagationConfig, needs_model
from .decide import DecisionRule, SliceDecision, decide_part, fuse_contours, signed_distance  # noqa: F401 (API)
from ..errors import CancelledError, InputError
from ..io.intensity import IntensityWindow, choose_window
from .regcheck import StructureFindings, apply_findings
from .registration import StructureRegistration
from .results import PropagationResult, SegmentReport, SliceReport, segment_tags
from .structures import StructurePlan, plan_structure, recompose
from ..io.volume import PROPOSAL_STATUS, Segment, VolumeSource, guess_modality, mask_image_like, same_geometry

ProgressCallback = Callable[[float, str], None]
CancelCallback = Callable[[], bool]


class _Progress:
    def __init__(self, progress: Optional[ProgressCallback], cancel: Optional[CancelCallback]) -> None:
        self.progress, self.cancel = progress, cancel

    def __call__(self, fraction: float, message: str) -> None:
        if self.cancel is not None and self.cancel():
            raise CancelledError("cancelled by the caller; nothing was written")
        if self.progress is not None:
            self.progress(float(min(1.0, max(0.0, fraction))), message)


@dataclass
class Study:
    """Checked inputs of one propagation (stage "check")."""

    prior_image: sitk.Image
    segments: List[Segment]
    followup: sitk.Image
    prior_window: IntensityWindow
    followup_window: IntensityWindow
    prior_modality: str
    followup_modality: str
    prior_name: str
    followup_name: str
    notes: List[str] = field(default_factory=list)
    #: per segment name: registration plausibility and field-of-view cuts (stage "register")
    findings: Dict[str, StructureFindings] = field(default_factory=dict)


# --------------------------------------------------------------------------------------
# stages


def select_segments(segments: Sequence[Segment], names: Optional[Sequence[str]], source: str = "--segments"
                    ) -> List[Segment]:
    """The segments named in ``names`` (in that order), or all; error listing the available names."""
    if not names:
        return list(segments)
    by_name = {s.name: s for s in segments}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise InputError(source, f"no segment named {', '.join(repr(m) for m in missing)}; the prior "
                                 f"segmentation has: {', '.join(repr(s.name) for s in segments) or 'none'}")
    return [by_name[n] for n in names]


def check_inputs(prior_image: sitk.Image, prior_segments: Sequence[Segment], followup: sitk.Image,
                 cfg: PropagationConfig, prior_source: Optional[VolumeSource] = None,
                 followup_source: Optional[VolumeSource] = None) -> Study:
    """Stage "check": 3D images (rectangular grids, finite voxels: :mod:`P2SAMLogic.io.sanity`), segments on the
    prior's grid, empty or one-voxel segments, modality, windows.

    An empty segment is an error when it is the only one; with others, it is skipped with a warning
    (they still run). A one-voxel segment runs with a warning (the model sees almost nothing of it).
    """
    notes: List[str] = []
    prior_name = prior_source.path if prior_source else "prior image"
    follow_name = followup_source.path if followup_source else "follow-up image"
    from ..io.sanity import check_volume

    for img, name in ((prior_image, prior_name), (followup, follow_name)):
        if img.GetDimension() != 3 or min(img.GetSize()) < 2:
            raise InputError(name, f"needs a 3D volume, got size {list(img.GetSize())}")
        check_volume(img, name)  # sheared axes, NaN / infinite voxels
    segments = select_segments(prior_segments, cfg.segments)
    if not segments:
        raise InputError("prior segmentation", "holds no segment")
    kept: List[Segment] = []
    for s in segments:
        if not same_geometry(s.mask, prior_image, tolerance_mm=1e-2):
            raise InputError(f"segment '{s.name}'", "is not on the prior image's voxel grid")
        n = int(np.count_nonzero(sitk.GetArrayViewFromImage(s.mask)))
        if n == 0:
            if len(segments) == 1:
                raise InputError(f"segment '{s.name}'", "is empty")
            msg = f"segment '{s.name}' is empty in the prior segmentation: skipped (the others still run)"
            warnings.warn(msg)
            notes.append(msg)
            continue
        if n == 1:
            msg = (f"segment '{s.name}' is a single voxel: the model sees almost nothing of it; expect the "
                   "registered position only")
            warnings.warn(msg)
            notes.append(msg)
        kept.append(s)
    prior_mod = (prior_source.modality if prior_source and prior_source.modality else guess_modality(prior_image))
    follow_mod = (followup_source.modality if followup_source and followup_source.modality
                  else guess_modality(followup))
    if prior_mod != follow_mod:
        msg = (f"prior is {prior_mod} but follow-up is {follow_mod}: the method assumes the same modality; "
               "results may be poor")
        warnings.warn(msg)
        notes.append(msg)
    return Study(prior_image, kept, followup, choose_window(prior_image, prior_mod, cfg.intensity_window),
                 choose_window(followup, follow_mod, cfg.intensity_window), prior_mod, follow_mod, prior_name,
                 follow_name, notes)


def register(study: Study, cfg: PropagationConfig, tick: _Progress, cancel: Optional[CancelCallback] = None
             ) -> Dict[str, StructureRegistration]:
    """Stage "register": per structure, rigid then deformable (``cfg.deformable``; none for ``rigid``).

    After the rigid stage, before the deformable one, each structure is checked
    (:mod:`P2SAMLogic.propagation.regcheck`; the findings go to ``study.findings``): it must fall mostly inside
    the follow-up's field of view, and its registration must pass the plausibility check unless
    ``cfg.allow_poor_registration``. Both failures raise :class:`InputError` naming the follow-up.
    """
    from .regcheck import check_structure
    from .registration import overlap_fraction, register_structures

    deformable = "none" if cfg.method == "rigid" else cfg.deformable
    if cfg.method == "deformable" and deformable == "none":
        deformable = "auto"
    same = study.prior_modality == study.followup_modality

    def after_rigid(rigid) -> None:
        for s, r in zip(study.segments, rigid):
            frac = overlap_fraction(s.mask, study.followup, r.transform)
            if frac < cfg.min_overlap:
                raise InputError(study.followup_name, f"does not cover segment '{s.name}' after registration (only "
                                                      f"{100 * frac:.0f}% of it falls inside the follow-up's field "
                                                      "of view); is this the same patient and region?")
        for s, r in zip(study.segments, rigid):
            found = check_structure(study.prior_image, s.mask, study.followup, r.transform, same,
                                    (study.prior_modality, study.followup_modality))
            if found.registration_failed() and not cfg.allow_poor_registration:
                raise InputError(study.followup_name, f"registration failed for segment '{s.name}': "
                                                      f"{found.registration.explain()}. Is this the same patient "
                                                      "and region, and is the follow-up's orientation header "
                                                      "right? To go on anyway (every slice flagged, no change "
                                                      "reported), pass --allow-poor-registration")
            study.findings[s.name] = found

    regs = register_structures(study.followup, study.prior_image, [s.mask for s in study.segments],
                               margin_mm=cfg.registration_margin_mm, deformable=deformable,
                               same_modality=same, joint=cfg.registration == "joint", cancel=cancel,
                               progress=lambda f, m: tick(0.15 * f, m), after_rigid=after_rigid)
    return dict(zip([s.name for s in study.segments], regs))


def clean_up(mask: np.ndarray, registered: np.ndarray, cfg: PropagationConfig, spacing_kji: Sequence[float]
             ) -> np.ndarray:
    """Stage "clean up" of one part (a blob): 3D components consistent with the registered prior, holes
    filled per slice; computed inside the bounding box of both (a 512 x 512 x 150 grid is never
    labelled or dilated as a whole)."""
    cleaned = np.zeros_like(mask)
    both = mask | registered
    if not both.any():
        return cleaned
    pad = [int(math.ceil(cfg.cleanup_tolerance_mm / max(sp, 1e-6))) + 1 for sp in spacing_kji]
    box = []
    for ax in range(3):
        occupied = np.flatnonzero(both.any(axis=tuple(a for a in range(3) if a != ax)))
        box.append(slice(max(0, int(occupied[0]) - pad[ax]), min(mask.shape[ax], int(occupied[-1]) + 1 + pad[ax])))
    box = tuple(box)
    cleaned[box] = fill_holes_per_slice(keep_consistent(mask[box], registered[box], spacing_kji,
                                                        cfg.cleanup_tolerance_mm))
    return cleaned


def _make_segmenter(net, cfg: PropagationConfig):
    if net is None:
        return None
    from ..method.segmenter import P2SAMConfig, P2SAMSegmenter
    # In 3D the registered prior already gives the structure's place, size and aspect on each slice:
    # no transposed-aspect boxes; the second stage (box scales) at the best centre only (two centres
    # cost two more decodes per slice for no Dice: GTV 0.860 vs 0.862, vertebral body 0.611 vs 0.626
    # over the 3D benchmark's three cases); candidates whose decoder regions nearly coincide (the
    # ROI crop makes them do) share one decoder call on their union region.
    return P2SAMSegmenter(net, P2SAMConfig(method="p2sam", search_context=None, max_parts=cfg.max_parts,
                                           negative_parts=cfg.negative_parts, seed=cfg.seed,
                                           transposed_boxes=False, stage_two_centres=1,
                                           batch_region_slack=0.25,
                                           rank_prior_agreement=cfg.rank_prior_agreement,
                                           registered_prompts=tuple(cfg.registered_prompts)))


def _extent(mask: np.ndarray) -> np.ndarray:
    """Slice indices ``k`` where a ``bool [k, j, i]`` mask is non-empty."""
    return np.flatnonzero(mask.reshape(mask.shape[0], -1).any(1))


@dataclass
class _PartOutcome:
    """One part's result: the cleaned mask, the registered part, the per-slice decisions and proposals."""

    registered: np.ndarray
    decided: np.ndarray
    model: Optional[np.ndarray]
    decisions: Dict[int, SliceDecision]
    proposals: dict


def propagate_part(study: Study, part_mask: sitk.Image, part_name: str, registration: StructureRegistration,
                   net, segmenter, cfg: PropagationConfig, stage: Dict[str, float], tick: Callable[[float, str], None],
                   share_windows: Optional[Dict[int, np.ndarray]] = None,
                   centre_on: Optional[np.ndarray] = None, role: str = "whole"
                   ) -> Tuple[_PartOutcome, Dict[int, np.ndarray]]:
    """Stages "references", "slices", "decide" and "clean up" for one part (a blob).

    Args:
        part_mask: the part on the prior grid (``sitkUInt8``).
        share_windows: prior slice -> ROI to use for this part's references (a ring's cavity takes its
            outer region's ROIs, so both parts' crops are the same images, encoded once).
        centre_on: ``bool [k, j, i]`` mask whose box centres the follow-up ROIs (default: this part's
            registered prior).
        role: the part's role (``whole``, ``outer`` or ``cavity``): a ring's outer region gets the
            area bounds of :meth:`PropagationConfig.rule`.
    Returns:
        the outcome, and this part's reference ROIs by prior slice (for ``share_windows``).
    """
    from .registration import warp_mask
    from .slices import make_references, propose_slices

    followup = study.followup
    spacing = followup.GetSpacing()
    kji_spacing = (spacing[2], spacing[1], spacing[0])
    registered = sitk.GetArrayFromImage(warp_mask(part_mask, followup, registration.transform)).astype(bool)
    if not registered.any():
        return _PartOutcome(registered, registered.copy(), None, {}, {}), {}
    t = time.perf_counter()
    refs = make_references(study.prior_image, part_mask, followup, registration.rigid.transform,
                           study.prior_window, cfg.encoding_scale().resolve(study.followup_modality), part_name,
                           input_size=getattr(net, "input_size", 256))
    if share_windows:
        shared = [r.cropped(share_windows[r.prior_slice], study.prior_window) if r.prior_slice in share_windows
                  else r for r in refs]
        refs = [r for r in shared if r.mask.any()] or refs
    stage["references"] += time.perf_counter() - t
    ks = _extent(registered)
    margin = int(math.ceil(cfg.slice_margin_mm / kji_spacing[0] - 1e-6)) if cfg.slice_margin_mm > 0 else 0
    k_lo, k_hi = max(0, int(ks[0]) - margin), min(registered.shape[0] - 1, int(ks[-1]) + margin)
    targets = list(range(k_lo, k_hi + 1)) if cfg.method == "p2sam" else [int(k) for k in ks]
    if cfg.method == "p2sam":
        net.encode([r.image for r in refs])
        t = time.perf_counter()
        for r in refs:  # embeddings come from the cache: pooling and k-means only
            r.state = segmenter.prepare_reference(r.image, r.mask, source=f"segment '{part_name}'")
        stage["cluster"] += time.perf_counter() - t
    follow_arr = sitk.GetArrayViewFromImage(followup)
    proposals = propose_slices(segmenter, refs, targets, registered, follow_arr, study.followup_window,
                               cfg.batch_size, stage, tick=tick, label=part_name,
                               proposals="registered-box" if cfg.method == "registered-box" else cfg.proposals,
                               centre_on=centre_on, scale=cfg.encoding_scale().resolve(study.followup_modality),
                               spacing_xy=spacing[:2])
    t = time.perf_counter()
    rule = cfg.rule(role, cfg.encoding_scale().resolve(study.followup_modality))
    decided, decisions, model = decide_part(proposals, registered, rule, kji_spacing)
    stage["decide"] += time.perf_counter() - t
    if cfg.followup_references and cfg.method == "p2sam" and rule.mode == "evidence":
        from .decide import trusted
        from .slices import followup_pass

        second = followup_pass(segmenter, proposals, decisions, decided, registered, follow_arr,
                               study.followup_window, lambda p, m, r: trusted(p, m, r, rule)[0], stage)
        if second:
            t = time.perf_counter()
            proposals = {**proposals, **second}
            decided, decisions, model = decide_part(proposals, registered, rule, kji_spacing)
            stage["decide"] += time.perf_counter() - t
    t = time.perf_counter()
    cleaned = clean_up(decided, registered, cfg, kji_spacing)
    stage["cleanup"] += time.perf_counter() - t
    return _PartOutcome(registered, cleaned, model, decisions, proposals), {r.prior_slice: r.window for r in refs}


def registered_part(study: Study, part_mask: sitk.Image, registration: StructureRegistration) -> _PartOutcome:
    """A part carried by the registration alone (a ring's filled outer region, ``ring_outer="registered"``):
    every slice keeps the registered contour, and the model's opinion raises no flag there."""
    from .registration import warp_mask

    registered = sitk.GetArrayFromImage(warp_mask(part_mask, study.followup, registration.transform)).astype(bool)
    decisions = {int(k): SliceDecision(int(k), "registered", "a ring's outer contour is the registered one", math.nan,
                                       math.nan, discounted=True) for k in _extent(registered)}
    return _PartOutcome(registered, registered.copy(), None, decisions, {})


def propagate_structure(study: Study, seg: Segment, registration: StructureRegistration, net,
                        cfg: PropagationConfig, stage: Dict[str, float], tick: Callable[[float, str], None],
                        keep_details: bool = False
                        ) -> Tuple[np.ndarray, np.ndarray, StructurePlan, Dict[str, _PartOutcome]]:
    """One structure: plan → parts → recompose. Returns ``(output, registered, plan, parts)``;
    ``keep_details`` also keeps every candidate's mask per slice (benchmarks)."""
    from .registration import warp_mask

    registered = sitk.GetArrayFromImage(warp_mask(seg.mask, study.followup, registration.transform)).astype(bool)
    plan = plan_structure(seg.name, seg.mask, decompose=cfg.decompose)
    if not needs_model(cfg.method) or not registered.any():
        return registered.copy(), registered, plan, {}
    segmenter = _make_segmenter(net, cfg)
    if keep_details and segmenter is not None:
        segmenter.config.keep_candidate_masks = True
    outcomes: Dict[str, _PartOutcome] = {}
    windows_by_piece: Dict[int, Dict[int, np.ndarray]] = {}
    outer_registered: Dict[int, np.ndarray] = {}
    n = len(plan.parts)
    for pi, part in enumerate(plan.parts):
        sub = lambda f, m, pi=pi: tick((pi + f) / n, m)  # noqa: E731
        share = windows_by_piece.get(part.piece) if part.role == "cavity" else None
        centre = outer_registered.get(part.piece) if part.role == "cavity" else None
        if part.role == "outer" and cfg.ring_outer == "registered":
            outcome, wins = registered_part(study, part.mask, registration), None
        else:
            outcome, wins = propagate_part(study, part.mask, part.name, registration, net, segmenter, cfg, stage,
                                           sub, share_windows=share, centre_on=centre, role=part.role)
        outcomes[part.name] = outcome
        if part.role == "outer":
            if wins is not None:
                windows_by_piece[part.piece] = wins
            outer_registered[part.piece] = outcome.registered
    t = time.perf_counter()
    output = recompose(plan, {k: o.decided for k, o in outcomes.items()},
                       {k: o.registered for k, o in outcomes.items()}, registered)
    stage["cleanup"] += time.perf_counter() - t
    return output, registered, plan, outcomes


def build_report(seg: Segment, output: np.ndarray, registered: np.ndarray, plan: StructurePlan,
                 outcomes: Dict[str, "_PartOutcome"], cfg: PropagationConfig, spacing: Sequence[float]
                 ) -> SegmentReport:
    """Stage "report" for one structure: volumes, change, and one :class:`SliceReport` per processed slice."""
    pixel_mm2 = float(spacing[0]) * float(spacing[1])
    voxel_ml = pixel_mm2 * float(spacing[2]) / 1000.0
    ks = set(int(k) for k in _extent(registered)) | set(int(k) for k in _extent(output))
    for o in outcomes.values():
        ks |= set(o.decisions)
    slices: List[SliceReport] = []
    for k in sorted(ks):
        m, reg_k = output[k], registered[k]
        decs = [(name, o.decisions[k], o.proposals.get(k)) for name, o in outcomes.items() if k in o.decisions]
        sources = {d.source for _, d, _ in decs if d.source != "absent" or not reg_k.any()}
        if not decs:
            source = "registered" if m.any() else "absent"
        elif m.any() and sources == {"model"}:
            source = "model"
        elif m.any() and "model" in sources:
            source = "mixed"
        elif m.any():
            source = "registered"
        else:
            source = "absent"
        if source in ("model", "mixed") and plan.rings and m.any():
            # a ring's open slices keep the registered ring (structures.recompose)
            piece_open = reg_k.any() and np.array_equal(m, reg_k)
            if piece_open:
                source = "registered"
        qa_values = [d.qa for _, d, _ in decs if math.isfinite(d.qa)]
        qa = min(qa_values) if qa_values else math.nan
        flags: List[str] = []
        reasons = [f"{name}: {d.reason}" if len(decs) > 1 else d.reason for name, d, _ in decs if d.reason]
        if decs and source in ("registered", "mixed") and reg_k.any():
            kept = [d.agreement for _, d, _ in decs if d.source == "registered" and not d.discounted]
            confirmed = all(math.isfinite(a) and a >= cfg.confirm_agreement for a in kept)
            if not kept:
                pass  # the model is not used for this structure: its disagreement is no reason to flag
            elif confirmed:
                reasons.append(f"registered contour kept; the model's proposal agrees with it "
                               f"(Dice {min(kept):.2f})")
            else:
                flags.append("registered contour kept (model not trusted)" if source == "registered"
                             else "part of the contour from the registration (model not trusted there)")
        if source in ("model", "mixed") and math.isfinite(qa) and qa < cfg.qa_flag_below:
            flags.append(f"low QA {qa:.2f}")
        if source in ("model", "mixed") and reg_k.any():
            ratio = m.sum() / max(1, reg_k.sum())
            if ratio < 0.5 or ratio > 1.6:
                flags.append(f"area {ratio:.2f}x the registered prior's")
        if m.any() and not reg_k.any():
            flags.append("beyond the registered prior's extent")
        if not m.any() and reg_k.any():
            flags.append("empty inside the registered extent")
        first = decs[0] if decs else None
        prop = first[2] if first else None
        text = "; ".join(flags + [r for r in reasons if r not in flags])
        slices.append(SliceReport(
            index=int(k), reference_index=None if prop is None else int(prop.reference),
            status="accepted" if m.any() else "rejected", qa=float(qa), flagged=bool(flags), reason=text,
            area_mm2=float(m.sum()) * pixel_mm2, registered_area_mm2=float(reg_k.sum()) * pixel_mm2, source=source,
            agreement=float(first[1].agreement) if first else math.nan,
            presence=float(prop.presence) if prop is not None else math.nan,
            predicted_iou=float(prop.predicted_iou) if prop is not None else math.nan,
            window=None if prop is None else [float(v) for v in prop.window], box=None if prop is None else prop.box,
            followup_reference=None if prop is None else getattr(prop, "followup_reference", None)))
    prior_ml = seg.volume_ml()
    reg_ml = float(registered.sum()) * voxel_ml
    fu_ml = float(output.sum()) * voxel_ml
    accepted = [s for s in slices if s.status == "accepted"]
    share = (sum(1.0 if s.source == "model" else 0.5 if s.source == "mixed" else 0.0 for s in accepted)
             / len(accepted)) if accepted and outcomes else (0.0 if accepted else math.nan)
    flagged = [s.index for s in slices if s.flagged]
    return SegmentReport(
        name=seg.name, color=tuple(seg.color), prior_volume_ml=prior_ml, registered_volume_ml=reg_ml,
        followup_volume_ml=fu_ml, change_percent=(fu_ml - prior_ml) / prior_ml * 100.0 if prior_ml > 0 else math.nan,
        slices_processed=len(slices), slices_rejected=sum(1 for s in slices if s.status == "rejected"),
        slices_flagged=len(flagged), flagged_slices=flagged, shape=plan.shape, model_share=float(share),
        slices=slices)


def propagate(prior_image: sitk.Image, prior_segments: Sequence[Segment], followup: sitk.Image, *,
              model: Union[str, object] = "litemedsam", device: str = "auto",
              config: Optional[PropagationConfig] = None,
              prior_source: Optional[VolumeSource] = None, followup_source: Optional[VolumeSource] = None,
              progress: Optional[ProgressCallback] = None, cancel: Optional[CancelCallback] = None,
              keep_details: bool = False) -> PropagationResult:
    """Propagate ``prior_segments`` (masks on ``prior_image``'s grid) onto ``followup``.

    Args:
        prior_image, followup: 3D scalar images (LPS mm; any direction, spacing, FOV).
        prior_segments: segments whose masks share ``prior_image``'s geometry.
        model: ``"litemedsam"``, a SAM checkpoint path, or a loaded
            :class:`~P2SAMLogic.models.base.PromptableModel` (reused, with its cache).
        device: ``auto|cpu|cuda|mps`` when ``model`` is a name or path.
        config: parameters (default :class:`PropagationConfig`).
        prior_source, followup_source: where the images came from (messages, provenance).
        progress: called with ``(fraction 0-1, message)``.
        cancel: polled often; returning True stops the run with :class:`CancelledError`.
        keep_details: keep per-part arrays and decisions in ``result.details`` (benchmarks).

    Returns:
        :class:`PropagationResult` with segments on ``followup``'s geometry. Nothing is
        written: the caller writes (atomically) what it wants.
    """
    cfg = (config or PropagationConfig()).validate()
    tick = _Progress(progress, cancel)
    t_start = time.perf_counter()
    timings: Dict[str, float] = {}
    study = check_inputs(prior_image, prior_segments, followup, cfg, prior_source, followup_source)
    notes = list(study.notes)

    t = time.perf_counter()
    registrations = register(study, cfg, tick, cancel)
    timings["registration"] = time.perf_counter() - t

    net = None
    t = time.perf_counter()
    if needs_model(cfg.method):
        if model is None or isinstance(model, str):
            from ..models import load_model
            tick(0.15, "loading model")
            net = load_model(model or "litemedsam", device=device)
        else:
            net = model
    timings["model_load"] = time.perf_counter() - t
    encoder_at_start = 0.0 if net is None else float(getattr(net, "encoder_seconds", 0.0))
    if net is not None and cfg.encoding_scale().resolve(study.followup_modality).shares_slices and hasattr(net, "cache"):
        # one embedding per follow-up slice, shared by every structure and part: keep them all
        net.cache.reserve(followup.GetSize()[2] + 64)
    stage = {k: 0.0 for k in ("references", "cluster", "match", "decode", "retrieval", "decide", "cleanup",
                              "report")}
    spacing = followup.GetSpacing()

    out_segments: List[Segment] = []
    registered_segments: List[Segment] = []
    reports: List[SegmentReport] = []
    details: Dict[str, dict] = {}
    n_seg = len(study.segments)
    for si, seg in enumerate(study.segments):
        lo, hi = 0.15 + 0.8 * si / n_seg, 0.15 + 0.8 * (si + 1) / n_seg
        tick(lo, f"{seg.name}: preparing")
        reg = registrations[seg.name]
        output, registered, plan, outcomes = propagate_structure(
            study, seg, reg, net, cfg, stage, lambda f, m, lo=lo, hi=hi: tick(lo + (hi - lo) * 0.95 * f, m),
            keep_details)
        if not registered.any():
            notes.append(f"segment '{seg.name}': the registered prior covers no follow-up voxel centre "
                         "(structure thinner than the follow-up's voxels)")
        t = time.perf_counter()
        reports.append(build_report(seg, output, registered, plan, outcomes, cfg, spacing))
        notes.extend(apply_findings(reports[-1], study.findings.get(seg.name)))  # FOV cuts, failed registration
        stage["report"] += time.perf_counter() - t
        role = "registered prior (rigid)" if reg.deformable == "none" else f"registered prior (rigid + {reg.deformable})"
        registered_segments.append(Segment(seg.name, seg.color, mask_image_like(registered, followup), seg.segment_id,
                                           {"P2SAM.Role": role}))
        out_segments.append(Segment(seg.name, tuple(seg.color), mask_image_like(output, followup),
                                    seg.segment_id or seg.name, {}))
        if keep_details:
            details[seg.name] = {"registered": registered, "output": output, "plan": plan.describe(),
                                 "parts": {name: {"registered": o.registered, "model": o.model, "decided": o.decided,
                                                  "decisions": o.decisions, "proposals": o.proposals}
                                           for name, o in outcomes.items()}}
        tick(hi, f"{seg.name}: done")

    timings.update(stage)
    timings["encode"] = 0.0 if net is None else float(getattr(net, "encoder_seconds", 0.0)) - encoder_at_start
    timings["total"] = time.perf_counter() - t_start
    timings["other"] = max(0.0, timings["total"] - sum(v for k, v in timings.items() if k != "total"))
    provenance = _provenance(cfg, net, {n: r.parameters() for n, r in registrations.items()}, study.prior_window,
                             study.followup_window, prior_source, followup_source, study.prior_modality,
                             study.followup_modality)
    provenance["structures"] = {r.name: r.shape for r in reports}
    provenance["registration"]["checks"] = {n: f.describe() for n, f in study.findings.items()}
    for seg_out, rep in zip(out_segments, reports):
        seg_out.tags.update(segment_tags(provenance, rep))
    tick(1.0, "done")
    return PropagationResult(out_segments, registered_segments, reports, provenance, timings, notes, details)


def _provenance(cfg: PropagationConfig, net, reg, prior_window: IntensityWindow, follow_window: IntensityWindow,
                prior_source: Optional[VolumeSource], followup_source: Optional[VolumeSource],
                prior_mod: str, follow_mod: str) -> dict:
    def src(s: Optional[VolumeSource], mod: str) -> dict:
        d = {"modality": mod}
        if s is not None:
            d.update({"path": s.path, "kind": s.kind})
            if s.series_uid:
                d["series_uid"] = s.series_uid
        return d

    return {
        "software": "p2sam-slicer (P2SAMLogic)",
        "version": __version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "status": PROPOSAL_STATUS,
        "method": cfg.method,
        "model": None if net is None else net.describe(),
        "parameters": cfg.as_dict(),
        "intensity": {"prior": prior_window.describe(), "followup": follow_window.describe()},
        "registration": {"mode": cfg.registration, "per_segment": reg},
        "prior": src(prior_source, prior_mod),
        "followup": src(followup_source, follow_mod),
    }


