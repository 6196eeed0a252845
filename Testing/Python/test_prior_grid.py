"""A prior segmentation on another voxel grid than the prior image (bad input).

Resampled with a warning naming the file when it overlaps the image in physical space (saying how
much of the image it covers, and which segments touch its edge inside the image: possibly cut);
exit 2 naming the file when it does not overlap at all; no warning on the same grid.
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from P2SAMLogic.cli import main

from conftest import LUNG_CROP

PRIOR = LUNG_CROP / "prior_ct.nrrd"


def run(capsys, tmp_path, segmentation, followup):
    code = main(["propagate", "--quiet", "--prior-image", str(PRIOR), "--prior-segmentation", str(segmentation),
                 "--followup", str(followup), "--output", str(tmp_path / "out.seg.nrrd"), "--method", "rigid"])
    return code, capsys.readouterr().err


def labels_on(grid: sitk.Image) -> sitk.Image:
    labels = sitk.ReadImage(str(LUNG_CROP / "prior_labels.nrrd"))
    return sitk.Resample(labels, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)


def test_a_half_size_labelmap_is_resampled_with_warnings(tmp_path, capsys, simulated_followup):
    ct = sitk.ReadImage(str(PRIOR))
    fu = tmp_path / "fu.nrrd"
    sitk.WriteImage(sitk.Cast(simulated_followup[0], sitk.sitkInt16), str(fu))
    # half the prior's voxels per axis in-plane (2x spacing) over the left part of the image: it cuts the GTV
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(LUNG_CROP / "prior_labels.nrrd")))
    i_gtv = np.nonzero(labels == 1)[2]
    half = sitk.Image([int((i_gtv.min() + i_gtv.max()) // 2) // 2, 128, 24], sitk.sitkUInt8)
    half.SetSpacing((ct.GetSpacing()[0] * 2, ct.GetSpacing()[1] * 2, ct.GetSpacing()[2]))
    half.SetOrigin(ct.GetOrigin())
    path = tmp_path / "half_labels.nrrd"
    sitk.WriteImage(labels_on(half), str(path))
    code, err = run(capsys, tmp_path, path, fu)
    assert code == 0, err
    assert f"p2sam: warning: {path}: on another voxel grid than the prior image" in err
    assert "resampled onto the prior image" in err and "structures outside it are missing" in err
    assert "segment 'Label 1' touches the edge of the labelmap's grid" in err and "may be cut" in err


def test_a_labelmap_elsewhere_in_space_is_refused(tmp_path, capsys, simulated_followup):
    ct = sitk.ReadImage(str(PRIOR))
    fu = tmp_path / "fu.nrrd"
    sitk.WriteImage(sitk.Cast(simulated_followup[0], sitk.sitkInt16), str(fu))
    labels = sitk.ReadImage(str(LUNG_CROP / "prior_labels.nrrd"))
    labels.SetOrigin(tuple(np.array(ct.GetOrigin()) + [0.0, 0.0, 500.0]))
    path = tmp_path / "far_labels.nrrd"
    sitk.WriteImage(labels, str(path))
    code, err = run(capsys, tmp_path, path, fu)
    assert code == 2
    assert str(path) in err and "does not overlap the prior image" in err
    assert not (tmp_path / "out.seg.nrrd").exists()


def test_the_labelmap_of_the_prior_grid_gives_no_warning(tmp_path, capsys, simulated_followup):
    fu = tmp_path / "fu.nrrd"
    sitk.WriteImage(sitk.Cast(simulated_followup[0], sitk.sitkInt16), str(fu))
    code, err = run(capsys, tmp_path, LUNG_CROP / "prior_labels.nrrd", fu)
    assert code == 0 and "warning" not in err.replace("unreviewed", ""), err
