"""Stages "references" and "slices" of :func:`P2SAMLogic.propagation.pipeline.propagate`.

*References*: every native prior slice that holds a part becomes one reference: the prior image
and the part's mask resampled on the follow-up's slice orientation and pixel grid, through that
prior slice's plane (rigid transform: in-plane resampling only, no cross-slice blur), cropped to a
square region of interest (ROI) around the mask.

*Slices*: for each follow-up slice to process, the reference whose mask best matches the
registered prior there (Dice on the follow-up slice; ties: the nearest in physical space) is
used; the follow-up crop has that reference's ROI size (same millimetres per pixel, so the part
features compare at the same scale), centred on the registered prior's box on this slice (the
deformable registration localises it). P²SAM then proposes a mask; the registered prior on the
slice gives the "prior" box candidate and is scored like a candidate (evidence for the decision).

Frames: images are ``SimpleITK.Image`` (LPS mm); arrays ``[k, j, i]``; windows and boxes are
``(x0, y0, x1, y1)`` in follow-up slice pixels (x = column ``i``, y = row ``j``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..io.intensity import IntensityWindow
from .scale import EncodingScale
from ..method.segmenter import mask_box


@dataclass
class Reference:
    """One prior slice of a part on the follow-up's slice grid.

    Attributes:
        prior_slice: native prior slice index.
        kc: continuous follow-up slice index of that slice's plane (after rigid registration).
        window: ROI ``(x0, y0, x1, y1)`` in follow-up slice pixels.
        image: ``h x w x 3`` uint8 crop; mask: ``h x w`` bool crop.
        full_mask: ``H x W`` bool mask on the whole follow-up slice grid (for matching).
        full_image: ``H x W`` float32 prior values on the whole follow-up slice grid.
        state: the segmenter's prepared reference (encoded, clustered), set by the caller.
    """

    prior_slice: int
    kc: float
    window: np.ndarray
    image: np.ndarray
    mask: np.ndarray
    full_mask: np.ndarray
    full_image: np.ndarray
    state: object = None

    def cropped(self, window: np.ndarray, intensity: IntensityWindow) -> "Reference":
        """The same prior slice cropped to another ROI (e.g. a ring's cavity in its outer region's ROI)."""
        x0, y0, x1, y1 = np.asarray(window).astype(int)
        return Reference(self.prior_slice, self.kc, np.asarray(window, dtype=np.float64).copy(),
                         intensity.to_rgb(self.full_image[y0:y1, x0:x1]),
                         np.ascontiguousarray(self.full_mask[y0:y1, x0:x1]), self.full_mask, self.full_image)


@dataclass
class SliceProposal:
    """The model's proposal on one follow-up slice, and its evidence.

    Attributes:
        k: follow-up slice index.
        reference: the prior slice used (native index).
        window: the ROI searched ``(x0, y0, x1, y1)``.
        mask: ``h x w`` bool proposal inside ``window``.
        predicted_iou: the decoder's predicted IoU of the chosen candidate.
        score / background: Wasserstein distance of the proposal's features to the reference
            foreground / background parts (lower score = more like the structure).
        prior_score / prior_background: the same for the registered prior on this slice (NaN
            beyond the registered extent).
        box: the chosen prompt box, slice pixels.
        candidates: the number of candidates decoded.
        candidate_masks: every candidate's ``h x w`` mask inside ``window`` (benchmarks only:
            the segmenter's ``keep_candidate_masks``), else None; candidate_scores: their summaries.
        followup_reference: the follow-up slice used as the reference (:func:`followup_pass`), else None.
        locator: how the chosen prompt was placed (``registered box``, a P²SAM locator, ...).
    """

    k: int
    reference: int
    window: np.ndarray
    mask: np.ndarray
    predicted_iou: float
    score: float
    background: float
    prior_score: float
    prior_background: float
    box: Optional[List[float]]
    candidates: int = 0
    candidate_masks: Optional[List[np.ndarray]] = None
    candidate_scores: Optional[List[dict]] = None
    followup_reference: Optional[int] = None
    locator: str = ""

    @property
    def presence(self) -> float:
        """Wasserstein ratio foreground / background of the proposal (lower: more like the structure)."""
        if math.isfinite(self.score) and math.isfinite(self.background) and self.background > 0:
            return self.score / self.background
        return math.nan

    def full(self, shape: Tuple[int, int]) -> np.ndarray:
        """The proposal on the whole ``H x W`` slice."""
        out = np.zeros(shape, dtype=bool)
        x0, y0, x1, y1 = self.window.astype(int)
        out[y0:y1, x0:x1] = self.mask
        return out


def make_references(prior_image: sitk.Image, mask: sitk.Image, followup: sitk.Image, transform: sitk.Transform,
                    window: IntensityWindow, scale: EncodingScale, name: str, input_size: int = 256
                    ) -> List[Reference]:
    """One :class:`Reference` per native prior slice holding ``mask`` (``sitkUInt8`` on the prior grid).

    ``transform`` maps follow-up points to prior points (rigid: the reference planes stay planes).
    Each reference is cropped to ``scale``'s window around its mask (the whole slice for ``whole``),
    the window the follow-up slices are encoded with too, so that features compare at one scale.
    """
    arr = sitk.GetArrayViewFromImage(mask) > 0
    inverse = transform.GetInverse()
    size = followup.GetSize()
    spacing = followup.GetSpacing()
    mask_f = sitk.Cast(mask, sitk.sitkFloat32)
    fill = float(np.min(sitk.GetArrayViewFromImage(prior_image)[:: max(1, arr.shape[0] // 8)]))
    refs: List[Reference] = []
    for kp in np.flatnonzero(arr.reshape(arr.shape[0], -1).any(1)):
        jj, ii = np.nonzero(arr[kp])
        centre = prior_image.TransformContinuousIndexToPhysicalPoint([float(ii.mean()), float(jj.mean()), float(kp)])
        q = inverse.TransformPoint(centre)
        kc = followup.TransformPhysicalPointToContinuousIndex(q)[2]
        grid = sitk.Image([int(size[0]), int(size[1]), 1], sitk.sitkFloat32)
        grid.SetSpacing(spacing)
        grid.SetDirection(followup.GetDirection())
        grid.SetOrigin(followup.TransformContinuousIndexToPhysicalPoint([0.0, 0.0, float(kc)]))
        img = sitk.GetArrayFromImage(sitk.Resample(prior_image, grid, transform, sitk.sitkLinear, fill,
                                                   sitk.sitkFloat32))[0]
        m = sitk.GetArrayFromImage(sitk.Resample(mask_f, grid, transform, sitk.sitkLinear, 0.0))[0] >= 0.5
        if not m.any():
            continue
        win = scale.window(mask_box(m), m.shape, (spacing[0], spacing[1]), input_size)
        x0, y0, x1, y1 = win.astype(int)
        refs.append(Reference(int(kp), float(kc), win, window.to_rgb(img[y0:y1, x0:x1]),
                              np.ascontiguousarray(m[y0:y1, x0:x1]), m, img))
    if not refs:
        raise InputError(f"segment '{name}'", "is too thin to resample onto the follow-up's slices")
    return refs


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 0.0 if s == 0 else 2.0 * int((a & b).sum()) / s


def choose_reference(refs: Sequence[Reference], k: int, registered_k: np.ndarray) -> Reference:
    """The reference for follow-up slice ``k``: the best shape match to the registered prior there
    (Dice, rounded to 0.05 so that near-equal matches go to the nearest slice), else the nearest."""
    if registered_k.any():
        return max(refs, key=lambda r: (round(_dice(r.full_mask, registered_k) * 20.0) / 20.0,
                                        -abs(r.kc - k), -r.prior_slice))
    return min(refs, key=lambda r: (abs(r.kc - k), r.prior_slice))


def slice_window(ref: Reference, registered_k: np.ndarray, shape: Tuple[int, int],
                 scale: Optional[EncodingScale] = None, spacing_xy: Sequence[float] = (1.0, 1.0),
                 input_size: int = 256) -> np.ndarray:
    """The follow-up window of one slice.

    With an ``auto`` or ``whole`` ``scale``: the rule applied to the registered prior's box on this slice
    (the references were encoded with the same rule); else (``crop``, ``ctx``, or no scale given) the
    reference's window size (same millimetres per pixel), centred on that box. Where the registered prior
    is empty (beyond its extent), the reference's own window.
    """
    h, w = shape
    box = mask_box(registered_k)
    if box is None:
        return ref.window.copy()
    if scale is not None and scale.shares_slices:
        return scale.window(box, shape, spacing_xy, input_size)
    x0, y0, x1, y1 = ref.window
    nx, ny = int(x1 - x0), int(y1 - y0)
    cx, cy = (box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0
    nx, ny = min(nx, w), min(ny, h)
    x0 = int(np.clip(round(cx - nx / 2.0), 0, w - nx))
    y0 = int(np.clip(round(cy - ny / 2.0), 0, h - ny))
    return np.array([x0, y0, x0 + nx, y0 + ny], dtype=np.float64)


def propose_slices(segmenter, refs: Sequence[Reference], targets: Sequence[int], registered: np.ndarray,
                   followup_arr: np.ndarray, window: IntensityWindow, batch_size: int,
                   stage: Dict[str, float], tick: Optional[Callable[[float, str], None]] = None,
                   label: str = "", proposals: str = "registered-first",
                   centre_on: Optional[np.ndarray] = None, scale: Optional[EncodingScale] = None,
                   spacing_xy: Sequence[float] = (1.0, 1.0)) -> Dict[int, SliceProposal]:
    """Run P²SAM on every follow-up slice in ``targets`` (stage "slices").

    Args:
        segmenter: a :class:`~P2SAMLogic.method.segmenter.P2SAMSegmenter` whose references (``ref.state``)
            are prepared (unless ``proposals == "registered-box"``).
        registered: ``bool [k, j, i]`` registered prior of this part on the follow-up grid.
        followup_arr: ``[k, j, i]`` follow-up scanner values.
        stage: seconds per stage, accumulated here (``match``, ``decode``, ``retrieval``).
        proposals: how a slice inside the registered extent is proposed (slices beyond it always get
            P²SAM's part-prompt search):

            * ``registered-first``: the registered contour's tight box, decoded once and scored against
              the reference (its Wasserstein distances, and the registered contour's own) -- the
              evidence :mod:`P2SAMLogic.propagation.decide` weighs;
            * ``search``: P²SAM's part-prompt candidates and retrieval, the registered box among them;
            * ``registered-box``: the plain baseline: the registered box decoded, nothing scored, and
              nothing proposed beyond the registered extent.
        centre_on: ``bool [k, j, i]`` whose box on each slice places the window (default ``registered``;
            a ring's cavity is placed by its outer region, so both crops are the same image).
        scale, spacing_xy: the encoding scale and the slice's pixel size ``(column, row)`` mm (see
            :func:`slice_window`).
    """
    shape = registered.shape[1:]
    out: Dict[int, SliceProposal] = {}
    net = segmenter.model
    for b0 in range(0, len(targets), batch_size):
        chunk = list(targets[b0:b0 + batch_size])
        if tick is not None:
            tick(b0 / max(1, len(targets)), f"{label}: slices {chunk[0]}-{chunk[-1]}")
        jobs = []
        for k in chunk:
            reg_k = registered[k]
            ref = choose_reference(refs, k, reg_k)
            win = slice_window(ref, reg_k if centre_on is None else centre_on[k], shape, scale, spacing_xy,
                               getattr(net, "input_size", 256))
            x0, y0, x1, y1 = win.astype(int)
            crop = window.to_rgb(np.asarray(followup_arr[k, y0:y1, x0:x1]))
            jobs.append((k, ref, win, crop, reg_k[y0:y1, x0:x1]))
        net.encode([j[3] for j in jobs])  # batched on a GPU; the segmenter then hits the cache
        for k, ref, win, crop, reg_crop in jobs:
            box = mask_box(reg_crop)
            if proposals == "registered-box":
                if box is None:
                    continue
                res = segmenter.segment_with_box(crop, box, refine=False, locator="registered box")
            elif proposals == "registered-first" and box is not None:
                res = segmenter.segment_with_box(crop, box, ref=ref.state, prior_mask=reg_crop, refine=False,
                                                 locator="registered box")
            else:
                res = segmenter.segment(ref.state, crop, prior_box=box,
                                        prior_mask=reg_crop if reg_crop.any() else None)
            for key in ("match", "decode", "retrieval"):
                stage[key] = stage.get(key, 0.0) + res.timings.get(key, 0.0)
            out[k] = _proposal(k, ref.prior_slice, win, res)
    return out


def _proposal(k: int, reference: int, win: np.ndarray, res, followup_reference: Optional[int] = None
              ) -> SliceProposal:
    """A :class:`SliceProposal` from a segmenter result on the crop ``win`` of follow-up slice ``k``."""
    ch = res.chosen
    return SliceProposal(
        k=int(k), reference=int(reference), window=win, mask=res.mask,
        predicted_iou=float(ch.predicted_iou), score=float(res.score) if res.score == res.score else math.nan,
        background=float(ch.background_distance), prior_score=float(res.prior_score), locator=ch.locator,
        prior_background=float(res.prior_background),
        box=None if ch.box is None else (np.asarray(ch.box) + np.tile(win[:2], 2)).tolist(),
        candidates=len(res.candidates), candidate_masks=res.candidate_masks,
        candidate_scores=None if res.candidate_masks is None else [c.summary() for c in res.candidates],
        followup_reference=followup_reference)


def followup_pass(segmenter, proposals: Dict[int, SliceProposal], decisions: dict, decided: np.ndarray,
                  registered: np.ndarray, followup_arr: np.ndarray, window: IntensityWindow, accept,
                  stage: Dict[str, float], max_gap: int = 2, min_qa: float = 0.85) -> Dict[int, SliceProposal]:
    """Second look at the slices where the model was not trusted, with the follow-up itself as reference.

    Slices whose proposal was trusted with a QA of at least ``min_qa`` (*anchors*) are references for
    the untrusted slices at most ``max_gap`` slices away (the nearest anchor): same scan, same
    contrast, nearly the same anatomy, as video propagation does. The untrusted slice's crop is the
    one the first pass used (its encoding is cached), the anchor's crop and decided mask make the
    reference (its crop was encoded as a target). A new proposal is returned only where ``accept``
    (``(proposal, full mask, registered slice) -> bool``, the decision rule) trusts it.

    Args:
        decisions: :class:`P2SAMLogic.propagation.decide.SliceDecision` per slice (the first pass's).
        decided: ``bool [k, j, i]`` the first pass's decided part (the anchors' masks).
    Returns:
        slice -> the accepted new proposal (``followup_reference`` = the anchor slice).
    """
    import time

    inside = [k for k, d in decisions.items() if registered[k].any() and k in proposals]
    anchors = [k for k in inside if decisions[k].source == "model" and decisions[k].qa >= min_qa]
    retry = [k for k in inside if decisions[k].source == "registered"]
    if not anchors or not retry:
        return {}
    shape = registered.shape[1:]
    prepared: Dict[int, object] = {}
    out: Dict[int, SliceProposal] = {}
    for k in retry:
        a = min(anchors, key=lambda x: (abs(x - k), x))
        if abs(a - k) > max_gap:
            continue
        if a not in prepared:
            x0, y0, x1, y1 = proposals[a].window.astype(int)
            m = np.ascontiguousarray(decided[a, y0:y1, x0:x1])
            if not m.any():
                continue
            t = time.perf_counter()
            prepared[a] = segmenter.prepare_reference(window.to_rgb(np.asarray(followup_arr[a, y0:y1, x0:x1])), m,
                                                      source=f"follow-up slice {a}")
            stage["cluster"] = stage.get("cluster", 0.0) + time.perf_counter() - t
        win = proposals[k].window
        x0, y0, x1, y1 = win.astype(int)
        reg_crop = registered[k, y0:y1, x0:x1]
        res = segmenter.segment(prepared[a], window.to_rgb(np.asarray(followup_arr[k, y0:y1, x0:x1])),
                                prior_box=mask_box(reg_crop), prior_mask=reg_crop if reg_crop.any() else None)
        for key in ("match", "decode", "retrieval"):
            stage[key] = stage.get(key, 0.0) + res.timings.get(key, 0.0)
        p = _proposal(k, proposals[a].reference, win, res, followup_reference=a)
        if accept(p, p.full(shape), registered[k]):
            out[k] = p
    return out
