"""The engine's version string: a change to the engine's code changes it, and every output records it.

``P2SAMLogic.__version__`` is ``0.2.0+s<digest of the package's *.py files>`` (P2SAMLogic/_version.py).
Checked here: its form; that a one-character change of a default parameter in a copy of the package
changes the version recorded in a ``p2sam propagate`` report; that line endings do not; that the import
needs no git and stays fast; that a commit's version can be computed from git; and that the
``.seg.nrrd`` tags, the report, the DICOM SEG and the RTSTRUCT all carry the running version.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import SimpleITK as sitk

import P2SAMLogic
from P2SAMLogic._version import BASE_VERSION, git_rev_digest, source_digest, version_for

ROOT = Path(__file__).resolve().parents[2]
LUNG = ROOT / "Testing" / "Data" / "lung1_crop"


def copy_package(dest: Path, crlf: bool = False) -> Path:
    """A copy of P2SAMLogic (its *.py files) under ``dest``; ``crlf``: with Windows line ends."""
    target = dest / "P2SAMLogic"
    for path in (ROOT / "P2SAMLogic").rglob("*.py"):
        if "__pycache__" in path.parts:
            continue
        out = target / path.relative_to(ROOT / "P2SAMLogic")
        out.parent.mkdir(parents=True, exist_ok=True)
        data = path.read_bytes()
        out.write_bytes(data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") if crlf else data)
    return target


def test_version_is_the_release_plus_the_code_digest():
    assert BASE_VERSION == "0.2.0"
    assert re.fullmatch(r"0\.2\.0\+s[0-9a-f]{12}", P2SAMLogic.__version__), P2SAMLogic.__version__
    assert P2SAMLogic.__version__ == version_for(source_digest())
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "engine_version.py")], capture_output=True,
                         text=True, timeout=60, check=True).stdout.strip()
    assert out == P2SAMLogic.__version__
    Version = pytest.importorskip("packaging.version").Version
    assert str(Version(P2SAMLogic.__version__)) == P2SAMLogic.__version__  # a valid PEP 440 version (pip, wheels)


def test_a_code_change_changes_the_version_and_line_ends_do_not(tmp_path):
    same = copy_package(tmp_path / "crlf", crlf=True)
    assert source_digest(str(same)) == source_digest()  # a Windows checkout runs the same version
    changed = copy_package(tmp_path / "changed")
    propagate = changed / "propagation" / "config.py"
    text = propagate.read_text(encoding="utf-8")
    assert "    qa_flag_below: float = 0.6\n" in text
    propagate.write_text(text.replace("    qa_flag_below: float = 0.6\n", "    qa_flag_below: float = 0.7\n"),
                         encoding="utf-8")
    assert source_digest(str(changed)) != source_digest()


def test_outputs_record_the_version_of_the_code_that_ran(tmp_path):
    """The same propagation by this engine and by a copy with one changed default: the reports differ in
    their version, each being its engine's own."""
    from P2SAMLogic.cli import main

    shutil.copy(LUNG / "prior_ct.nrrd", tmp_path / "followup.nrrd")  # a registration-only run: fast
    args = ["propagate", "--quiet", "--method", "rigid", "--segments", "GTV", "--prior-image", str(LUNG / "prior_ct.nrrd"),
            "--prior-segmentation", str(LUNG / "prior.seg.nrrd"), "--followup", str(tmp_path / "followup.nrrd")]
    assert main(args + ["--output", str(tmp_path / "a.seg.nrrd"), "--report", str(tmp_path / "a.json")]) == 0
    changed = copy_package(tmp_path / "changed")
    propagate = changed / "propagation" / "config.py"
    propagate.write_text(propagate.read_text(encoding="utf-8").replace("    qa_flag_below: float = 0.6\n",
                                                                          "    qa_flag_below: float = 0.7\n"),
                         encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=str(changed.parent))
    code = ("import sys; from P2SAMLogic.cli import main; import P2SAMLogic; "
            "assert P2SAMLogic.__file__.startswith(sys.argv[1]), P2SAMLogic.__file__; sys.exit(main(sys.argv[2:]))")
    subprocess.run([sys.executable, "-c", code, str(changed), *args, "--output", str(tmp_path / "b.seg.nrrd"),
                    "--report", str(tmp_path / "b.json")], env=env, check=True, timeout=300, cwd=str(tmp_path))
    a = json.loads((tmp_path / "a.json").read_text())
    b = json.loads((tmp_path / "b.json").read_text())
    assert a["provenance"]["version"] == P2SAMLogic.__version__
    assert b["provenance"]["version"] == version_for(source_digest(str(changed))) != a["provenance"]["version"]
    from P2SAMLogic.io import read_segmentation, read_volume

    image, source = read_volume(str(tmp_path / "followup.nrrd"))
    (seg,) = read_segmentation(str(tmp_path / "a.seg.nrrd"), image, source)
    assert seg.tags["P2SAM.Version"] == P2SAMLogic.__version__


def test_dicom_outputs_record_the_version(tmp_path):
    pydicom = pytest.importorskip("pydicom")
    from dicom_tools import write_ct_series
    from P2SAMLogic.io import read_segmentation, read_volume, write_segmentation

    ct = sitk.ReadImage(str(LUNG / "prior_ct.nrrd"))
    write_ct_series(ct, tmp_path / "ct")
    follow, source = read_volume(str(tmp_path / "ct"))
    prior, prior_src = read_volume(str(LUNG / "prior_ct.nrrd"))
    segments = read_segmentation(str(LUNG / "prior.seg.nrrd"), prior, prior_src)
    resampled = [s.__class__(s.name, s.color, sitk.Resample(s.mask, follow, sitk.Transform(), sitk.sitkNearestNeighbor),
                             s.segment_id, dict(s.tags or {})) for s in segments]
    provenance = {"version": P2SAMLogic.__version__, "model": {"name": "LiteMedSAM", "sha256": "ab" * 32},
                  "status": "unreviewed proposal"}
    write_segmentation(tmp_path / "seg.dcm", resampled, follow, provenance, source)
    write_segmentation(tmp_path / "rt.dcm", resampled, follow, provenance, source, kind="rtstruct")
    seg = pydicom.dcmread(str(tmp_path / "seg.dcm"))
    algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmVersion == P2SAMLogic.__version__
    rt = pydicom.dcmread(str(tmp_path / "rt.dcm"))
    assert rt.SoftwareVersions == P2SAMLogic.__version__


def test_import_needs_no_git_and_is_fast(tmp_path):
    """From a folder that is not a checkout, with no git on the PATH: the same version, in well under a second."""
    bare = tmp_path / "bin"
    bare.mkdir()
    env = dict(os.environ, PATH=str(bare), PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-X", "importtime", "-c", "import P2SAMLogic; print(P2SAMLogic.__version__)"],
                       capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=60, check=True)
    assert r.stdout.strip() == P2SAMLogic.__version__
    (line,) = [ln for ln in r.stderr.splitlines() if ln.rstrip().endswith("| P2SAMLogic")]
    cumulative_us = int(line.split("|")[1])
    assert cumulative_us < 300_000, line  # measured ~15 ms; generous for a loaded machine


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_a_commits_version_is_computed_from_git(tmp_path):
    repo = tmp_path / "repo"
    copy_package(repo)
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.org"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run(git + ["add", "-A"], check=True)
    subprocess.run(git + ["commit", "-q", "-m", "engine"], check=True)
    assert git_rev_digest("HEAD", str(repo)) == source_digest(str(repo / "P2SAMLogic")) == source_digest()
