"""Registration of a follow-up image to a prior image (SimpleITK); mask warping is in :mod:`.geometry`.

Conventions
-----------
* Images are ``SimpleITK.Image`` in LPS millimetres; arrays are ``[k, j, i]``.
* **Every transform here maps FOLLOW-UP (fixed) physical points to PRIOR (moving)
  physical points** (the ITK resampling convention): ``resample_to(prior, followup, t)``
  brings the prior onto the follow-up grid, ``warp_mask(prior_mask, followup, t)`` carries a
  prior structure onto the follow-up.

Rigid registration (:func:`register_rigid`)
-------------------------------------------
Mattes mutual information, linear interpolation, regular-step gradient descent with
optimizer scales from physical shift (a unit step moves voxels by about 1 mm), on an
explicit image pyramid (``BinShrink`` block averaging per axis to a target spacing, so
thick-slice CT keeps its slices instead of being shrunk isotropically in index space).
Image gradients are central differences at the sampled points (ITK's default pre-smoothed
gradient images are blurred by the largest spacing and sent the local stage uphill).
Stages:

1. *Initialisation*: centroids of a thresholded body mask (CT: > -400 HU, else Otsu;
   opening, largest connected component) on ~8 mm images, then an exhaustive MI search of
   translations around that (steps of 6 mm, +-18 mm in x/y, +-24 mm in z). This copes with
   different fields of view and couch positions.
2. *Global*: Euler 3-D, levels of ~6 mm and ~3 mm, metric restricted to the follow-up's body.
3. *Local* (when ``moving_region`` is given): both images cropped around the region (the
   prior region's box plus 25 mm; its image in the follow-up through the stage-2 transform
   plus 15 mm); the metric restricted to the region carried into the follow-up by the
   stage-2 transform (a *fixed* mask, static during the stage: ITK's moving-mask gradient
   ignores samples entering/leaving the mask and diverged in tests); rotation centre at
   the region's centroid; levels of ~2 mm and ~1 mm in-plane. If this moves the region's
   box corners more than :data:`LOCAL_MAX_SHIFT_MM` from the global result (a featureless
   region), the global result is kept (and the stop condition says so).
   Without a region a ~2 mm global level is run instead.

Margin: on simulated follow-ups whose tumour shrinks by a local deformation (see
``Testing/Tools/simulate_followup.py``) a 10 mm margin found the GTV centre within 0.1 mm,
a 15 mm margin ~1.3 mm off (the region reaches the deformed surroundings), global-only ~0.5 mm.

Sampling is random with a fixed seed (:data:`SEED`), so the result is reproducible for a
given machine and thread count. A 512 x 512 x 48 CT registers in 2-4 s on 2 cores.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import numpy as np
import SimpleITK as sitk

from ..errors import CancelledError, InputError
from .geometry import (_apply_linear, _as_float, _centroid, _check_3d, _crop_around, _index_to_physical,
                        _inside_fov, _mask_corners, overlap_fraction, _recentred, resample_to, _shrink_to,
                        warp_mask)  # noqa: F401 (resample_to, warp_mask, overlap_fraction: re-exported)

#: seed of every random metric sampling (deterministic results)
SEED = 2024
#: the local stage may move the region's box corners at most this far from the global result (mm)
LOCAL_MAX_SHIFT_MM = 10.0
#: B-spline baseline: metric samples per evaluation and L-BFGS-B iterations per level
BSPLINE_SAMPLES = 15000
BSPLINE_ITERATIONS = 25
BSPLINE_MESH_MM = 25.0
#: body threshold for CT-like images (HU)
BODY_HU = -400.0
DEFORMABLE_METHODS = ("auto", "demons", "bspline", "none")
#: the deformable stage works on the structures' box plus this margin: demons needs the anatomy
#: around a structure to follow its motion (ACDC ED -> ES, mean Dice of the warped prior over the
#: first 7 patients' 3 structures: 30 mm 0.75, 50 mm 0.77, 70 mm 0.78, 100 mm 0.79; docs/accuracy.md)
DEFORMABLE_MARGIN_MM = 80.0
#: structures whose rigid transforms differ by less than this (mm, at their box corners) share one
#: deformable registration on the union of their boxes
SHARED_DEFORMABLE_MM = 1.0
#: demons: match the prior's histogram to the follow-up's (else each image is only scaled by its own
#: 1st..99th percentiles)
DEMONS_HISTOGRAM_MATCHING = True


@dataclass
class RegistrationResult:
    """Output of :func:`register_rigid`.

    Attributes:
        transform: ``sitk.Euler3DTransform`` mapping FOLLOW-UP (fixed) physical points (LPS mm)
            to PRIOR (moving) physical points.
        metric: final Mattes MI value of the last stage (negative: lower is better).
        stop_condition: the optimizer's stop description of the last stage.
        iterations: optimizer iterations summed over all stages.
        seconds: wall-clock time of the whole registration.
    """

    transform: sitk.Euler3DTransform
    metric: float
    stop_condition: str
    iterations: int
    seconds: float

    def parameters(self) -> dict:
        """Plain-Python summary: rotation (degrees, Euler X/Y/Z angles), translation and centre (mm)."""
        tx = self.transform
        return {
            "rotation_deg": [math.degrees(a) for a in (tx.GetAngleX(), tx.GetAngleY(), tx.GetAngleZ())],
            "translation_mm": [float(v) for v in tx.GetTranslation()],
            "centre_mm": [float(v) for v in tx.GetCenter()],
            "metric": float(self.metric),
            "seconds": float(self.seconds),
            "iterations": int(self.iterations),
            "stop_condition": self.stop_condition,
        }


# --------------------------------------------------------------------------- helpers


def _body_mask(image: sitk.Image) -> sitk.Image:
    """Largest connected component of a body threshold (CT: > -400 HU, else Otsu), ``sitkUInt8``."""
    arr = sitk.GetArrayViewFromImage(image)
    if float(np.percentile(arr, 1)) < -500.0:
        mask = sitk.BinaryThreshold(image, BODY_HU, 1e9, 1, 0)
    else:
        mask = sitk.OtsuThreshold(image, 0, 1)
    mask = sitk.BinaryMorphologicalOpening(mask, [1, 1, 1], sitk.sitkBall, 1)
    cc = sitk.RelabelComponent(sitk.ConnectedComponent(mask), sortByObjectSize=True)
    return sitk.Cast(cc == 1, sitk.sitkUInt8)


class _Stage:
    """One ``ImageRegistrationMethod.Execute`` with cancel/progress wiring."""

    def __init__(self, progress: Optional[Callable[[float], None]], cancel: Optional[Callable[[], bool]]) -> None:
        self.progress = progress
        self.cancel = cancel
        self.done = 0.0
        self.iterations = 0
        self.metric = float("nan")
        self.stop = ""

    def check(self) -> None:
        if self.cancel is not None and self.cancel():
            raise CancelledError("registration cancelled")

    def report(self, fraction: float) -> None:
        if self.progress is not None:
            self.progress(float(min(1.0, max(0.0, fraction))))

    def run(self, method: sitk.ImageRegistrationMethod, fixed: sitk.Image, moving: sitk.Image,
            weight: float, max_iterations: int) -> None:
        self.check()
        cancelled = []
        base = self.done

        def on_iteration() -> None:
            if self.cancel is not None and self.cancel():
                cancelled.append(True)
                method.StopRegistration()
                return
            it = method.GetOptimizerIteration()
            self.report(base + weight * min(1.0, (it + 1) / max(1, max_iterations)))

        method.AddCommand(sitk.sitkIterationEvent, on_iteration)
        try:
            method.Execute(fixed, moving)
        except RuntimeError as exc:
            if cancelled:
                raise CancelledError("registration cancelled") from None
            raise InputError("follow-up image", "registration failed (do the follow-up and the prior show the "
                             f"same anatomy and overlap?): {str(exc).strip().splitlines()[-1]}") from None
        finally:
            method.RemoveAllCommands()
        if cancelled:
            raise CancelledError("registration cancelled")
        self.iterations += int(method.GetOptimizerIteration())
        self.metric = float(method.GetMetricValue())
        self.stop = method.GetOptimizerStopConditionDescription()
        self.done = base + weight
        self.report(self.done)


def _method(bins: int, sampling: float, fixed_mask: Optional[sitk.Image],
            moving_mask: Optional[sitk.Image]) -> sitk.ImageRegistrationMethod:
    r = sitk.ImageRegistrationMethod()
    r.SetMetricAsMattesMutualInformation(numberOfHistogramBins=bins)
    if sampling < 1.0:
        r.SetMetricSamplingStrategy(r.RANDOM)
        r.SetMetricSamplingPercentage(sampling, SEED)
    else:
        r.SetMetricSamplingStrategy(r.NONE)
    r.SetInterpolator(sitk.sitkLinear)
    # image gradients by central differences at the sampled points, consistent with the linearly
    # interpolated values (ITK's default pre-computed recursive-Gaussian gradient is blurred by the
    # largest spacing, 5 mm on thick-slice CT, and then points away from the fine-scale optimum)
    r.MetricUseFixedImageGradientFilterOff()
    r.MetricUseMovingImageGradientFilterOff()
    if fixed_mask is not None:
        r.SetMetricFixedMask(fixed_mask)
    if moving_mask is not None:
        r.SetMetricMovingMask(moving_mask)
    return r


def _gradient_stage(stage: _Stage, fixed: sitk.Image, moving: sitk.Image, tx: sitk.Euler3DTransform, *,
                    fixed_mask: Optional[sitk.Image] = None, moving_mask: Optional[sitk.Image] = None,
                    bins: int = 32, sampling: float = 0.25, step_mm: float = 2.0, min_step_mm: float = 0.02,
                    iterations: int = 100, weight: float = 0.1) -> sitk.Euler3DTransform:
    r = _method(bins, sampling, fixed_mask, moving_mask)
    r.SetOptimizerAsRegularStepGradientDescent(learningRate=step_mm, minStep=min_step_mm,
                                               numberOfIterations=iterations, relaxationFactor=0.6,
                                               gradientMagnitudeTolerance=1e-8)
    r.SetOptimizerScalesFromPhysicalShift()
    out = sitk.Euler3DTransform(tx)
    r.SetInitialTransform(out, inPlace=True)
    stage.run(r, fixed, moving, weight, iterations)
    return out


# --------------------------------------------------------------------------- public API

def structure_region(masks: Sequence[sitk.Image], margin_mm: float) -> sitk.Image:
    """Union of binary masks dilated by ``margin_mm`` millimetres (Euclidean, in physical units).

    Args:
        masks: binary images (non-zero = inside) on one geometry (others are resampled onto the
            first one's grid, nearest neighbour).
        margin_mm: dilation distance (mm, >= 0). Spacing-aware: with 5 mm slices a 3 mm margin
            adds no slice, a 5 mm margin adds one on each side.

    Returns:
        ``sitkUInt8`` 0/1 image with the first mask's geometry.

    Raises:
        InputError: no masks, or all masks empty.
    """
    if not masks:
        raise InputError("structures", "no structure given to build the registration region")
    ref = masks[0]
    union = sitk.Cast(ref > 0, sitk.sitkUInt8)
    for m in masks[1:]:
        if (tuple(m.GetSize()) != tuple(ref.GetSize()) or not np.allclose(m.GetOrigin(), ref.GetOrigin(), atol=1e-3)
                or not np.allclose(m.GetSpacing(), ref.GetSpacing(), atol=1e-4)
                or not np.allclose(m.GetDirection(), ref.GetDirection(), atol=1e-5)):
            m = sitk.Resample(sitk.Cast(m > 0, sitk.sitkUInt8), ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                              sitk.sitkUInt8)
        union = sitk.Or(union, sitk.Cast(m > 0, sitk.sitkUInt8))
    corners = _mask_corners(union)
    if corners is None:
        raise InputError("structures", "the structures are empty: nothing to register around")
    margin = max(0.0, float(margin_mm))
    if margin == 0.0:
        return union
    box = _crop_around(union, corners, margin + 1e-3 + max(union.GetSpacing()))
    if box is None:  # degenerate tiny image: work on the whole grid
        box = union
    dist = sitk.SignedMaurerDistanceMap(box, insideIsPositive=False, squaredDistance=False, useImageSpacing=True,
                                        backgroundValue=0)
    grown = sitk.Cast(dist <= margin, sitk.sitkUInt8)
    out = sitk.Image(union.GetSize(), sitk.sitkUInt8)
    out.CopyInformation(union)
    start = union.TransformPhysicalPointToIndex(grown.GetOrigin())
    return sitk.Paste(out, grown, grown.GetSize(), [0, 0, 0], start)


def register_rigid(fixed: sitk.Image, moving: sitk.Image, moving_region: Optional[sitk.Image] = None, *,
                   progress: Optional[Callable[[float], None]] = None,
                   cancel: Optional[Callable[[], bool]] = None) -> RegistrationResult:
    """Rigid (Euler 3-D) registration of ``fixed`` (follow-up) to ``moving`` (prior).

    Args:
        fixed: follow-up image (any pixel type, any direction/spacing).
        moving: prior image.
        moving_region: optional binary mask in the prior's physical space (e.g.
            :func:`structure_region` of the prior structures, any grid): the last stage's metric is
            restricted to it (carried into the follow-up by the global result) so the fit is best
            where the structures are.
        progress: called with a fraction in ``[0, 1]`` as the registration advances.
        cancel: polled at every optimizer iteration; returning ``True`` stops and raises
            :class:`~P2SAMLogic.errors.CancelledError`.

    Returns:
        :class:`RegistrationResult` whose transform maps follow-up LPS points to prior LPS points.

    Raises:
        InputError: not 3-D, empty region, no body found, or no overlap at initialisation.
        CancelledError: ``cancel()`` returned ``True``.
    """
    return register_rigid_regions(fixed, moving, [moving_region], progress=progress, cancel=cancel)[0]


def register_rigid_regions(fixed: sitk.Image, moving: sitk.Image, moving_regions: Sequence[Optional[sitk.Image]], *,
                           progress: Optional[Callable[[float], None]] = None,
                           cancel: Optional[Callable[[], bool]] = None) -> List[RegistrationResult]:
    """:func:`register_rigid` for several regions at once: the initialisation and the global stage run
    once, the local stage once per region (``None``: a finer global level). One result per region, in
    order; each result's ``seconds`` counts the shared stages once, in the first result."""
    t0 = time.perf_counter()
    _check_3d(fixed, "follow-up image")
    _check_3d(moving, "prior image")
    n_regions = max(1, len(moving_regions))
    stage = _Stage(progress, cancel)
    stage.report(0.0)
    corners_of = []
    regions = []
    for region in moving_regions:
        if region is None:
            corners_of.append(None)
            regions.append(None)
            continue
        c = _mask_corners(region)
        if c is None:
            raise InputError("registration region", "the region around the structures is empty")
        corners_of.append(c)
        regions.append(sitk.Cast(region > 0, sitk.sitkUInt8))
    f = _as_float(fixed)
    m = _as_float(moving)

    # 1. initialisation: body centroids + exhaustive translation search on ~8 mm images
    f8, m8 = _shrink_to(f, 8.0), _shrink_to(m, 8.0)
    fb8, mb8 = _body_mask(f8), _body_mask(m8)
    cf, cm = _centroid(fb8), _centroid(mb8)
    if cf is None:
        raise InputError("follow-up image", "no body found (image blank or no tissue above threshold)")
    if cm is None:
        raise InputError("prior image", "no body found (image blank or no tissue above threshold)")
    tx = sitk.Euler3DTransform()
    tx.SetCenter([float(v) for v in cf])
    tx.SetTranslation([float(v) for v in cm - cf])
    kji = np.argwhere(sitk.GetArrayViewFromImage(fb8) > 0)
    pts = _index_to_physical(fb8, kji)
    mapped = pts + (cm - cf)
    if _inside_fov(m, mapped).mean() < 0.02:
        raise InputError("follow-up image", "the follow-up and the prior do not overlap after initialisation "
                         "(less than 2% of the follow-up body falls in the prior's field of view)")
    stage.check()
    r = _method(24, 0.3, sitk.BinaryDilate(fb8, [1, 1, 1]), None)
    r.SetOptimizerAsExhaustive([0, 0, 0, 3, 3, 4], stepLength=6.0)
    r.SetOptimizerScales([1.0] * 6)
    r.SetInitialTransform(tx, inPlace=True)
    stage.run(r, f8, m8, 0.15, 7 * 7 * 9)

    # 2. global rigid, body-masked
    for target, step, weight in ((6.0, 3.0, 0.15), (3.0, 1.5, 0.2)):
        fs, ms = _shrink_to(f, target), _shrink_to(m, target)
        fmask = sitk.Resample(fb8, fs, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
        tx = _gradient_stage(stage, fs, ms, tx, fixed_mask=sitk.BinaryDilate(fmask, [1, 1, 1]), bins=32,
                             sampling=0.2, step_mm=step, min_step_mm=0.05, iterations=80, weight=weight)
    shared = (stage.iterations, time.perf_counter() - t0)
    global_tx = sitk.Euler3DTransform(tx)

    # 3. local refinement around each region (or a finer global level)
    results: List[RegistrationResult] = []
    for ri, (region, region_corners) in enumerate(zip(regions, corners_of)):
        t1 = time.perf_counter()
        it0 = stage.iterations
        stage.stop = ""
        tx = sitk.Euler3DTransform(global_tx)
        w_local = 0.5 / n_regions
        if region is not None:
            centre_m = _centroid(region)
            inv = tx.GetInverse()
            centre_f = np.array(inv.TransformPoint([float(v) for v in centre_m]))
            tx = _recentred(tx, centre_f)
            corners_f = np.array([inv.TransformPoint([float(v) for v in p]) for p in region_corners])
            fc = _crop_around(f, corners_f, 15.0)
            mc = _crop_around(m, region_corners, 25.0)
            if fc is None or mc is None:
                raise InputError("follow-up image", "the structures' region falls outside the follow-up's field of "
                                 "view after global registration")
            start_tx = sitk.Euler3DTransform(tx)
            for target, step in ((2.0, 1.0), (1.0, 0.5)):
                fs, ms = _shrink_to(fc, target), _shrink_to(mc, target)
                fixed_region = warp_mask(region, fs, start_tx)
                if not np.any(sitk.GetArrayViewFromImage(fixed_region)):
                    raise InputError("follow-up image", "the structures' region falls outside the follow-up's "
                                     "field of view after global registration")
                n = int(np.prod(fs.GetSize()))
                tx = _gradient_stage(stage, fs, ms, tx, fixed_mask=fixed_region, bins=32,
                                     sampling=min(1.0, 60000.0 / n), step_mm=step, min_step_mm=0.01,
                                     iterations=100, weight=w_local / 2)
            moved = np.linalg.norm(_apply_linear(tx, corners_f) - _apply_linear(start_tx, corners_f), axis=1).max()
            if moved > LOCAL_MAX_SHIFT_MM:  # a featureless region let the local fit drift: keep the global one
                stage.stop = (f"local refinement moved the region by {moved:.1f} mm (> {LOCAL_MAX_SHIFT_MM:g} mm): "
                              f"kept the global result; {stage.stop}")
                tx = start_tx
        else:
            fs, ms = _shrink_to(f, 2.0), _shrink_to(m, 2.0)
            fmask = sitk.Resample(fb8, fs, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
            n = int(np.prod(fs.GetSize()))
            tx = _gradient_stage(stage, fs, ms, tx, fixed_mask=sitk.BinaryDilate(fmask, [1, 1, 1]), bins=32,
                                 sampling=min(1.0, 100000.0 / n), step_mm=0.7, min_step_mm=0.01, iterations=100,
                                 weight=w_local)
        extra = shared if ri == 0 else (0, 0.0)
        results.append(RegistrationResult(transform=tx, metric=stage.metric, stop_condition=stage.stop,
                                          iterations=stage.iterations - it0 + extra[0],
                                          seconds=time.perf_counter() - t1 + extra[1]))
    stage.report(1.0)
    return results


def _normalised(image: sitk.Image) -> sitk.Image:
    """``float32`` image clipped to its 1st..99th percentiles and scaled to ``[0, 1]``."""
    arr = sitk.GetArrayViewFromImage(image)
    lo, hi = (float(v) for v in np.percentile(arr, [1, 99]))
    out = sitk.Clamp(_as_float(image), sitk.sitkFloat32, lo, max(hi, lo + 1e-6))
    return sitk.ShiftScale(out, -lo, 1.0 / max(hi - lo, 1e-6))


def register_deformable(fixed: sitk.Image, moving: sitk.Image, initial: sitk.Transform,
                        moving_region: Optional[sitk.Image] = None, method: str = "bspline",
                        margin_mm: float = DEFORMABLE_MARGIN_MM) -> sitk.Transform:
    """Deformable refinement of ``initial`` (benchmark baselines: registration-only propagation).

    Args:
        fixed: follow-up image.
        moving: prior image.
        initial: follow-up -> prior transform to refine (e.g. ``register_rigid(...).transform``).
        moving_region: optional prior-space mask: the work is restricted to a box around it
            (plus ``margin_mm``), which is much faster; outside that box the result equals ``initial``.
        method: ``"bspline"`` (Mattes MI, cubic B-spline grid of ~25 mm, L-BFGS-B, one ~2 mm level) or
            ``"demons"`` (fast symmetric-forces demons on percentile-normalised, histogram-matched
            images resampled onto a ~1.5 mm follow-up grid).

    Returns:
        ``sitk.CompositeTransform`` mapping follow-up LPS points to prior LPS points
        (``initial`` applied after the deformable part).
    """
    _check_3d(fixed, "follow-up image")
    _check_3d(moving, "prior image")
    if method not in ("bspline", "demons"):
        raise InputError("method", f"unknown deformable method {method!r} (use 'bspline' or 'demons')")
    f = _as_float(fixed)
    m = _as_float(moving)
    if moving_region is not None:
        corners = _mask_corners(moving_region)
        if corners is None:
            raise InputError("registration region", "the region around the structures is empty")
        try:
            inv = initial.GetInverse()
            corners_f = np.array([inv.TransformPoint([float(v) for v in p]) for p in corners])
        except RuntimeError:
            corners_f = corners
        fc = _crop_around(f, corners_f, margin_mm)
        if fc is None:
            raise InputError("follow-up image", "the structures' region falls outside the follow-up")
        f = fc
    if method == "bspline":
        fs = _shrink_to(f, 2.0)
        extent = np.asarray(fs.GetSize()) * np.asarray(fs.GetSpacing())
        mesh = [max(1, int(round(e / BSPLINE_MESH_MM))) for e in extent]
        bsp = sitk.BSplineTransformInitializer(fs, mesh, order=3)
        r = _method(32, min(1.0, BSPLINE_SAMPLES / float(np.prod(fs.GetSize()))), None, None)
        r.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-5, numberOfIterations=BSPLINE_ITERATIONS,
                               maximumNumberOfCorrections=5, maximumNumberOfFunctionEvaluations=3 * BSPLINE_ITERATIONS)
        r.SetMovingInitialTransform(initial)
        r.SetInitialTransform(bsp, inPlace=True)
        try:
            r.Execute(fs, m)
        except RuntimeError as exc:
            raise InputError("follow-up image", f"deformable registration failed: "
                             f"{str(exc).strip().splitlines()[-1]}") from None
        return sitk.CompositeTransform([initial, bsp])
    # demons
    fs = _shrink_to(f, 1.5)
    mr = sitk.Resample(m, fs, initial, sitk.sitkLinear, float(np.percentile(sitk.GetArrayViewFromImage(m), 1)),
                       sitk.sitkFloat32)
    fn = _normalised(fs)
    mn = _normalised(mr)
    if DEMONS_HISTOGRAM_MATCHING:
        mn = sitk.HistogramMatching(mn, fn, numberOfHistogramLevels=256, numberOfMatchPoints=15,
                                    thresholdAtMeanIntensity=True)
    demons = sitk.FastSymmetricForcesDemonsRegistrationFilter()
    demons.SetNumberOfIterations(60)
    demons.SetStandardDeviations(1.5)
    demons.SmoothDisplacementFieldOn()
    demons.SmoothUpdateFieldOff()
    field = demons.Execute(fn, mn)
    dft = sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))
    return sitk.CompositeTransform([initial, dft])


@dataclass
class StructureRegistration:
    """How one prior structure was carried onto the follow-up (stage "register" of propagation).

    Attributes:
        rigid: the rigid registration around the structure.
        transform: the final follow-up -> prior transform: ``rigid.transform`` alone, or a
            ``sitk.CompositeTransform`` of it and the deformable stage.
        deformable: the deformable method used (``demons``, ``bspline``) or ``none``.
        deformable_seconds: wall time of the deformable stage.
    """

    rigid: RegistrationResult
    transform: sitk.Transform
    deformable: str = "none"
    deformable_seconds: float = 0.0

    def parameters(self) -> dict:
        d = self.rigid.parameters()
        d["deformable"] = self.deformable
        d["deformable_seconds"] = float(self.deformable_seconds)
        return d


def choose_deformable(method: str, same_modality: bool) -> str:
    """``auto``: demons for same-modality pairs (intensities correspond after histogram matching), the
    mutual-information B-spline across modalities; otherwise the method asked for."""
    if method not in DEFORMABLE_METHODS:
        raise InputError("deformable", f"unknown method {method!r}; expected one of {', '.join(DEFORMABLE_METHODS)}")
    if method == "auto":
        return "demons" if same_modality else "bspline"
    return method


def register_structures(fixed: sitk.Image, moving: sitk.Image, masks: Sequence[sitk.Image], *,
                        margin_mm: float = 40.0, deformable: str = "auto", same_modality: bool = True,
                        joint: bool = False, progress: Optional[Callable[[float, str], None]] = None,
                        cancel: Optional[Callable[[], bool]] = None,
                        after_rigid: Optional[Callable[[List[RegistrationResult]], None]] = None
                        ) -> List[StructureRegistration]:
    """Rigid registration around each structure (or around all, ``joint``), then a deformable stage per structure.

    Args:
        fixed: follow-up; moving: prior; masks: prior structures (``sitkUInt8`` on the prior grid).
        margin_mm: the rigid metric region is the structure grown by this.
        deformable: ``auto`` / ``demons`` / ``bspline`` / ``none`` (see :func:`choose_deformable`); the
            deformable stage works on a box around the structure (plus :data:`DEFORMABLE_MARGIN_MM`) at
            ~1.5 mm (demons) or ~2 mm (B-spline), so it costs seconds, and equals the rigid transform
            outside that box. Structures with the same rigid transform share one deformable run
            (``deformable_seconds`` is then split between them).
        progress: ``(fraction, message)``.
        after_rigid: called with the rigid result of each mask (in order) before the deformable stage;
            it may raise to stop there (a failed plausibility check costs no deformable registration).
    Returns:
        One :class:`StructureRegistration` per mask, in order.
    """
    method = choose_deformable(deformable, same_modality)
    n = len(masks)
    groups = [list(masks)] if joint else [[m] for m in masks]
    regions = [structure_region(g, margin_mm) for g in groups]

    def rigid_progress(f: float) -> None:
        if progress is not None:
            progress(0.6 * f if method != "none" else f, "rigid registration around the structures")

    rigid = register_rigid_regions(fixed, moving, regions, progress=rigid_progress, cancel=cancel)
    per_mask = [rigid[0] if joint else rigid[i] for i in range(n)]
    if after_rigid is not None:
        after_rigid(per_mask)
    if method == "none":
        return [StructureRegistration(r, r.transform) for r in per_mask]
    # structures with (nearly) the same rigid transform share one deformable registration on the union
    # of their boxes: one demons field for the three cardiac structures instead of three
    groups_of: List[List[int]] = []
    corners = [_mask_corners(m) for m in masks]
    for i in range(n):
        for g in groups_of:
            j = g[0]
            pts = np.vstack([c for c in (corners[i], corners[j]) if c is not None])
            a = _apply_linear(per_mask[i].transform.GetInverse(), pts)
            b = _apply_linear(per_mask[j].transform.GetInverse(), pts)
            if float(np.linalg.norm(a - b, axis=1).max()) < SHARED_DEFORMABLE_MM:
                g.append(i)
                break
        else:
            groups_of.append([i])
    out: List[Optional[StructureRegistration]] = [None] * n
    for gi, g in enumerate(groups_of):
        if cancel is not None and cancel():
            raise CancelledError("registration cancelled")
        if progress is not None:
            progress(0.6 + 0.4 * gi / max(1, len(groups_of)),
                     f"deformable registration ({method}) around {len(g)} structure(s)")
        t = time.perf_counter()
        region = masks[g[0]]
        for i in g[1:]:
            region = sitk.Or(sitk.Cast(region > 0, sitk.sitkUInt8), sitk.Cast(masks[i] > 0, sitk.sitkUInt8))
        tx = register_deformable(fixed, moving, per_mask[g[0]].transform, region, method=method)
        seconds = (time.perf_counter() - t) / len(g)
        for i in g:
            out[i] = StructureRegistration(per_mask[i], tx, method, seconds)
    if progress is not None:
        progress(1.0, "registration done")
    return [o for o in out if o is not None]


