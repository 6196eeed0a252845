"""After the rigid registration: is it plausible, and does each structure fit in both fields of view?

Nothing here changes a contour. :func:`check_structure` measures, per prior structure, what the
report and the decision to go on need:

Registration plausibility (:func:`check_registration`)
-------------------------------------------------------
Around the structure (the structure grown by :data:`REGION_MARGIN_MM`, sampled on the prior's
grid at ~:data:`SAMPLE_MM`), the follow-up is carried onto the prior by the rigid transform and the
two are compared by their Pearson correlation ``r`` over the voxels inside both images. A
registration that found the anatomy gives a high ``r`` that drops when the alignment is moved by
:data:`SHIFT_MM` (a distinct optimum); one that did not (a follow-up whose header claims a
rotation its pixels do not have, another patient, another region) gives a low ``r`` that barely
changes under a shift. The statistic is the **score** ``s = r + (r - r_shift)`` with ``r_shift``
the largest correlation over four shifts of :data:`SHIFT_MM` along the prior's in-plane axes;
the registration passes when ``s >= SCORE_BOUND`` (:data:`SCORE_BOUND` = 0.65).

Measured (``Testing/Benchmarks/benchmark_registration_check.py``; docs/method.md): the legit
development cases score 0.77 (ACDC, the lowest of 30 structures) to 1.5 (the lung simulations);
90-degree header rotations, mirrored headers and other patients' follow-ups score at most 0.53.

The correlation compares intensities linearly, which holds for the same modality (CT-CT, CBCT-CT,
MR-MR of one sequence). Across modalities the check is not evaluated (``passed`` is None and the
report says so): no bound was calibrated there.

For the message, the correlation is also measured at the *header-free* alignment (the follow-up's
voxel grid laid over the prior's, centre on centre, ignoring both direction matrices): when that
fits clearly better than the registration, the follow-up's orientation header is the likely culprit.

Fields of view (:func:`followup_cut`, :func:`prior_cut`)
---------------------------------------------------------
* **cut by the follow-up's field of view**: more than :data:`CUT_TOLERANCE` of the prior
  structure's voxels, carried by the rigid transform, fall outside the follow-up's grid (beyond half
  a voxel from its outer voxel centres). The follow-up cannot show the whole structure: its volume
  there is not comparable with the prior's;
* **cut by the prior image's field of view**: the structure touches a face of the prior image's
  grid and the layer of voxels just beyond that face falls (at least half of it) inside the
  follow-up's field of view: the follow-up may show more of the structure than the prior did.
  A structure that touches a face of both grids at the same place (a cardiac short-axis stack
  acquired twice with one geometry) is not reported: both visits cover the same part of it.

Frames: images are ``SimpleITK.Image`` (LPS mm); masks ``sitkUInt8`` on the prior's grid;
transforms map FOLLOW-UP points to PRIOR points (as everywhere in :mod:`P2SAMLogic.propagation.registration`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import numpy as np
import SimpleITK as sitk

#: the registration passes when the score (see the module docstring) reaches this
SCORE_BOUND = 0.65
#: the region compared: the structure grown by this (mm)
REGION_MARGIN_MM = 20.0
#: the comparison grid's spacing (mm; never finer than the prior's)
SAMPLE_MM = 2.0
#: the alignments the registered one is compared with are shifted by this (mm)
SHIFT_MM = 15.0
#: fewer samples than this inside both images: not evaluated
MIN_SAMPLES = 200
#: a structure is cut by the follow-up's field of view when more than this share of it falls outside
CUT_TOLERANCE = 0.01
#: the header-free alignment "fits clearly better" when its correlation exceeds the registered one by this
HEADER_HINT_MARGIN = 0.1


# ------------------------------------------------------------------------------------------------
# registration plausibility


@dataclass
class RegistrationCheck:
    """The plausibility of one structure's rigid registration.

    Attributes:
        score: ``correlation + (correlation - shifted_correlation)``; NaN when not evaluated.
        correlation: Pearson ``r`` of prior and registered follow-up around the structure.
        shifted_correlation: the largest ``r`` with the alignment shifted by :data:`SHIFT_MM`.
        header_free_correlation: ``r`` with the grids laid over each other ignoring their directions.
        samples: voxels compared (inside both images).
        passed: True / False; None when not evaluated (see ``note``).
        note: why not evaluated, or empty.
    """

    score: float = math.nan
    correlation: float = math.nan
    shifted_correlation: float = math.nan
    header_free_correlation: float = math.nan
    samples: int = 0
    passed: Optional[bool] = None
    note: str = ""

    def describe(self) -> dict:
        """Plain values for the provenance (non-finite numbers as None)."""
        def num(v: float) -> Optional[float]:
            return round(float(v), 4) if math.isfinite(v) else None

        return {"statistic": "score = r + (r - max r shifted by %g mm), r = Pearson correlation around the "
                             "structure" % SHIFT_MM,
                "score": num(self.score), "bound": SCORE_BOUND, "correlation": num(self.correlation),
                "shifted_correlation": num(self.shifted_correlation),
                "header_free_correlation": num(self.header_free_correlation), "samples": int(self.samples),
                "passed": self.passed, "note": self.note}

    def explain(self) -> str:
        """Why it failed, in words (for messages)."""
        text = (f"the follow-up does not match the prior around it after the rigid stage (plausibility score "
                f"{self.score:.2f} < {SCORE_BOUND:g}: correlation {self.correlation:.2f}, "
                f"{self.shifted_correlation:.2f} with the alignment moved by {SHIFT_MM:g} mm)")
        if (math.isfinite(self.header_free_correlation)
                and self.header_free_correlation > self.correlation + HEADER_HINT_MARGIN):
            text += (f"; laid over the prior voxel by voxel, ignoring the orientation in their headers, the two "
                     f"images correlate far better ({self.header_free_correlation:.2f}): the follow-up's "
                     "orientation (direction cosines) is probably wrong in its header")
        return text


def _centre(image: sitk.Image) -> np.ndarray:
    return np.array(image.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2.0 for s in image.GetSize()]))


def header_free_transform(followup: sitk.Image, prior: sitk.Image) -> sitk.AffineTransform:
    """Follow-up -> prior transform laying the follow-up's voxel grid over the prior's, centre on centre,
    as if both had the prior's direction matrix (what a wrong orientation header hides)."""
    df = np.array(followup.GetDirection()).reshape(3, 3)
    dp = np.array(prior.GetDirection()).reshape(3, 3)
    cf, cp = _centre(followup), _centre(prior)
    t = sitk.AffineTransform(3)
    t.SetMatrix([float(v) for v in (dp @ np.linalg.inv(df)).flatten()])
    t.SetCenter([float(v) for v in cf])
    t.SetTranslation([float(v) for v in cp - cf])
    return t


def _shifted(transform: sitk.Transform, shift_mm: np.ndarray) -> sitk.Transform:
    """``transform`` followed by a translation of ``shift_mm`` in prior space."""
    t = sitk.TranslationTransform(3, [float(v) for v in shift_mm])
    return sitk.CompositeTransform([t, transform])


class _Sampler:
    """The prior around a structure on a ~2 mm grid, and the follow-up sampled there through a transform."""

    def __init__(self, prior: sitk.Image, prior_mask: sitk.Image, followup: sitk.Image) -> None:
        from .geometry import _as_float, _crop_around, _mask_corners, _shrink_to
        from .registration import structure_region

        region = structure_region([prior_mask], REGION_MARGIN_MM)
        corners = _mask_corners(region)
        crop = _crop_around(_as_float(prior), corners, 1.0) if corners is not None else None
        self.grid = _shrink_to(crop if crop is not None else _as_float(prior), SAMPLE_MM)
        self.region = sitk.GetArrayFromImage(sitk.Resample(region, self.grid, sitk.Transform(),
                                                           sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)) > 0
        self.prior = sitk.GetArrayFromImage(self.grid).astype(np.float64)
        self.followup = followup if followup.GetPixelID() == sitk.sitkFloat32 else sitk.Cast(followup,
                                                                                             sitk.sitkFloat32)

    def correlation(self, transform: sitk.Transform) -> tuple:
        """``(r, samples)`` with the follow-up carried onto the grid by ``transform`` (follow-up -> prior)."""
        try:
            inverse = transform.GetInverse()
        except RuntimeError:
            return math.nan, 0
        moved = sitk.Resample(self.followup, self.grid, inverse, sitk.sitkLinear, math.nan, sitk.sitkFloat32)
        f = sitk.GetArrayFromImage(moved).astype(np.float64)
        use = self.region & np.isfinite(f)
        n = int(use.sum())
        if n < MIN_SAMPLES:
            return math.nan, n
        a, b = self.prior[use], f[use]
        sa, sb = float(a.std()), float(b.std())
        if sa <= 1e-9 or sb <= 1e-9:
            return 0.0, n  # a flat region cannot confirm any alignment
        return float(np.mean((a - a.mean()) * (b - b.mean())) / (sa * sb)), n


def check_registration(prior: sitk.Image, prior_mask: sitk.Image, followup: sitk.Image, transform: sitk.Transform,
                       same_modality: bool = True, modalities: Sequence[str] = ()) -> RegistrationCheck:
    """The plausibility of ``transform`` (rigid, follow-up -> prior) around ``prior_mask`` (module docstring)."""
    if not same_modality:
        mods = " and ".join(modalities) if modalities else "different modalities"
        return RegistrationCheck(note=f"not evaluated: the check compares intensities linearly and is calibrated "
                                      f"for one modality only (here {mods})")
    sampler = _Sampler(prior, prior_mask, followup)
    r, n = sampler.correlation(transform)
    if not math.isfinite(r):
        return RegistrationCheck(samples=n, note=f"not evaluated: only {n} voxels around the structure lie inside "
                                                 "both images")
    d = np.array(prior.GetDirection()).reshape(3, 3)
    shifts = [sign * SHIFT_MM * d[:, axis] for axis in (0, 1) for sign in (1.0, -1.0)]
    shifted = [sampler.correlation(_shifted(transform, s))[0] for s in shifts]
    shifted = [v for v in shifted if math.isfinite(v)]
    r_shift = max(shifted) if shifted else r
    header_free, _ = sampler.correlation(header_free_transform(followup, prior))
    score = r + (r - r_shift)
    return RegistrationCheck(score=score, correlation=r, shifted_correlation=r_shift,
                             header_free_correlation=header_free, samples=n, passed=bool(score >= SCORE_BOUND))


# ------------------------------------------------------------------------------------------------
# fields of view


@dataclass
class FieldOfViewCut:
    """A structure cut by a field of view.

    Attributes:
        image: ``"follow-up"`` or ``"prior image"``.
        where: the face, in words (``"slice 0"``, ``"column 511"``...; for the prior image, its own indices).
        slices: follow-up slices ``k`` at the cut (flagged in the report).
        fraction: share of the prior structure outside the follow-up (``follow-up`` cuts), else NaN.
    """

    image: str
    where: str
    slices: List[int] = field(default_factory=list)
    fraction: float = math.nan

    def reason(self) -> str:
        """``"cut by the follow-up's field of view at slice 0: change not measurable"``."""
        owner = "the follow-up's" if self.image == "follow-up" else "the prior image's"
        at = self.where if self.image == "follow-up" else f"its {self.where}"
        return f"cut by {owner} field of view at {at}: change not measurable"

    def describe(self) -> dict:
        return {"image": self.image, "where": self.where, "slices": list(self.slices),
                "outside_fraction": None if not math.isfinite(self.fraction) else round(float(self.fraction), 4),
                "reason": self.reason()}


_AXES = ("column", "row", "slice")  # i, j, k


def _to_index(image: sitk.Image, pts: np.ndarray) -> np.ndarray:
    """``N x 3`` continuous ``(i, j, k)`` indices of LPS points."""
    d = np.array(image.GetDirection()).reshape(3, 3) * np.array(image.GetSpacing())[None, :]
    return (np.asarray(pts, dtype=np.float64) - np.array(image.GetOrigin())) @ np.linalg.inv(d).T


def _to_points(image: sitk.Image, ijk: np.ndarray) -> np.ndarray:
    d = np.array(image.GetDirection()).reshape(3, 3) * np.array(image.GetSpacing())[None, :]
    return np.asarray(ijk, dtype=np.float64) @ d.T + np.array(image.GetOrigin())


def _into_followup(transform: sitk.Transform, followup: sitk.Image, pts: np.ndarray) -> np.ndarray:
    """Prior points carried into the follow-up's continuous ``(i, j, k)`` indices (``transform``: follow-up -> prior)."""
    from .geometry import _invert_points

    return _to_index(followup, _invert_points(transform, followup, pts))


def _slice_span(ks: Sequence[int]) -> str:
    ks = sorted(set(int(k) for k in ks))
    if not ks:
        return ""
    return f"slice {ks[0]}" if len(ks) == 1 else f"slices {ks[0]}-{ks[-1]}"


def followup_cut(prior_mask: sitk.Image, followup: sitk.Image, transform: sitk.Transform
                 ) -> Optional[FieldOfViewCut]:
    """The cut when more than :data:`CUT_TOLERANCE` of the structure falls outside the follow-up (else None)."""
    kji = np.argwhere(sitk.GetArrayViewFromImage(prior_mask) > 0)
    if kji.size == 0:
        return None
    kji = kji[:: max(1, len(kji) // 200000)]
    idx = _into_followup(transform, followup, _to_points(prior_mask, kji[:, ::-1]))
    size = np.array(followup.GetSize(), dtype=np.float64)
    low, high = idx < -0.5, idx > size - 0.5
    outside = (low | high).any(axis=1)
    fraction = float(outside.mean())
    if fraction <= CUT_TOLERANCE:
        return None
    counts = [(int(low[:, a].sum()), a, 0) for a in range(3)] + [(int(high[:, a].sum()), a, 1) for a in range(3)]
    _, axis, side = max(counts)
    edge = 0 if side == 0 else int(size[axis]) - 1
    beyond = idx[outside]
    ks = np.clip(np.rint(beyond[:, 2]), 0, size[2] - 1).astype(int)
    if axis == 2:
        return FieldOfViewCut("follow-up", f"slice {edge}", [edge], fraction)
    return FieldOfViewCut("follow-up", f"{_AXES[axis]} {edge} ({_slice_span(ks)})", sorted(set(int(k) for k in ks)),
                          fraction)


def prior_cut(prior_mask: sitk.Image, followup: sitk.Image, transform: sitk.Transform) -> Optional[FieldOfViewCut]:
    """The cut when the structure touches a face of the prior's grid and the follow-up sees beyond it (else None)."""
    arr = sitk.GetArrayViewFromImage(prior_mask) > 0
    size_f = np.array(followup.GetSize(), dtype=np.float64)
    found: List[tuple] = []
    for axis in range(3):  # i, j, k
        n = arr.shape[2 - axis]
        for side, index in ((0, 0), (1, n - 1)):
            face = np.take(arr, index, axis=2 - axis)
            if not face.any():
                continue
            rows = np.argwhere(face)  # indices of the two other array axes, in [k, j, i] order without this one
            kji = np.insert(rows, 2 - axis, index, axis=1)
            ijk = kji[:, ::-1].astype(np.float64)
            beyond = ijk.copy()
            beyond[:, axis] += -1.0 if side == 0 else 1.0
            into = _into_followup(transform, followup, _to_points(prior_mask, beyond))
            inside = np.all((into >= -0.5) & (into <= size_f - 0.5), axis=1)
            if inside.mean() >= 0.5:
                on_face = _into_followup(transform, followup, _to_points(prior_mask, ijk))
                ks = np.clip(np.rint(on_face[:, 2]), 0, size_f[2] - 1).astype(int)
                found.append((float(inside.mean()), f"{_AXES[axis]} {index}", sorted(set(int(k) for k in ks))))
    if not found:
        return None
    found.sort(key=lambda f: -f[0])
    _, where, ks = found[0]
    return FieldOfViewCut("prior image", where, ks)


# ------------------------------------------------------------------------------------------------
# per structure, and onto the report


@dataclass
class StructureFindings:
    """What the checks found for one structure (:func:`check_structure`)."""

    registration: RegistrationCheck = field(default_factory=RegistrationCheck)
    cuts: List[FieldOfViewCut] = field(default_factory=list)

    def registration_failed(self) -> bool:
        return self.registration.passed is False

    def describe(self) -> dict:
        return {"registration_check": self.registration.describe(), "field_of_view": [c.describe() for c in self.cuts]}


def check_structure(prior: sitk.Image, prior_mask: sitk.Image, followup: sitk.Image, transform: sitk.Transform,
                    same_modality: bool = True, modalities: Sequence[str] = ()) -> StructureFindings:
    """Registration plausibility and field-of-view cuts of one structure (``transform``: the rigid one)."""
    cuts = [c for c in (followup_cut(prior_mask, followup, transform), prior_cut(prior_mask, followup, transform))
            if c is not None]
    return StructureFindings(check_registration(prior, prior_mask, followup, transform, same_modality, modalities),
                             cuts)


def registration_failure_text(findings: StructureFindings) -> str:
    return f"registration failed the plausibility check: {findings.registration.explain()}"


def apply_findings(report, findings: Optional[StructureFindings]) -> List[str]:
    """Put ``findings`` into a :class:`~P2SAMLogic.propagation.pipeline.SegmentReport` (in place); returns warnings.

    A failed registration (the run was asked to go on) flags every slice; a field-of-view cut flags
    the slices at the cut; either makes the change not measurable (``change_percent`` NaN, the reason
    in ``change_not_measurable``).
    """
    if findings is None:
        return []
    out: List[str] = []
    by_index = {s.index: s for s in report.slices}

    def flag(k: int, why: str) -> None:
        s = by_index.get(k)
        if s is None and by_index:  # the cut slice holds nothing: flag the processed slice nearest to it
            s = by_index[min(by_index, key=lambda i: (abs(i - k), i))]
        if s is None:
            return
        if why not in s.reason:
            s.reason = why if not s.reason else f"{why}; {s.reason}"
        s.flagged = True

    reasons: List[str] = []
    if findings.registration_failed():
        text = registration_failure_text(findings)
        for s in report.slices:
            flag(s.index, "registration failed the plausibility check")
        reasons.append("registration failed the plausibility check: change not measurable")
        out.append(f"segment '{report.name}': {text}; continued as asked: every slice flagged, change not measurable")
    for cut in findings.cuts:
        for k in cut.slices:
            flag(k, f"cut by the {cut.image}'s field of view" if cut.image == "follow-up"
                 else "cut by the prior image's field of view")
        reasons.append(cut.reason())
        out.append(f"segment '{report.name}': {cut.reason()}")
    if reasons:
        report.change_percent = math.nan
        report.change_not_measurable = "; ".join(reasons)
    report.flagged_slices = [s.index for s in report.slices if s.flagged]
    report.slices_flagged = len(report.flagged_slices)
    return out


def change_cell(change_percent: float, not_measurable: str) -> str:
    """The table cell for a change: ``+4.0``, ``n/a (cut by FOV)``, ``n/a (registration failed)`` or ``n/a``."""
    if not_measurable:
        return "n/a (registration failed)" if not_measurable.startswith("registration") else "n/a (cut by FOV)"
    return "n/a" if not math.isfinite(change_percent) else f"{change_percent:+.1f}"
