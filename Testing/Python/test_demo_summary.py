"""The demo's summary (Testing/Tools/demo_summary.py): the proposal's and the registration's Dice side by side."""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from demo_summary import format_summary, main, summarise
from P2SAMLogic.io import write_segmentation
from P2SAMLogic.io.volume import Segment


def _image(arr: np.ndarray, like: sitk.Image = None) -> sitk.Image:
    img = sitk.GetImageFromArray(arr)
    if like is None:
        img.SetSpacing((0.8, 0.8, 3.0))
        img.SetOrigin((-10.0, 5.0, 2.0))
    else:
        img.CopyInformation(like)
    return img


@pytest.fixture
def demo_output(tmp_path):
    """A follow-up, its true labels and two segmentations whose Dice against the truth are known exactly."""
    fu = _image(np.zeros((4, 20, 20), np.int16))
    truth = np.zeros((4, 20, 20), np.uint8)
    truth[1:3, 5:15, 5:15] = 1  # GTV: 200 voxels
    truth[0:4, 0:2, 0:5] = 2  # Cord: 40 voxels
    prop_gtv = truth == 1
    prop_gtv[1, 5:15, 5:10] = False  # 150 voxels, all inside: Dice 300 / 350
    reg_gtv = np.zeros_like(prop_gtv)
    reg_gtv[1:3, 5:15, 10:20] = True  # 200 voxels, 100 inside: Dice 200 / 400
    cord = truth == 2
    sitk.WriteImage(fu, str(tmp_path / "fu.nrrd"))
    sitk.WriteImage(_image(truth, fu), str(tmp_path / "truth.nrrd"))
    for name, gtv in (("proposal", prop_gtv), ("registration", reg_gtv)):
        segs = [Segment("GTV", (1.0, 0.0, 0.0), _image(gtv.astype(np.uint8), fu)),
                Segment("Cord", (0.0, 1.0, 0.0), _image(cord.astype(np.uint8), fu))]
        write_segmentation(tmp_path / f"{name}.seg.nrrd", segs, fu, {})
    (tmp_path / "report.json").write_text(json.dumps({"segments": [
        {"name": "GTV", "model_share": 0.75, "slices_flagged": 1},
        {"name": "Cord", "model_share": None, "slices_flagged": 0}]}))
    (tmp_path / "simulation.json").write_text(json.dumps({"labels": {"1": "GTV", "2": "Cord"}}))
    return tmp_path


def test_the_summary_shows_the_proposal_and_the_registration_side_by_side(demo_output):
    d = demo_output
    rows = summarise(d / "fu.nrrd", d / "truth.nrrd", {1: "GTV", 2: "Cord"}, d / "proposal.seg.nrrd",
                     d / "registration.seg.nrrd", d / "report.json")
    by = {r["name"]: r for r in rows}
    assert by["GTV"]["proposal_dice"] == pytest.approx(300 / 350)
    assert by["GTV"]["registration_dice"] == pytest.approx(0.5)
    assert by["Cord"]["proposal_dice"] == by["Cord"]["registration_dice"] == 1.0
    lines = format_summary(rows).splitlines()
    assert "P2SAM proposal" in lines[1] and "registration alone" in lines[1]
    assert lines[2].split() == ["GTV", "0.857", "0.500", "75", "%", "1"]
    assert lines[3].split() == ["Cord", "1.000", "1.000", "n/a", "0"]


def test_the_cli_prints_the_table(demo_output, capsys):
    d = demo_output
    assert main(["--followup", str(d / "fu.nrrd"), "--truth", str(d / "truth.nrrd"), "--simulation",
                 str(d / "simulation.json"), "--proposal", str(d / "proposal.seg.nrrd"), "--registration",
                 str(d / "registration.seg.nrrd"), "--report", str(d / "report.json")]) == 0
    assert "GTV                       0.857               0.500" in capsys.readouterr().out


def test_a_segment_without_a_true_label_is_named(demo_output):
    d = demo_output
    with pytest.raises(ValueError, match="no true label for segment 'Cord'"):
        summarise(d / "fu.nrrd", d / "truth.nrrd", {1: "GTV"}, d / "proposal.seg.nrrd",
                  d / "registration.seg.nrrd", d / "report.json")
