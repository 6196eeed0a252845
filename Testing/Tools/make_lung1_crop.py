#!/usr/bin/env python
"""Regenerate ``Testing/Data/lung1_crop/`` (a small 3-D chest-CT crop with two labelled structures).

Source: ``lung1_image.nrrd`` and ``lung1_label.nrrd`` of the PyRadiomics 3.0.1 source
distribution (``pyradiomics-3.0.1/data/``, BSD-3-Clause): pass that folder as ``--source``.

What it writes (gzip-compressed NRRD, written by SimpleITK, LPS, physical geometry kept):

* ``prior_ct.nrrd``: ``int16`` HU, the voxel block ``i = 96..351``, ``j = 224..479``,
  ``k = 21..44`` of lung1 (256 x 256 x 24 voxels, 0.5703 x 0.5703 x 5 mm). Array ``[k, j, i]``
  index ``[0, 0, 0]`` of the crop is voxel ``(i, j, k) = (96, 224, 21)`` of lung1.
* ``prior_labels.nrrd``: ``uint8`` labelmap on the same grid:
  ``1`` = GTV, lung1_label's lesion unchanged (voxels on lung1 slices 32..34 = crop slices 11..13);
  ``2`` = VertebralBody, a **threshold-derived** structure, **not an expert contour**:
  inside the lung1 voxel box ``i = 232..292``, ``j = 360..412``, ``k = 31..35`` keep HU > 200;
  slice by slice (2-D) apply a binary closing (ball, radius 6 voxels) then fill holes; keep the
  largest 3-D (face-connected) component.

Usage::

    python Testing/Tools/make_lung1_crop.py --source PYRADIOMICS_DATA_DIR [--output DIR]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUTPUT = ROOT / "Testing" / "Data" / "lung1_crop"

#: crop in lung1 voxel indices (i, j, k) = (column, row, slice): start and size
CROP_START = (96, 224, 21)
CROP_SIZE = (256, 256, 24)
#: box (lung1 voxel indices, inclusive) and threshold used to derive label 2
VERTEBRA_BOX = {"i": (232, 292), "j": (360, 412), "k": (31, 35)}
VERTEBRA_HU = 200
#: 2-D closing radius (voxels) before the hole fill, so open cortical rings close
CLOSING_RADIUS = 6
LABELS = {1: "GTV", 2: "VertebralBody"}


def vertebral_body(ct: sitk.Image) -> np.ndarray:
    """Label 2 on lung1's grid: ``bool [k, j, i]`` (threshold > 200 HU in a box, 2-D closing + hole fill, largest component)."""
    arr = sitk.GetArrayFromImage(ct)
    out = np.zeros(arr.shape, dtype=bool)
    (i0, i1), (j0, j1), (k0, k1) = VERTEBRA_BOX["i"], VERTEBRA_BOX["j"], VERTEBRA_BOX["k"]
    box = arr[k0:k1 + 1, j0:j1 + 1, i0:i1 + 1] > VERTEBRA_HU
    filled = np.zeros_like(box)
    for k in range(box.shape[0]):
        sl = sitk.GetImageFromArray(box[k].astype(np.uint8))
        sl = sitk.BinaryMorphologicalClosing(sl, [CLOSING_RADIUS, CLOSING_RADIUS], sitk.sitkBall, 1)
        filled[k] = sitk.GetArrayFromImage(sitk.BinaryFillhole(sl, fullyConnected=False, foregroundValue=1)) > 0
    cc = sitk.GetArrayFromImage(sitk.ConnectedComponent(sitk.GetImageFromArray(filled.astype(np.uint8)), False))
    if cc.max() == 0:
        raise RuntimeError("no bone above threshold in the vertebra box")
    sizes = np.bincount(cc.ravel())
    sizes[0] = 0
    out[k0:k1 + 1, j0:j1 + 1, i0:i1 + 1] = cc == int(np.argmax(sizes))
    return out


def make_crop(source: Path, output: Path) -> None:
    ct = sitk.ReadImage(str(source / "lung1_image.nrrd"))
    lesion = sitk.ReadImage(str(source / "lung1_label.nrrd"))
    labels = np.zeros(sitk.GetArrayViewFromImage(ct).shape, dtype=np.uint8)
    labels[vertebral_body(ct)] = 2
    labels[sitk.GetArrayFromImage(lesion) > 0] = 1
    label_img = sitk.GetImageFromArray(labels)
    label_img.CopyInformation(ct)

    ct_crop = sitk.Cast(sitk.RegionOfInterest(ct, CROP_SIZE, CROP_START), sitk.sitkInt16)
    lab_crop = sitk.RegionOfInterest(label_img, CROP_SIZE, CROP_START)
    full = np.bincount(labels.ravel(), minlength=3)
    kept = np.bincount(sitk.GetArrayViewFromImage(lab_crop).ravel(), minlength=3)
    if tuple(kept[1:]) != tuple(full[1:]):
        raise RuntimeError(f"crop loses labelled voxels: {full} vs {kept}")

    output.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(ct_crop, str(output / "prior_ct.nrrd"), useCompression=True)
    sitk.WriteImage(lab_crop, str(output / "prior_labels.nrrd"), useCompression=True)
    arr = sitk.GetArrayViewFromImage(lab_crop)
    for value, name in LABELS.items():
        ks = np.unique(np.nonzero(arr == value)[0])
        print(f"label {value} ({name}): {int(kept[value])} voxels on crop slices {ks.min()}..{ks.max()}")
    print(f"wrote {output} : size {ct_crop.GetSize()}, origin {ct_crop.GetOrigin()}, spacing {ct_crop.GetSpacing()}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, required=True,
                        help="folder holding lung1_image.nrrd and lung1_label.nrrd (pyradiomics-3.0.1/data/)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="output folder (default: %(default)s)")
    args = parser.parse_args(argv)
    make_crop(args.source, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
