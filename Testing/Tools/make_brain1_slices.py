#!/usr/bin/env python
"""Regenerate ``Testing/Data/brain1_slices/`` (the tumour slices of a real brain MR, for the encoding-scale test).

Source: ``brain1_image.nrrd`` and ``brain1_label.nrrd`` of the PyRadiomics 3.0.1 source distribution
(``pyradiomics-3.0.1/data/``, BSD-3-Clause): pass that folder as ``--source``.

What it writes (gzip-compressed NRRD, written by SimpleITK, LPS, physical geometry kept):

* ``mr.nrrd``: ``int16``, the slices ``k = 11..17`` of brain1 (every slice holding the tumour label),
  256 x 256 x 7 voxels, 0.78125 x 0.78125 x 6.5 mm, brain1's own origin and direction for those slices;
* ``tumour.nrrd``: ``uint8`` 0/1, brain1_label on the same slices and grid.

Usage::

    python Testing/Tools/make_brain1_slices.py --source PYRADIOMICS_DATA_DIR [--output DIR]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUTPUT = ROOT / "Testing" / "Data" / "brain1_slices"
FIRST, COUNT = 11, 7  # brain1 slices holding the tumour label


def make(source: Path, output: Path) -> None:
    image = sitk.ReadImage(str(source / "brain1_image.nrrd"))
    label = sitk.ReadImage(str(source / "brain1_label.nrrd"))
    size = list(image.GetSize())
    start, n = [0, 0, FIRST], [size[0], size[1], COUNT]
    mr = sitk.Cast(sitk.RegionOfInterest(image, n, start), sitk.sitkInt16)
    tumour = sitk.Cast(sitk.RegionOfInterest(label, n, start) > 0, sitk.sitkUInt8)
    full = int((sitk.GetArrayViewFromImage(label) > 0).sum())
    kept = int(sitk.GetArrayViewFromImage(tumour).sum())
    if kept != full:
        raise RuntimeError(f"the slices keep {kept} of the label's {full} voxels")
    output.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(mr, str(output / "mr.nrrd"), useCompression=True)
    sitk.WriteImage(tumour, str(output / "tumour.nrrd"), useCompression=True)
    print(f"wrote {output}: size {mr.GetSize()}, spacing {mr.GetSpacing()}, tumour {kept} voxels")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", type=Path, required=True,
                    help="folder holding brain1_image.nrrd and brain1_label.nrrd (pyradiomics-3.0.1/data/)")
    ap.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="output folder (default: %(default)s)")
    args = ap.parse_args(argv)
    make(args.source, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
