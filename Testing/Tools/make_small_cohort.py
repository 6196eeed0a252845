#!/usr/bin/env python
"""A small SIMULATED cohort for cohort runs and server tests: cases that take seconds, not minutes.

**Simulations, not patient data.** The prior is a 128 x 128 x 24 crop of the bundled lung CT
(``Testing/Data/lung1_crop``, BSD-3) around its GTV, with the GTV only (a Slicer ``.seg.nrrd``
named ``GTV``); each follow-up is :func:`simulate_followup.simulate_followup` of it with its own
seed: a rigid shift (6 / -4 / 3 mm) and rotation, the GTV shrunk by 25 %, a smooth deformation,
a 0.8 x 0.8 x 5 mm grid, noise. The GTV spans 3 prior slices and about 3 follow-up slices, so one
propagation encodes ~6 crops (a few seconds on 2 CPU cores). The truth (the simulation's GTV on
the follow-up grid) is written as ``truth_<seed>.seg.nrrd``.

``make_small_cohort(folder, seeds=(1, 2), broken=True)`` also writes ``cohort.csv``, a manifest
of one case per seed plus, with ``broken``, a case whose follow-up file is not an image (it must
fail alone).

CLI::

    python Testing/Tools/make_small_cohort.py OUT_DIR [--seeds 1 2 3] [--broken]
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path
from typing import Dict, Sequence

import numpy as np
import SimpleITK as sitk

TOOLS = Path(__file__).resolve().parent
LUNG_CROP = TOOLS.parent / "Data" / "lung1_crop"
sys.path.insert(0, str(TOOLS))
from simulate_followup import simulate_followup  # noqa: E402

#: propagate options that keep a small case fast (used by the tests, the benchmark and the docs)
FAST_OPTIONS = ["--max-parts", "2", "--slice-margin", "0"]
GTV_COLOR = (0.85, 0.2, 0.2)
CROP = 128


def _write_seg(path: Path, name: str, mask: sitk.Image, note: str) -> None:
    from P2SAMLogic.io import write_segmentation
    from P2SAMLogic.io.volume import Segment

    seg = Segment(name, GTV_COLOR, sitk.Cast(mask, sitk.sitkUInt8), "GTV", {})
    write_segmentation(str(path), [seg], mask, {"note": note}, overwrite=True)


def make_small_prior(folder: Path) -> Dict[str, str]:
    """Write ``prior_ct.nrrd`` (int16 HU) and ``prior.seg.nrrd`` (GTV) into ``folder``; return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    ct = sitk.ReadImage(str(LUNG_CROP / "prior_ct.nrrd"))
    labels = sitk.ReadImage(str(LUNG_CROP / "prior_labels.nrrd"))
    k, j, i = np.nonzero(sitk.GetArrayViewFromImage(labels) == 1)
    size_i, size_j = ct.GetSize()[0], ct.GetSize()[1]
    i0 = int(np.clip(int(i.mean()) - CROP // 2, 0, size_i - CROP))
    j0 = int(np.clip(int(j.mean()) - CROP // 2, 0, size_j - CROP))
    prior = ct[i0:i0 + CROP, j0:j0 + CROP, :]
    gtv = sitk.Cast(labels[i0:i0 + CROP, j0:j0 + CROP, :] == 1, sitk.sitkUInt8)
    sitk.WriteImage(prior, str(folder / "prior_ct.nrrd"), True)
    _write_seg(folder / "prior.seg.nrrd", "GTV", gtv, "GTV of Testing/Data/lung1_crop, cropped")
    return {"prior_image": str(folder / "prior_ct.nrrd"), "prior_segmentation": str(folder / "prior.seg.nrrd")}


def make_small_followup(folder: Path, seed: int) -> Dict[str, str]:
    """Write ``followup_<seed>.nrrd`` and ``truth_<seed>.seg.nrrd`` (needs :func:`make_small_prior` first)."""
    prior = sitk.ReadImage(str(folder / "prior_ct.nrrd"), sitk.sitkFloat32)
    from P2SAMLogic.io import read_segmentation

    gtv = read_segmentation(str(folder / "prior.seg.nrrd"), prior)[0].mask
    fu, truth, _ = simulate_followup(prior, {"GTV": gtv}, seed=seed, spacing=(0.8, 0.8, 5.0),
                                     translation_mm=(6.0, -4.0, 3.0))
    sitk.WriteImage(sitk.Cast(sitk.Round(fu), sitk.sitkInt16), str(folder / f"followup_{seed}.nrrd"), True)
    _write_seg(folder / f"truth_{seed}.seg.nrrd", "GTV", truth["GTV"],
               f"SIMULATED truth (simulate_followup seed {seed})")
    return {"followup": str(folder / f"followup_{seed}.nrrd"), "truth": str(folder / f"truth_{seed}.seg.nrrd")}


def make_small_cohort(folder, seeds: Sequence[int] = (1, 2), broken: bool = True) -> Path:
    """Prior, one follow-up per seed, and ``cohort.csv`` (relative paths; outputs in ``out/``)."""
    folder = Path(folder)
    make_small_prior(folder)
    (folder / "out").mkdir(exist_ok=True)
    rows = []
    for seed in seeds:
        make_small_followup(folder, seed)
        rows.append([f"sim{seed}", "prior_ct.nrrd", "prior.seg.nrrd", f"followup_{seed}.nrrd",
                     f"out/sim{seed}.seg.nrrd", "GTV", f"truth_{seed}.seg.nrrd"])
    if broken:
        (folder / "followup_broken.nrrd").write_bytes(b"NRRD0004\nthis is not an image\n")
        rows.append(["broken", "prior_ct.nrrd", "prior.seg.nrrd", "followup_broken.nrrd",
                     "out/broken.seg.nrrd", "GTV", ""])
    manifest = folder / "cohort.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as handle:
        w = csv.writer(handle)
        w.writerow(["case", "prior_image", "prior_segmentation", "followup", "output", "segments", "truth"])
        w.writerows(rows)
    return manifest


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Write a small SIMULATED cohort (not patient data) and its "
                                                 "manifest cohort.csv")
    parser.add_argument("output", type=Path, help="folder to write into")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2], help="one follow-up per seed")
    parser.add_argument("--broken", action="store_true", help="add a case whose follow-up is not an image")
    args = parser.parse_args(argv)
    manifest = make_small_cohort(args.output, args.seeds, args.broken)
    print(f"wrote {manifest} (SIMULATED follow-ups); fast options: {' '.join(FAST_OPTIONS)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
