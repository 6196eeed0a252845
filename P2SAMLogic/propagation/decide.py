"""Stage "decide" of :func:`P2SAMLogic.propagation.pipeline.propagate`: per slice, the model's proposal or the registration.

The registered prior (rigid + deformable registration) is the floor. On each follow-up slice of one
part (a blob: see :mod:`.structures`) the model's proposal is, by default, the registered contour's
own box decoded at the chosen encoding scale (:mod:`P2SAMLogic.propagation.scale`), and its evidence is P²SAM's
retrieval measure: the Wasserstein distance of the target features under the proposal to the
reference structure's features (``score``), against the same distance for the registered contour
(``prior_score``). The output on a slice is

* **model** -- the proposal, fused with the registered prior (zero level of
  ``(1 - w) SDF(model) + w SDF(registered)``), when

  - the model sees this structure at all. Over the part's slices, the median distance ratio
    ``score / prior_score`` sets ``w``: 0 (the proposal as it is) at ``gate_score_ratio[0]`` or
    below, rising linearly to 1 at ``gate_score_ratio[1]``, where the part keeps the registration
    on every slice (a structure the model does not segment -- a thresholded vertebral body, a
    ring's filled outer region -- has proposals consistently less like the reference than the
    registered contour; their disagreement with the model is then no reason for a flag);
  - and on this slice: the ratio is at most ``trust_score_ratio``, the decoder's predicted IoU at
    least ``trust_iou``, the proposal lies where the registered contour is (overlap
    ``|P & R| / min(|P|, |R|)`` at least ``trust_agreement``: a structure that shrank or grew keeps
    it, a proposal that wandered to a neighbour does not) and, for a ring's outer region
    (``area_ratio_bounds``), its area is within bounds of the registered area;
* **absent** -- at either end of the registered extent, the slices before the first and after the last
  slice whose proposal has a predicted IoU of at least ``end_absent_iou``: the structure ends earlier
  than the registration says (a heart base that moved through the slice plane; a tumour that shrank
  along the slices). Only where the model is clearly more like the reference than the registration on
  this part (median ratio at most ``gate_score_ratio[0]``); a part with no confident slice keeps
  every slice;
* **registered** -- the registered prior, when the model is not trusted there;
* beyond the registered prior's extent (``slice_margin_mm`` either side), **model** when the
  model is clearly more like the reference than the registration on this part (as for **absent**),
  the structure grew at that end (the model was trusted on the registered prior's end slice and its
  proposal there is at least ``edge_growth`` times the registered area), the proposal (P²SAM's
  part-prompt search) looks like the reference structure (presence ratio below
  ``presence_threshold``) and the neighbouring slice toward the structure was kept; else
  **absent** (nothing).

The thresholds were chosen on the development sets (docs/method.md, "Decision"; measured with
``Testing/Benchmarks/benchmark_accuracy.py``). ``mode="model"`` turns the fallback off (every
non-empty proposal is kept): the "P²SAM without the fallback" row of the benchmark.

Arrays are ``bool [k, j, i]`` on the follow-up's grid.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import numpy as np
from scipy import ndimage

from .slices import SliceProposal

SOURCES = ("model", "registered", "absent")


@dataclass
class DecisionRule:
    """Thresholds of the decision (see the module docstring); all recorded in the provenance."""

    mode: str = "evidence"
    trust_iou: float = 0.5
    trust_agreement: float = 0.3
    trust_score_ratio: float = 1.2
    gate_score_ratio: Tuple[float, float] = (0.95, 1.05)
    end_absent_iou: float = 0.75
    prior_weight: float = 0.0
    presence_threshold: float = 0.7
    edge_growth: float = 1.1
    area_ratio_bounds: Tuple[float, float] = (0.0, math.inf)


@dataclass
class SliceDecision:
    """What one follow-up slice of one part got.

    Attributes:
        k: follow-up slice index.
        source: ``model``, ``registered`` or ``absent``.
        reason: why (empty when the model was trusted inside the registered extent).
        agreement: Dice of the proposal with the registered prior on this slice (NaN beyond it).
        qa: 0-1 confidence in what the slice got: model slices ``(IoU + agreement) / 2`` (beyond
            the registered extent: ``(IoU + Dice with the neighbouring output slice) / 2``);
            registered slices: the agreement (how far the model confirms the registration);
            absent slices: 1 - presence confidence.
        discounted: the registered contour is used by design here (a ring's outer region with
            ``ring_outer="registered"``): the model's opinion raises no flag. A part that fails the model
            gate (:func:`part_prior_weight`) is NOT discounted: its slices keep the registered contour and
            are flagged unless the model's proposal agrees with it.
    """

    k: int
    source: str
    reason: str
    agreement: float
    qa: float
    discounted: bool = False


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int((a & b).sum()) / s


def overlap(a: np.ndarray, b: np.ndarray) -> float:
    """``|a & b| / min(|a|, |b|)``: 1 when one mask lies inside the other, 0 when they do not touch."""
    n = min(int(a.sum()), int(b.sum()))
    return 0.0 if n == 0 else int((a & b).sum()) / n


def signed_distance(mask: np.ndarray, spacing_ji: Sequence[float]) -> np.ndarray:
    """2D signed distance (mm) to the contour of ``mask`` (``H x W`` bool): negative inside."""
    inside = ndimage.distance_transform_edt(mask, sampling=spacing_ji)
    outside = ndimage.distance_transform_edt(~mask, sampling=spacing_ji)
    return outside - inside


def fuse_contours(model: np.ndarray, prior: np.ndarray, prior_weight: float, spacing_ji: Sequence[float]
                  ) -> np.ndarray:
    """Zero level of ``(1 - w) SDF(model) + w SDF(prior)`` on one slice (``H x W`` bool masks)."""
    w = float(prior_weight)
    if w <= 0:
        return model.copy()
    if w >= 1:
        return prior.copy()
    # on the box around both (plus a margin): the rest of the slice is outside both
    both = model | prior
    rows, cols = np.flatnonzero(both.any(1)), np.flatnonzero(both.any(0))
    if rows.size == 0:
        return model.copy()
    pad = 4
    r0, r1 = max(0, rows[0] - pad), min(both.shape[0], rows[-1] + 1 + pad)
    c0, c1 = max(0, cols[0] - pad), min(both.shape[1], cols[-1] + 1 + pad)
    out = np.zeros_like(model)
    m, p = model[r0:r1, c0:c1], prior[r0:r1, c0:c1]
    out[r0:r1, c0:c1] = ((1.0 - w) * signed_distance(m, spacing_ji) + w * signed_distance(p, spacing_ji)) < 0
    return out


def trusted(p: SliceProposal, proposal: np.ndarray, registered_k: np.ndarray, rule: DecisionRule
            ) -> Tuple[bool, str, float]:
    """Whether the model's proposal is trusted on a slice inside the registered extent: ``(ok, reason, agreement)``."""
    if not proposal.any():
        return False, "the model proposed nothing", 0.0
    agree = dice(proposal, registered_k)
    if rule.mode == "model":
        return True, "", agree
    reasons: List[str] = []
    if p.predicted_iou < rule.trust_iou:
        reasons.append(f"predicted IoU {p.predicted_iou:.2f} < {rule.trust_iou:.2f}")
    inside = overlap(proposal, registered_k)
    if inside < rule.trust_agreement:
        reasons.append(f"not where the registered contour is (overlap {inside:.2f} < {rule.trust_agreement:.2f})")
    lo, hi = rule.area_ratio_bounds
    n_reg = int(registered_k.sum())
    if n_reg and not lo <= int(proposal.sum()) / n_reg <= hi:
        reasons.append(f"area {int(proposal.sum()) / n_reg:.2f} x the registered area, outside "
                       f"[{lo:.2f}, {hi:.2f}]")
    if (math.isfinite(p.prior_score) and math.isfinite(p.score) and p.prior_score > 0
            and p.score > rule.trust_score_ratio * p.prior_score):
        reasons.append(f"less like the reference than the registered contour (distance ratio "
                       f"{p.score / p.prior_score:.2f} > {rule.trust_score_ratio:.2f})")
    return not reasons, "; ".join(reasons), agree


def score_ratio(p: SliceProposal) -> float:
    """``score / prior_score`` of a proposal: below 1 its features are more like the reference structure's
    than the registered contour's are; NaN when either is unknown."""
    if math.isfinite(p.prior_score) and math.isfinite(p.score) and p.prior_score > 0:
        return p.score / p.prior_score
    return math.nan


def part_prior_weight(proposals: Dict[int, SliceProposal], inside: Sequence[int], rule: DecisionRule
                      ) -> Tuple[float, float]:
    """The part-level gate: ``(weight, median ratio)`` over the slices inside the registered extent.

    ``weight`` is the registered contour's weight in the fusion of this part's trusted slices: 0 when
    the median :func:`score_ratio` is at most ``gate_score_ratio[0]`` (the model's contours are more like
    the reference than the registered ones: take them as they are), 1 at ``gate_score_ratio[1]`` or
    above (the model does not see this structure: keep the registration), linear in between; never
    below ``prior_weight``. Nothing scored (or ``mode="model"``): ``prior_weight``.
    """
    ratios = [score_ratio(proposals[k]) for k in inside]
    ratios = [r for r in ratios if math.isfinite(r)]
    if rule.mode == "model" or not ratios:
        return rule.prior_weight, math.nan
    med = float(np.median(ratios))
    lo, hi = rule.gate_score_ratio
    w = float(np.clip((med - lo) / max(hi - lo, 1e-9), 0.0, 1.0))
    return max(w, rule.prior_weight), med


def decide_part(proposals: Dict[int, SliceProposal], registered: np.ndarray, rule: DecisionRule,
                spacing_kji: Sequence[float]) -> Tuple[np.ndarray, Dict[int, SliceDecision], np.ndarray]:
    """The part's mask on the follow-up grid, one decision per processed slice, and the raw model masks.

    Args:
        proposals: the model's proposal per processed slice (stage "slices").
        registered: ``bool [k, j, i]`` registered prior of this part.
    Returns:
        ``(mask, decisions, model)``: ``mask`` the decided part (before 3D clean-up), ``model`` the raw
        proposals (kept for the benchmark's per-slice analysis and the overlay).
    """
    shape = registered.shape
    out = np.zeros(shape, dtype=bool)
    model = np.zeros(shape, dtype=bool)
    decisions: Dict[int, SliceDecision] = {}
    for k, p in proposals.items():
        model[k] = p.full(shape[1:])
    inside = [k for k in sorted(proposals) if registered[k].any()]
    spacing_ji = tuple(spacing_kji[1:])
    weight, median_ratio = part_prior_weight(proposals, inside, rule)
    sees = weight < 1.0
    # only a model clearly more like the reference than the registration on this part (median ratio at or
    # below the gate's low end) may shorten or lengthen the structure along the slices
    clearly = rule.mode == "model" or (math.isfinite(median_ratio) and median_ratio <= rule.gate_score_ratio[0])
    for k in inside:
        p = proposals[k]
        if not sees:
            agree = dice(model[k], registered[k]) if model[k].any() else 0.0
            out[k] = registered[k]
            decisions[k] = SliceDecision(
                k, "registered", f"the model does not see this structure: its proposals are less like the prior "
                                 f"than the registered contour on most slices (median distance ratio "
                                 f"{median_ratio:.2f} >= {rule.gate_score_ratio[1]:.2f})", agree, agree)
            continue
        ok, why, agree = trusted(p, model[k], registered[k], rule)
        if ok:
            out[k] = fuse_contours(model[k], registered[k], weight, spacing_ji)
            qa = 0.5 * float(np.clip(p.predicted_iou, 0, 1)) + 0.5 * agree
            decisions[k] = SliceDecision(k, "model", "", agree, qa)
        else:
            out[k] = registered[k]
            decisions[k] = SliceDecision(k, "registered", why, agree, agree)
    # the structure ends before the registered extent: low decoder confidence at an end slice
    confident = [k for k in inside if proposals[k].predicted_iou >= rule.end_absent_iou]
    if clearly and rule.mode != "model" and rule.end_absent_iou > 0 and confident:
        for k in inside:
            if confident[0] <= k <= confident[-1]:
                continue
            p = proposals[k]
            out[k] = False
            decisions[k] = SliceDecision(
                k, "absent", f"the structure ends before the registered extent here (predicted IoU "
                             f"{p.predicted_iou:.2f} < {rule.end_absent_iou:.2f} at the end of the extent)",
                dice(model[k], registered[k]), float(np.clip(1.0 - p.predicted_iou, 0, 1)))
    # registered slices the model did not process (e.g. the registered-box baseline skipped them)
    for k in np.flatnonzero(registered.reshape(shape[0], -1).any(1)):
        if int(k) not in decisions:
            out[k] = registered[k]
            decisions[int(k)] = SliceDecision(int(k), "registered", "not processed", math.nan, math.nan)
    # beyond the registered extent: walk outward; keep a slice only if its neighbour toward the structure was kept
    if inside:
        for direction in (-1, 1):
            edge = inside[0] if direction < 0 else inside[-1]
            k = edge + direction
            # the end slice is inside the extent, so it has a decision (model or registered)
            grew = rule.mode == "model" or (clearly and decisions[edge].source == "model" and
                                            int(model[edge].sum()) >= rule.edge_growth * int(registered[edge].sum()))
            prev_ok = grew
            while k in proposals:
                p = proposals[k]
                pres = p.presence
                # without the fallback an unscored proposal counts as present
                like = pres < rule.presence_threshold if math.isfinite(pres) else rule.mode == "model"
                present = bool(model[k].any()) and like
                keep = prev_ok and present
                if keep:
                    out[k] = model[k]
                    near = out[k - direction]
                    qa = 0.5 * float(np.clip(p.predicted_iou, 0, 1)) + 0.5 * dice(model[k], near)
                    decisions[k] = SliceDecision(k, "model", "beyond the registered prior's extent", math.nan, qa)
                else:
                    if not model[k].any():
                        why = "empty proposal"
                    elif not grew and not clearly:
                        why = "the model is not clearly better than the registration on this structure"
                    elif not grew:
                        why = "no growth at this end of the registered extent"
                    elif not prev_ok:
                        why = "neighbour toward the structure was not kept"
                    else:
                        why = f"not like the reference (presence {pres:.2f} >= {rule.presence_threshold})"
                    conf = 1.0 if not math.isfinite(pres) else float(np.clip(pres / max(rule.presence_threshold, 1e-6) - 0.5, 0, 1))
                    decisions[k] = SliceDecision(k, "absent", why, math.nan, conf)
                prev_ok = keep
                k += direction
    return out, decisions, model
