"""The MONAI Label app (apps/p2sam) on a real MONAI Label server started here on 127.0.0.1, driven by
the Slicer module's client (P2SAMSlicerLib/server_client.py), with the real LiteMedSAM.

One inference on a small simulated follow-up must give the Dice of `p2sam propagate` on the same
case; mismatched versions or model checksums must be refused with both sides named. The server is
stopped at the end of the module, and a watchdog kills it after 10 minutes whatever happens.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import require_extra

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "P2SAMSlicer"))
from P2SAMSlicerLib.server_client import (  # noqa: E402
    KNOWN_MODEL_SHA256, P2SAMServerClient, ServerError, ServerPropagation, VersionMismatchError,
    expected_model_sha256, local_engine_version)

FAST_PARAMETERS = {"max_parts": 2, "slice_margin_mm": 0.0}  # = make_small_cohort.FAST_OPTIONS


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``http://127.0.0.1:PORT`` of `python apps/p2sam/serve.py` (MONAI Label), up within 3 minutes."""
    require_extra("monailabel", "server")
    folder = tmp_path_factory.mktemp("monailabel")
    port = _free_port()
    env = dict(os.environ, MONAI_LABEL_SESSION_PATH=str(folder / "sessions"),
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    log = open(folder / "server.log", "wb")
    proc = subprocess.Popen([sys.executable, str(ROOT / "apps" / "p2sam" / "serve.py"), "--studies",
                             str(folder / "studies"), "--host", "127.0.0.1", "--port", str(port),
                             "--conf", "device", "cpu"], stdout=log, stderr=subprocess.STDOUT, env=env)
    watchdog = threading.Timer(600.0, proc.kill)  # never outlives a stuck test run
    watchdog.daemon = True
    watchdog.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180.0
        while True:
            if proc.poll() is not None:
                raise RuntimeError("the MONAI Label server stopped at start-up:\n"
                                   + (folder / "server.log").read_text(errors="replace")[-3000:])
            try:
                urllib.request.urlopen(url + "/info/", timeout=5).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("the MONAI Label server did not answer within 3 minutes:\n"
                                       + (folder / "server.log").read_text(errors="replace")[-3000:])
                time.sleep(1.0)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        watchdog.cancel()
        log.close()


def _datastore_count(url: str) -> int:
    return json.loads(urllib.request.urlopen(url + "/datastore/?output=stats", timeout=10).read())["total"]


def test_handshake_reports_engine_version_and_model_checksum(server):
    shake = P2SAMServerClient(server).handshake(local_engine_version(), expected_model_sha256("litemedsam"))
    assert shake == {"engine_version": local_engine_version(), "model": "LiteMedSAM",
                     "model_sha256": KNOWN_MODEL_SHA256["litemedsam"]}


def test_round_trip_gives_the_dice_of_the_cli(server, small_cohort, small_cohort_cli, tmp_path):
    from P2SAMLogic.io3d import read_segmentation, read_volume
    from P2SAMLogic.volume import PROPOSAL_STATUS, same_geometry

    prior, prior_src = read_volume(str(small_cohort / "prior_ct.nrrd"))
    follow, follow_src = read_volume(str(small_cohort / "followup_1.nrrd"))
    segments = read_segmentation(str(small_cohort / "prior.seg.nrrd"), prior, prior_src)
    job = ServerPropagation(prior, segments, follow, url=server, config=dict(FAST_PARAMETERS, segments=["GTV"]),
                            work_dir=str(tmp_path))
    job.start()
    assert job.wait(timeout=600) == 0, job.error()
    messages = [m for _, m in job.poll()]
    assert messages[0].startswith("checking the server") and messages[-1] == "done"
    (proposal,), report = job.result()
    assert proposal.name == "GTV" and same_geometry(proposal.mask, follow)
    assert proposal.tags["P2SAM.Status"] == PROPOSAL_STATUS
    assert proposal.tags["P2SAM.ModelSHA256"] == KNOWN_MODEL_SHA256["litemedsam"]
    truth = read_segmentation(str(small_cohort / "truth_1.seg.nrrd"), follow, follow_src)[0].array()
    a = proposal.array()
    dice = 2.0 * float((a & truth).sum()) / (int(a.sum()) + int(truth.sum()))
    assert dice == pytest.approx(small_cohort_cli[1], abs=1e-3)
    assert dice > 0.7
    assert report["status"] == PROPOSAL_STATUS and report["segments"][0]["name"] == "GTV"
    assert report["provenance"]["parameters"]["max_parts"] == 2
    job.cleanup()
    assert not os.path.exists(job.folder)


def test_mismatched_engine_version_is_refused_by_the_client_before_any_upload(server):
    before = _datastore_count(server)
    with pytest.raises(VersionMismatchError) as err:
        P2SAMServerClient(server).propagate_files("unused.nrrd", "unused.seg.nrrd", "unused.nrrd", "out.seg.nrrd",
                                                  expected_engine_version="9.9.9")
    assert "9.9.9" in str(err.value) and local_engine_version() in str(err.value)
    assert _datastore_count(server) == before


def test_mismatched_version_is_refused_by_the_server(server, small_cohort):
    client = P2SAMServerClient(server)
    prior_id = client.upload_image(str(small_cohort / "prior_ct.nrrd"), "refusal-prior")
    client.upload_label(prior_id, str(small_cohort / "prior.seg.nrrd"), "final")
    fu_id = client.upload_image(str(small_cohort / "followup_2.nrrd"), "refusal-followup")
    with pytest.raises(VersionMismatchError) as err:  # HTTP 409 from the app, before any computation
        client.infer(fu_id, prior_id, "final", expected_engine_version="0.0.1-old")
    assert "0.0.1-old" in str(err.value) and local_engine_version() in str(err.value)
    with pytest.raises(VersionMismatchError) as err:
        client.infer(fu_id, prior_id, "final", expected_sha256="ab" * 32)
    assert "ab" * 32 in str(err.value) and KNOWN_MODEL_SHA256["litemedsam"] in str(err.value)
    with pytest.raises(ServerError) as err:  # a bad parameter: 422 naming it
        client.infer(fu_id, prior_id, "final", parameters={"max_partz": 2})
    assert "max_partz" in str(err.value)


def test_the_widget_job_reports_a_model_mismatch(server, tmp_path, lung_crop):
    other = tmp_path / "other_model.pth"
    other.write_bytes(b"not the server's weights")
    ct, masks = lung_crop
    from P2SAMLogic.volume import Segment

    job = ServerPropagation(ct, [Segment("GTV", (1.0, 0.0, 0.0), masks["GTV"])], ct, url=server, model=str(other),
                            work_dir=str(tmp_path))
    job.start()
    assert job.wait(timeout=60) == 2
    err = job.error()
    assert err["type"] == "VersionMismatchError"
    assert expected_model_sha256(str(other)) in err["message"] and KNOWN_MODEL_SHA256["litemedsam"] in err["message"]


def test_the_panel_runs_on_the_server_and_adds_the_result(server, small_cohort, small_cohort_cli, monkeypatch):
    """The module panel with "Run on server" ticked: the job goes to the server and the proposal comes back
    as a new segmentation node on the follow-up, with the CLI's Dice."""
    slicer = pytest.importorskip("slicer")
    import slicer_standins as standins
    from P2SAMLogic.io3d import read_segmentation, read_volume
    from P2SAMSlicerLib import mrml_bridge

    scene = slicer.vtkMRMLScene()
    standins.install(monkeypatch, scene)
    module = standins.load(ROOT / "P2SAMSlicer" / "P2SAMSlicer.py", "P2SAMSlicer_server_under_test")
    widget = module.P2SAMSlicerWidget()
    widget.ui = standins.widget_ui()
    widget.logic = module.P2SAMSlicerLogic()
    widget._timer = standins.Anything()  # onTimer is called below, as Qt's timer would
    settings = standins.ParameterNode(scene)
    widget.setParameterNode(settings)
    prior, prior_src = read_volume(str(small_cohort / "prior_ct.nrrd"))
    follow, follow_src = read_volume(str(small_cohort / "followup_1.nrrd"))
    segments = read_segmentation(str(small_cohort / "prior.seg.nrrd"), prior, prior_src)
    prior_node = mrml_bridge.image_to_volume_node(prior, scene, "prior")
    settings.priorVolume = prior_node
    settings.priorSegmentation = mrml_bridge.segments_to_segmentation_node(scene, segments, prior, "prior contours",
                                                                           reference_volume_node=prior_node)
    settings.followupVolume = mrml_bridge.image_to_volume_node(follow, scene, "follow-up 1")
    settings.runOnServer, settings.serverUrl = True, server
    shown = []
    widget.showResults = lambda outputs, report=None: shown.append(outputs)
    before = scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")
    widget._startBackground(settings, widget.checkedSegmentIds(), {"model": "litemedsam", "modelType": None,
                                                                   "device": "cpu"},
                            dict(FAST_PARAMETERS, segments=["GTV"]), None, server=server)
    assert type(widget._job).__name__ == "ServerPropagation"
    deadline = time.monotonic() + 600
    while widget._job is not None and time.monotonic() < deadline:
        time.sleep(0.5)
        widget.onTimer()
    assert widget._job is None
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == before + 1
    (node, report, volume), = shown[0]
    (got,) = mrml_bridge.masks_from_segmentation_node(node, follow).values()
    truth = read_segmentation(str(small_cohort / "truth_1.seg.nrrd"), follow, follow_src)[0].array()
    dice = 2.0 * float((got & truth).sum()) / (int(got.sum()) + int(truth.sum()))
    assert dice == pytest.approx(small_cohort_cli[1], abs=1e-3)
    assert report["status"] == "unreviewed proposal"


def test_unreachable_server_is_named(tmp_path):
    with pytest.raises(ServerError) as err:
        P2SAMServerClient(f"http://127.0.0.1:{_free_port()}", timeout=5).info()
    assert "cannot reach the P2SAM server at http://127.0.0.1:" in str(err.value)
    with pytest.raises(ServerError, match="must start with http"):
        P2SAMServerClient("gpu-server:8000")


def test_client_needs_neither_slicer_nor_torch():
    """The client runs in Slicer's main process: standard library, SimpleITK and P2SAMLogic's file I/O only."""
    import ast

    from conftest import imported_roots

    path = ROOT / "P2SAMSlicer" / "P2SAMSlicerLib" / "server_client.py"
    roots = set(imported_roots(ast.parse(path.read_text(encoding="utf-8"))))
    assert not roots & {"slicer", "vtk", "qt", "ctk", "torch", "requests", "monailabel", "fastapi"}, roots
    assert not set(imported_roots(ast.parse(path.read_text(encoding="utf-8")), top_level_only=True)) & {
        "SimpleITK", "P2SAMLogic"}
