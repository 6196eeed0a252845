"""`p2sam propagate-many` on a real local Dask cluster (2 worker processes) with the real LiteMedSAM.

The cohort is Testing/Tools/make_small_cohort.py: two simulated follow-ups of a cropped lung CT
(seconds per case) and one case whose follow-up is not an image. Results must equal plain
`p2sam propagate` runs; the broken case must fail alone; a rerun must skip finished cases; bad
manifests must be refused (exit 2) with the line and column named.
"""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import imported_roots, require_extra
from make_small_cohort import FAST_OPTIONS
from P2SAMLogic.cli import main

ROOT = Path(__file__).resolve().parents[2]
OPTIONS = "--propagate-options=" + " ".join(FAST_OPTIONS)


@pytest.fixture(scope="module")
def distributed():
    return require_extra("distributed", "dask")


@pytest.fixture(scope="module")
def first_run(small_cohort, distributed):
    """The cohort on a fresh local cluster of 2 workers: (exit code, summary dict, output mtimes)."""
    code = main(["propagate-many", str(small_cohort / "cohort.csv"), "--workers", "2", "--device", "cpu",
                 "--quiet", OPTIONS])
    summary = json.loads((small_cohort / "cohort.summary.json").read_text())
    mtimes = {p.name: p.stat().st_mtime_ns for p in (small_cohort / "out").iterdir()}
    return code, summary, mtimes


def by_case(summary):
    return {c["case"]: c for c in summary["cases"]}


def test_broken_case_fails_alone_and_is_reported(first_run, small_cohort):
    code, summary, _ = first_run
    assert code == 1
    cases = by_case(summary)
    assert summary["counts"] == {"done": 2, "skipped": 0, "failed": 1}
    assert cases["broken"]["status"] == "failed" and cases["broken"]["line"] == 4
    assert "followup_broken.nrrd" in cases["broken"]["error"] and "not a readable" in cases["broken"]["error"]
    assert not (small_cohort / "out" / "broken.seg.nrrd").exists()
    assert sorted(p.name for p in (small_cohort / "out").iterdir()) == [
        "sim1.report.json", "sim1.seg.nrrd", "sim2.report.json", "sim2.seg.nrrd"]  # no temporary left-overs
    csv_text = (small_cohort / "cohort.summary.csv").read_text()
    assert "broken,failed" in csv_text and "not a readable" in csv_text


def test_results_equal_plain_propagate(first_run, small_cohort_cli):
    _, summary, _ = first_run
    cases = by_case(summary)
    for seed in (1, 2):
        (seg,) = cases[f"sim{seed}"]["segments"]
        assert seg["name"] == "GTV"
        assert seg["dice"] == pytest.approx(small_cohort_cli[seed], abs=1e-3)
        assert seg["dice"] > 0.7  # and the proposal is a real one
        assert seg["followup_volume_ml"] > 0 and cases[f"sim{seed}"]["seconds"] > 0


def test_outputs_carry_the_provenance_of_propagate(first_run, small_cohort):
    from P2SAMLogic.io import read_segmentation, read_volume
    from P2SAMLogic.io.volume import PROPOSAL_STATUS

    fu, src = read_volume(str(small_cohort / "followup_1.nrrd"))
    (seg,) = read_segmentation(str(small_cohort / "out" / "sim1.seg.nrrd"), fu, src)
    assert seg.tags["P2SAM.Status"] == PROPOSAL_STATUS and len(seg.tags["P2SAM.ModelSHA256"]) == 64
    report = json.loads((small_cohort / "out" / "sim1.report.json").read_text())
    assert report["provenance"]["parameters"]["max_parts"] == 2
    assert report["inputs"]["followup"].endswith("followup_1.nrrd")


@pytest.fixture(scope="module")
def shared_cluster(distributed):
    """An existing cluster for the --scheduler path (stopped at the end of the module)."""
    import logging

    cluster = distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None,
                                       silence_logs=logging.ERROR)
    yield cluster.scheduler_address
    cluster.close()


def test_rerun_skips_finished_cases_on_an_existing_scheduler(first_run, small_cohort, shared_cluster):
    _, _, mtimes = first_run
    code = main(["propagate-many", str(small_cohort / "cohort.csv"), "--scheduler", shared_cluster, "--quiet",
                 OPTIONS, "--summary", str(small_cohort / "rerun.csv")])
    assert code == 1  # the broken case is still broken
    summary = json.loads((small_cohort / "rerun.json").read_text())
    assert {c["case"]: c["status"] for c in summary["cases"]} == {"sim1": "skipped", "sim2": "skipped",
                                                                  "broken": "failed"}
    assert by_case(summary)["sim1"]["segments"][0]["dice"] == by_case(first_run[1])["sim1"]["segments"][0]["dice"]
    assert {p.name: p.stat().st_mtime_ns for p in (small_cohort / "out").iterdir()} == mtimes


def test_overwrite_runs_finished_cases_again(tmp_path, small_cohort, shared_cluster):
    manifest = tmp_path / "rigid.csv"
    manifest.write_text("prior_image,prior_segmentation,followup,output\n"
                        f"{small_cohort / 'prior_ct.nrrd'},{small_cohort / 'prior.seg.nrrd'},"
                        f"{small_cohort / 'followup_1.nrrd'},rigid.nii.gz\n")
    run = ["propagate-many", str(manifest), "--scheduler", shared_cluster, "--quiet",
           "--propagate-options=--method rigid"]
    assert main(run) == 0
    first = (tmp_path / "rigid.nii.gz").stat().st_mtime_ns
    assert main(run) == 0
    assert json.loads((tmp_path / "rigid.summary.json").read_text())["counts"]["skipped"] == 1
    assert (tmp_path / "rigid.nii.gz").stat().st_mtime_ns == first
    assert main(run + ["--overwrite"]) == 0
    assert json.loads((tmp_path / "rigid.summary.json").read_text())["counts"]["done"] == 1
    assert (tmp_path / "rigid.nii.gz").stat().st_mtime_ns != first


def test_resume_skips_only_outputs_made_from_the_same_inputs_version_and_parameters(tmp_path, small_cohort,
                                                                                    shared_cluster):
    """Resuming compares what the case's report recorded, not only that its files exist."""
    manifest = tmp_path / "rigid.csv"
    row = f"{small_cohort / 'prior_ct.nrrd'},{small_cohort / 'prior.seg.nrrd'},{{}},rigid.seg.nrrd\n"
    manifest.write_text(HEADER + "\n" + row.format(small_cohort / "followup_1.nrrd"))
    run = ["propagate-many", str(manifest), "--scheduler", shared_cluster, "--quiet",
           "--propagate-options=--method rigid"]
    assert main(run) == 0
    output, report = tmp_path / "rigid.seg.nrrd", tmp_path / "rigid.report.json"
    recorded = json.loads(report.read_text())["provenance"]["inputs_sha256"]
    assert set(recorded) == {"prior_image", "prior_segmentation", "followup"}
    kept = output.read_bytes()

    def rerun(options="--method rigid", overwrite=False):
        code = main(run[:-1] + [f"--propagate-options={options}"] + (["--overwrite"] if overwrite else []))
        (case,) = json.loads((tmp_path / "rigid.summary.json").read_text())["cases"]
        return code, case

    code, case = rerun()  # nothing changed
    assert code == 0 and case["status"] == "skipped"
    # the row now points at another follow-up: its old result must not be reported as the new case's
    manifest.write_text(HEADER + "\n" + row.format(small_cohort / "followup_2.nrrd"))
    code, case = rerun()
    assert code == 1 and case["status"] == "failed" and case["segments"] == []
    assert case["error"] == (f"{output}: exists, but it was made from other inputs: the followup "
                             f"{small_cohort / 'followup_2.nrrd'} differ(s) from what its report records; pass "
                             "--overwrite to compute it again")
    assert output.read_bytes() == kept
    manifest.write_text(HEADER + "\n" + row.format(small_cohort / "followup_1.nrrd"))
    code, case = rerun("--method rigid --slice-margin 3")  # other parameters
    assert code == 1 and "it was made with other parameters (slice_margin_mm)" in case["error"]
    data = json.loads(report.read_text())  # a report made with a model, where this run needs none
    data["provenance"]["model"] = {"name": "LiteMedSAM", "sha256": "0" * 64}
    report.write_text(json.dumps(data))
    code, case = rerun()
    assert code == 1 and f"it was made with another model (SHA-256 {'0' * 64}, this run's none)" in case["error"]
    data["provenance"]["model"] = None
    report.write_text(json.dumps(data))
    code, case = rerun()
    assert code == 0 and case["status"] == "skipped"
    data = json.loads(report.read_text())  # a report of an older engine: no version match, no checksums
    data["provenance"]["version"] = "0.0.1"
    report.write_text(json.dumps(data))
    code, case = rerun()
    assert code == 1 and "it was made by P2SAM 0.0.1, not by this one" in case["error"]
    code, case = rerun(overwrite=True)
    assert code == 0 and case["status"] == "done"


def test_a_case_whose_run_raised_is_never_done(tmp_path, small_cohort, monkeypatch):
    from P2SAMLogic.cli import cohort

    case = cohort.Case(line=2, case_id="c", prior_image=str(small_cohort / "prior_ct.nrrd"),
                       prior_segmentation=str(small_cohort / "prior.seg.nrrd"),
                       followup=str(small_cohort / "followup_1.nrrd"), output=str(tmp_path / "c.seg.nrrd"),
                       report=str(tmp_path / "c.report.json"))

    def unreadable(*args, **kwargs):
        raise OSError("report vanished")

    monkeypatch.setattr(cohort, "_summarise", unreadable)
    out = cohort.run_case(case, ["--method", "rigid"], device="cpu")
    assert out["status"] == "failed" and out["error"] == "OSError: report vanished"


def test_outputs_reached_through_a_symbolic_link_are_duplicates(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    os.symlink(tmp_path / "out", tmp_path / "link")
    manifest = tmp_path / "cohort.csv"
    manifest.write_text(HEADER + "\na,b,c,out/o.seg.nrrd\nd,e,f,link/o.seg.nrrd\n")
    assert main(["propagate-many", str(manifest), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "line 3, column 'output'" in err and "also written by line 2" in err, err


HEADER = "prior_image,prior_segmentation,followup,output"


@pytest.mark.parametrize("text, where, what", [
    ("", "cohort.csv", "empty"),
    ("prior_image,prior_segmentation,followup\na,b,c\n", "line 1", "lacks column(s) output"),
    (HEADER + ",folowup\na,b,c,o.seg.nrrd,x\n", "line 1, column 5", "unknown column 'folowup'"),
    (HEADER + "\na,b,c,o.seg.nrrd\na,b,,p.seg.nrrd\n", "line 3, column 'followup'", "is empty"),
    (HEADER + "\na,b,c,o.seg.nrrd,extra\n", "line 2", "has 5 fields"),
    (HEADER + "\na,b,c,o.png\n", "line 2, column 'output'", "unsupported output type"),
    (HEADER + "\na,b,c,o.seg.nrrd\nd,e,f,o.seg.nrrd\n", "line 3, column 'output'", "also written by line 2"),
    (HEADER + "\na,b,c,o.seg.nrrd\no.seg.nrrd,e,f,p.seg.nrrd\n", "line 2, column 'output'",
     "input of line 3, column 'prior_image'"),
    (HEADER + "\n", "cohort.csv", "no case rows"),
])
def test_bad_manifest_exits_2_naming_line_and_column(tmp_path, capsys, text, where, what):
    manifest = tmp_path / "cohort.csv"
    manifest.write_text(text)
    assert main(["propagate-many", str(manifest), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert where in err and what in err, err
    assert not list(tmp_path.glob("*.summary.*"))


def test_bad_propagate_options_exit_2(tmp_path, capsys):
    manifest = tmp_path / "cohort.csv"
    manifest.write_text(HEADER + "\na,b,c,o.seg.nrrd\n")
    assert main(["propagate-many", str(manifest), "--propagate-options=--max-partz 2"]) == 2
    assert "--propagate-options" in capsys.readouterr().err
    assert main(["propagate-many", str(manifest), "--propagate-options=--output x.seg.nrrd"]) == 2
    assert "set per case" in capsys.readouterr().err
    # argparse would take a prefix for the full option: abbreviations are refused, naming the option
    for options, full in (("--overw --rep x.json", "--overwrite"), ("--max-p 2", "--max-parts"),
                          ("--method=rigid --rep=x.json", "--report")):
        assert main(["propagate-many", str(manifest), f"--propagate-options={options}"]) == 2
        err = capsys.readouterr().err
        assert "--propagate-options: " in err and f"is an abbreviation (of {full}); write option names in full" in err


def test_engine_never_imports_dask_or_the_server():
    """Only cohort.py imports Dask, and only inside functions; loading the CLI loads neither Dask nor MONAI."""
    for path in sorted((ROOT / "P2SAMLogic").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        roots = set(imported_roots(tree))
        assert not roots & {"monailabel", "monai", "fastapi", "uvicorn"}, path.name
        if path.name != "cohort.py":
            assert not roots & {"dask", "distributed"}, path.name
        assert not set(imported_roots(tree, top_level_only=True)) & {"dask", "distributed"}, path.name
    code = ("import sys, P2SAMLogic.cli, P2SAMLogic.propagation.pipeline, P2SAMLogic.io; P2SAMLogic.cli.build_parser(); "
            "print(sorted(m for m in ('dask', 'distributed', 'monailabel', 'monai', 'fastapi') if m in sys.modules))")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "[]"
