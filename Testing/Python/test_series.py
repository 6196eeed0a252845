"""One prior onto several follow-ups: P2SAMLogic.propagation.series and ``p2sam propagate --followup A B --output-dir D``.

Small cases: the GTV of the bundled lung CT crop onto SIMULATED follow-ups (Testing/Tools/
simulate_followup.py) on a coarse 1 x 1 x 5 mm grid; the model-backed test runs the real
LiteMedSAM (loaded for real, and counted) prompted with the registered prior's box, no slice margin.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import P2SAMLogic.models
from P2SAMLogic.propagation import series as series_module
from P2SAMLogic.cli import main
from P2SAMLogic.errors import InputError
from P2SAMLogic.io import read_segmentation, read_volume
from P2SAMLogic.propagation.pipeline import PropagationConfig
from P2SAMLogic.propagation.series import propagate_series
from P2SAMLogic.io.volume import Segment, same_geometry

from conftest import LUNG_CROP


def dice(a, b) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return 2.0 * float((a & b).sum()) / max(1, int(a.sum()) + int(b.sum()))


@pytest.fixture(scope="module")
def course(lung_crop):
    """``(prior_ct, [GTV segment], [follow-up images], [true GTV masks])``: two simulated visits."""
    from simulate_followup import simulate_followup

    ct, masks = lung_crop
    gtv = Segment("GTV", (0.85, 0.2, 0.2), masks["GTV"], "GTV")
    visits, truths = [], []
    for seed, shift, shrink in ((1, (6.0, -4.0, 3.0), 0.15), (2, (10.0, -6.0, 5.0), 0.3)):
        fu, truth, _ = simulate_followup(ct, {"GTV": masks["GTV"]}, seed=seed, translation_mm=shift,
                                         shrink={"GTV": shrink}, spacing=(1.0, 1.0, 5.0))
        visits.append(sitk.Cast(sitk.Round(fu), sitk.sitkInt16))
        truths.append(sitk.GetArrayFromImage(truth["GTV"]).astype(bool))
    return ct, [gtv], visits, truths


def test_the_model_is_loaded_once_for_every_followup(course, monkeypatch):
    ct, segments, visits, truths = course
    loads = []
    real = P2SAMLogic.models.load_model

    def counting(*args, **kwargs):
        loads.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(P2SAMLogic.models, "load_model", counting)
    models_used = []
    real_propagate = series_module.propagate

    def recording(*args, **kwargs):
        models_used.append(kwargs["model"])
        return real_propagate(*args, **kwargs)

    monkeypatch.setattr(series_module, "propagate", recording)
    # registered-box: the model runs on every follow-up slice, without P²SAM's candidates (a fast case)
    out = propagate_series(ct, segments, visits, model="litemedsam", device="cpu", names=["week1", "week2"],
                           config=PropagationConfig(method="registered-box", slice_margin_mm=0.0))
    assert len(loads) == 1 and out.model_loads == 1
    assert len(models_used) == 2 and models_used[0] is models_used[1] and not isinstance(models_used[0], str)
    assert len(out.results) == 2
    for result, visit, truth in zip(out.results, visits, truths):
        assert same_geometry(result.segments[0].mask, visit)
        # measured 0.820 and 0.831 (model share 1.0; the registered prior alone: 0.984, 0.981): a check that
        # the shared model ran, not of its accuracy
        assert dice(result.segments[0].array(), truth) >= 0.82 - 0.05
        assert result.provenance["model"]["name"] == "LiteMedSAM"
    report = out.report_dict()
    assert [f["name"] for f in report["followups"]] == ["week1", "week2"]
    assert [v["followup"] for v in report["course"]["GTV"]["visits"]] == ["week1", "week2"]
    assert report["model_loads"] == 1 and report["status"] == "unreviewed proposal"
    assert "week2" in out.report_table()


def test_chained_followups_start_from_the_previous_result(course, monkeypatch):
    ct, segments, visits, _ = course
    calls = []
    real_propagate = series_module.propagate

    def recording(prior_image, prior_segments, followup, **kwargs):
        calls.append((prior_image, [s.array().copy() for s in prior_segments], followup))
        return real_propagate(prior_image, prior_segments, followup, **kwargs)

    monkeypatch.setattr(series_module, "propagate", recording)
    config = PropagationConfig(method="rigid")
    chained = propagate_series(ct, segments, visits, config=config, chain=True, names=["week1", "week2"])
    assert calls[0][0] is ct and calls[1][0] is visits[0] and calls[1][2] is visits[1]
    assert np.array_equal(calls[1][1][0], chained.results[0].segments[0].array())
    assert chained.priors == ["prior", "week1"] and chained.model_loads == 0
    assert chained.report_dict()["followups"][1]["propagated_from"] == "week1"
    calls.clear()
    plain = propagate_series(ct, segments, visits, config=config, names=["week1", "week2"])
    assert calls[1][0] is ct and plain.priors == ["prior", "prior"]


def test_series_input_errors_name_the_followup(course):
    ct, segments, visits, _ = course
    with pytest.raises(InputError, match="no follow-up"):
        propagate_series(ct, segments, [], config=PropagationConfig(method="rigid"))
    empty = sitk.Image(visits[0].GetSize(), sitk.sitkInt16) - 1000
    empty.CopyInformation(visits[0])
    empty.SetOrigin(tuple(np.array(visits[0].GetOrigin()) + 400.0))  # far away: the GTV is not in it
    with pytest.raises(InputError, match="far"):
        propagate_series(ct, segments, [visits[0], empty], names=["week1", "far"],
                         config=PropagationConfig(method="rigid"))


# -- the command line --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def course_files(course, tmp_path_factory):
    ct, segments, visits, _ = course
    d = tmp_path_factory.mktemp("course")
    paths = []
    for n, visit in enumerate(visits, start=1):
        paths.append(str(d / f"cbct_w{n}.nrrd"))
        sitk.WriteImage(visit, paths[-1], True)
    return d, paths


def run(capsys, *args):
    code = main(["propagate", "--quiet", "--prior-image", str(LUNG_CROP / "prior_ct.nrrd"), "--prior-segmentation",
                 str(LUNG_CROP / "prior.seg.nrrd"), "--segments", "GTV", "--method", "rigid", *map(str, args)])
    return code, capsys.readouterr().err


def test_cli_writes_one_output_per_followup_and_one_report(course_files, tmp_path, capsys):
    _, paths = course_files
    out = tmp_path / "course"
    code, err = run(capsys, "--followup", *paths, "--output-dir", out)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["cbct_w1.overlay.png", "cbct_w1.seg.nrrd", "cbct_w2.overlay.png",
                                                     "cbct_w2.seg.nrrd", "report.json"]
    report = json.loads((out / "report.json").read_text())
    assert [f["name"] for f in report["followups"]] == ["cbct_w1", "cbct_w2"] and report["chain"] is False
    for path in paths:
        image, source = read_volume(path)
        name = Path(path).name.replace(".nrrd", "")
        (seg,) = read_segmentation(str(out / f"{name}.seg.nrrd"), image, source)
        assert seg.name == "GTV" and same_geometry(seg.mask, image) and seg.array().any()
    code, err = run(capsys, "--followup", *paths, "--output-dir", out, "--chain", "--overwrite")
    assert code == 0, err
    assert json.loads((out / "report.json").read_text())["followups"][1]["propagated_from"] == "cbct_w1"


@pytest.mark.parametrize("extra,message", [
    (["--output", "x.seg.nrrd"], "--output-dir"),
    (["--output-dir", "{tmp}/d", "--overlay", "{tmp}/o.png"], "overlay"),
    (["--output-dir", "{tmp}/d", "--output-format", "dicom-seg"], "DICOM series"),
])
def test_cli_refuses_bad_series_options_and_writes_nothing(course_files, tmp_path, capsys, extra, message):
    _, paths = course_files
    code, err = run(capsys, "--followup", *paths, *[e.format(tmp=tmp_path) for e in extra])
    assert code == 2 and message in err
    assert list(tmp_path.iterdir()) == []


def test_cli_refuses_followups_with_the_same_name(course_files, tmp_path, capsys):
    d, paths = course_files
    other = tmp_path / "again"
    other.mkdir()
    copy = other / Path(paths[0]).name
    copy.write_bytes(Path(paths[0]).read_bytes())
    code, err = run(capsys, "--followup", paths[0], copy, "--output-dir", tmp_path / "d")
    assert code == 2 and "same output name" in err and not (tmp_path / "d").exists()


def test_cli_single_followup_forms(course_files, tmp_path, capsys):
    _, paths = course_files
    code, err = run(capsys, "--followup", paths[0], "--output", tmp_path / "one.seg.nrrd")
    assert code == 0, err
    code, err = run(capsys, "--followup", paths[0], "--output", tmp_path / "two.seg.nrrd", "--chain")
    assert code == 2 and "--chain" in err
    code, err = run(capsys, "--followup", paths[0])
    assert code == 2 and "--output" in err
    # one follow-up into a folder works too
    code, err = run(capsys, "--followup", paths[1], "--output-dir", tmp_path / "d1")
    assert code == 0 and (tmp_path / "d1" / "cbct_w2.seg.nrrd").is_file()


def test_propagate_help_reads_like_a_manual(capsys):
    with pytest.raises(SystemExit):
        main(["propagate", "--help"])
    text = capsys.readouterr().out
    for needle in ("--followup F [F ...]", "--output-dir D", "--chain", "rtstruct", "Several follow-ups"):
        assert needle in text
