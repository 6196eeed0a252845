"""Benchmark cases for 3D propagation: a prior image with structures, a follow-up and its truth.

Sets (``load_set(name, ...)``):

* ``acdc`` — REAL same-patient change: cine-MR end-diastole (prior image + expert labels) to
  end-systole (follow-up; its expert labels are the truth) of 10 ACDC patients, read by path
  from the development data folder (``--data``, default ``../shared/data``; see its README:
  research use, not redistributed here). Structures RV, Myocardium (a ring), LV.
* ``lung-sim`` — SIMULATED follow-ups of the bundled lung CT crop (``Testing/Tools/
  simulate_followup.py``): rigid motion, GTV shrunk 25 % by contracting the tissue around it,
  smooth deformation, new grid, noise. Structures GTV, VertebralBody.
* ``lung-response`` — SIMULATED tumour response of the same crop (``Testing/Tools/
  simulate_response.py``): regression by tissue replacement (the vacated volume becomes lung,
  with a faint residue), irregular growth into lung, each also as a CBCT-like follow-up
  (correlated noise, cupping, HU offset, blur). Structure GTV (and VertebralBody, unchanged).
* ``lung-fov`` — the first two response scenarios on the WHOLE lung1 field of view (512 x 512 CT
  slices of 0.57 mm, as a planning CT has; read from the development data folder), so that the
  encoding scale is measured on full-size CT slices too.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "Testing" / "Tools") not in sys.path:
    sys.path.insert(0, str(ROOT / "Testing" / "Tools"))

CROP = ROOT / "Testing" / "Data" / "lung1_crop"
ACDC_PATIENTS = ("008", "013", "022", "028", "033", "045", "059", "065", "075", "082")
ACDC_LABELS = {"RV": 1, "Myocardium": 2, "LV": 3}
LUNG_LABELS = {"GTV": 1, "VertebralBody": 2}
#: motions of the simulated lung cases (rotation deg X, Y, Z; translation mm)
MOTIONS = [((1.0, -1.5, 4.0), (12.0, -8.0, 6.0)), ((-2.0, 1.0, -3.0), (-6.0, 10.0, -4.0)),
           ((0.5, 2.0, 6.0), (3.0, 5.0, 9.0)), ((1.5, 0.0, -5.0), (-10.0, -3.0, 2.0))]


@dataclass
class Case:
    """One benchmark case. Images are ``SimpleITK.Image`` (LPS mm); masks ``sitkUInt8`` 0/1 on their image's grid."""

    name: str
    set: str
    prior: sitk.Image
    prior_masks: Dict[str, sitk.Image]
    followup: sitk.Image
    truth: Dict[str, sitk.Image]
    modality: str = "CT"
    info: dict = field(default_factory=dict)


def _binary(labels: sitk.Image, value: int) -> sitk.Image:
    return sitk.Cast(labels == value, sitk.sitkUInt8)


def acdc_cases(data: Path, patients: Optional[List[str]] = None) -> List[Case]:
    """ED -> ES of each ACDC development patient (both frames share one geometry, as acquired)."""
    folder = Path(data) / "acdc_ed_es_dev"
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} not found: give --data the development data folder (../shared/data)")
    out = []
    for p in patients or ACDC_PATIENTS:
        base = folder / f"patient{p}"
        ed = sitk.ReadImage(f"{base}_ED_image.nrrd", sitk.sitkFloat32)
        es = sitk.ReadImage(f"{base}_ES_image.nrrd", sitk.sitkFloat32)
        ed_l = sitk.ReadImage(f"{base}_ED_label.nrrd")
        es_l = sitk.ReadImage(f"{base}_ES_label.nrrd")
        out.append(Case(f"patient{p}", "acdc", ed, {n: _binary(ed_l, v) for n, v in ACDC_LABELS.items()}, es,
                        {n: _binary(es_l, v) for n, v in ACDC_LABELS.items()}, modality="MR"))
    return out


def _lung_crop():
    ct = sitk.ReadImage(str(CROP / "prior_ct.nrrd"), sitk.sitkFloat32)
    labels = sitk.ReadImage(str(CROP / "prior_labels.nrrd"))
    return ct, {n: _binary(labels, v) for n, v in LUNG_LABELS.items()}


def lung_sim_cases(n: int = 3) -> List[Case]:
    """The simulator's contracting-tissue follow-ups (seeds 0..n-1, the motions above)."""
    from simulate_followup import simulate_followup

    ct, masks = _lung_crop()
    out = []
    for case in range(n):
        rot, trans = MOTIONS[case % len(MOTIONS)]
        fu, truth, info = simulate_followup(ct, masks, seed=case, rotation_deg=rot, translation_mm=trans)
        out.append(Case(f"sim{case}", "lung-sim", ct, masks, fu, truth, "CT", {"volume_ratio": info["volume_ratio"]}))
    return out


#: the response scenarios: (name, kind, volume change, CBCT-like)
RESPONSE_SCENARIOS = [("regress-40", "regress", -0.4, False), ("regress-60-cbct", "regress", -0.6, True),
                      ("grow+50", "grow", 0.5, False), ("grow+40-cbct", "grow", 0.4, True)]


def lung_response_cases(scenarios=None) -> List[Case]:
    """Tumour-response follow-ups of the lung crop (see ``Testing/Tools/simulate_response.py``)."""
    from simulate_response import simulate_response

    ct, masks = _lung_crop()
    out = []
    for i, (name, kind, change, cbct) in enumerate(scenarios or RESPONSE_SCENARIOS):
        rot, trans = MOTIONS[i % len(MOTIONS)]
        fu, truth, info = simulate_response(ct, masks, "GTV", kind=kind, volume_change=change, cbct=cbct, seed=i,
                                            rotation_deg=rot, translation_mm=trans)
        out.append(Case(name, "lung-response", ct, masks, fu, truth, "CT", {"volume_ratio": info["volume_ratio"]}))
    return out


def _lung_full_fov(data: Path):
    """The whole lung1 CT in-plane (512 x 512, 0.57 mm: a real CT slice) on the crop's slices ``k = 21..44``,
    with the GTV and the same threshold-derived vertebral body as the crop (read from the development data
    folder's ``pyradiomics_testcases``; BSD-3-Clause)."""
    from make_lung1_crop import CROP_SIZE, CROP_START, vertebral_body

    folder = Path(data) / "pyradiomics_testcases"
    if not (folder / "lung1_image.nrrd").is_file():
        raise FileNotFoundError(f"{folder}/lung1_image.nrrd not found: give --data the development data folder")
    ct = sitk.ReadImage(str(folder / "lung1_image.nrrd"), sitk.sitkFloat32)
    lesion = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "lung1_label.nrrd"))) > 0
    vb = vertebral_body(ct)
    size = list(ct.GetSize())
    start, n = [0, 0, CROP_START[2]], [size[0], size[1], CROP_SIZE[2]]
    ct = sitk.RegionOfInterest(ct, n, start)
    masks = {}
    for name, arr in (("GTV", lesion), ("VertebralBody", vb & ~lesion)):
        m = sitk.GetImageFromArray(arr[start[2]:start[2] + n[2]].astype(np.uint8))
        m.CopyInformation(ct)
        masks[name] = m
    return ct, masks


def lung_fov_cases(data: Path, scenarios=None) -> List[Case]:
    """The lung-response scenarios on the full field of view (512 x 512 CT slices, see :func:`_lung_full_fov`)."""
    from simulate_response import simulate_response

    ct, masks = _lung_full_fov(data)
    out = []
    for i, (name, kind, change, cbct) in enumerate(scenarios or RESPONSE_SCENARIOS[:2]):
        rot, trans = MOTIONS[i % len(MOTIONS)]
        fu, truth, info = simulate_response(ct, masks, "GTV", kind=kind, volume_change=change, cbct=cbct, seed=i,
                                            rotation_deg=rot, translation_mm=trans)
        out.append(Case(f"fov-{name}", "lung-fov", ct, masks, fu, truth, "CT", {"volume_ratio": info["volume_ratio"]}))
    return out


def load_set(name: str, data: Path, limit: Optional[int] = None) -> List[Case]:
    if name == "acdc":
        cases = acdc_cases(data)
    elif name == "lung-fov":
        cases = lung_fov_cases(data)
    elif name == "lung-sim":
        cases = lung_sim_cases(3)
    elif name == "lung-response":
        cases = lung_response_cases()
    else:
        raise ValueError(f"unknown set {name!r}: acdc, lung-sim, lung-response or lung-fov")
    return cases[:limit] if limit else cases


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int((a & b).sum()) / s


def hd95(a: np.ndarray, b: np.ndarray, spacing_kji) -> float:
    """95th percentile of the symmetric surface distances (mm); inf when one mask is empty."""
    from scipy import ndimage

    if not a.any() or not b.any():
        return float("inf")
    sa = a & ~ndimage.binary_erosion(a)
    sb = b & ~ndimage.binary_erosion(b)
    da = ndimage.distance_transform_edt(~sb, sampling=spacing_kji)[sa]
    db = ndimage.distance_transform_edt(~sa, sampling=spacing_kji)[sb]
    return float(np.percentile(np.concatenate([da, db]), 95))
