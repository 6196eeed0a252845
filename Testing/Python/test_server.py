"""The P2SAM server (apps/p2sam/serve.py, MONAI Label) started here on 127.0.0.1 without sign-in, attacked with
raw requests and driven by the Slicer module's client (P2SAMSlicerLib/server_client.py), with the real
LiteMedSAM.

* Every request naming a file outside the datastore is refused, and nothing appears outside it: the
  folder holding the datastore is listed before and after. Refusals do not depend on whether the named
  file exists (no oracle). MONAI Label's endpoints P2SAM does not use answer 404; foreign Host headers
  and web origins get nothing.
* The handshake is mandatory; request sizes and parameters are bounded.
* The client's worker process runs a job with the Dice of ``p2sam propagate``; its Cancel stops the
  job on the server; the server keeps answering while it computes; no upload stays on the server.

One server for the module (start-up takes seconds to a minute); it stops at the end of the module and a
watchdog kills it after 15 minutes whatever happens. Sign-in is tested in test_server_auth.py.
"""
from __future__ import annotations

import json
import os
import sys
import time
import types
from pathlib import Path

import pytest

from conftest import require_extra
from server_process import detail, http, running_server, tree

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "P2SAMSlicer"))
from P2SAMSlicerLib.server_client import (  # noqa: E402
    KNOWN_MODEL_SHA256, P2SAMServerClient, ServerError, ServerPropagation, VersionMismatchError,
    expected_model_sha256, local_engine_version)

FAST_PARAMETERS = {"max_parts": 2, "slice_margin_mm": 0.0}  # = make_small_cohort.FAST_OPTIONS
LUNG = ROOT / "Testing" / "Data" / "lung1_crop"
CT = (LUNG / "prior_ct.nrrd").read_bytes()
LABELS = (LUNG / "prior_labels.nrrd").read_bytes()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The server, its folder (``studies/`` = the datastore, ``jobs/``), and a datastore image ``prior`` with a
    label ``final``; uploads are limited to 8 MB."""
    require_extra("monailabel", "server")
    folder = tmp_path_factory.mktemp("p2sam_server")
    with running_server(folder, "--max-upload-mb", "8") as url:
        status, _, _ = http(url, "PUT", "/datastore/image", query={"image": "prior"}, files={"file": ("ct.nrrd", CT)})
        assert status == 200
        status, _, body = http(url, "PUT", "/datastore/label", query={"image": "prior", "tag": "final"},
                               fields={"params": "{}"}, files={"label": ("labels.nrrd", LABELS)})
        assert status == 200, body
        yield types.SimpleNamespace(url=url, folder=folder, studies=folder / "studies", jobs=folder / "jobs")


def expectations(**changes) -> dict:
    out = {"expected_engine_version": local_engine_version(), "expected_model_sha256": KNOWN_MODEL_SHA256["litemedsam"]}
    out.update(changes)
    return {k: v for k, v in out.items() if v is not None}


def job_files(**names):
    out = {"prior_image": ("ct.nrrd", CT), "followup": ("ct.nrrd", CT), "prior_segmentation": ("labels.nrrd", LABELS)}
    out.update(names)
    return out


def server_jobs(server) -> list:
    status, _, body = http(server.url, "GET", "/p2sam/jobs")
    assert status == 200
    return json.loads(body)


def test_handshake_reports_engine_version_and_model_checksum(server):
    shake = P2SAMServerClient(server.url).handshake(local_engine_version(), expected_model_sha256("litemedsam"))
    assert shake == {"engine_version": local_engine_version(), "model": "LiteMedSAM",
                     "model_sha256": KNOWN_MODEL_SHA256["litemedsam"]}


def test_names_outside_the_datastore_are_refused_and_nothing_is_written_outside(server):
    """Each request of the threat list, refused before it touches a file; the datastore's parent folder
    and the datastore itself are the same afterwards, and no job was created."""
    before = tree(server.folder, skip=("studies", "server.log"))
    datastore_before = tree(server.studies)
    existing = str(LUNG / "prior_ct.nrrd")  # a real scan outside the datastore
    missing = str(LUNG / "no_such_scan.nrrd")
    infer_params = {"params": json.dumps(expectations(prior_image="prior"))}
    refused = [
        ("PUT", "/datastore/image", {"image": "../outside/x"}, None, {"file": ("ct.nrrd", CT)}, "image"),
        ("PUT", "/datastore/image", {"image": "/tmp/x"}, None, {"file": ("ct.nrrd", CT)}, "image"),
        ("PUT", "/datastore/label", {"image": "prior", "tag": "../../outside/x"}, {"params": "{}"},
         {"label": ("labels.nrrd", LABELS)}, "tag"),
        ("PUT", "/datastore/label", {"image": "../prior", "tag": "final"}, {"params": "{}"},
         {"label": ("labels.nrrd", LABELS)}, "image"),
        ("GET", "/datastore/image", {"image": "../../../etc/passwd"}, None, None, "image"),
        ("HEAD", "/datastore/label", {"image": "prior", "tag": "../final"}, None, None, None),
        ("DELETE", "/datastore/image", {"id": "../studies"}, None, None, "id"),
        ("POST", "/infer/p2sam", {"image": existing}, infer_params, None, "image"),
        ("POST", "/infer/p2sam", {"image": "prior"}, {"params": json.dumps(expectations(prior_image="../prior"))},
         None, "prior_image"),
        ("POST", "/infer/p2sam", {"image": "prior"}, {"params": json.dumps(expectations(
            prior_image="prior", prior_label_tag="../../outside"))}, None, "prior_label_tag"),
        ("GET", "/datastore/../../etc/passwd", None, None, None, ".."),
    ]
    for method, path, query, fields, files, named in refused:
        status, _, body = http(server.url, method, path, query=query, fields=fields, files=files)
        assert status == 400, (method, path, query, status, body)
        if named and method != "HEAD":
            assert named in detail(body), (path, query, detail(body))

    # the same refusal whether the named file exists or not: nothing to learn about the server's disk
    answers = []
    for path in (existing, missing):
        status, _, body = http(server.url, "POST", "/infer/p2sam", query={"image": path}, fields=infer_params)
        answers.append((status, detail(body).replace(path, "PATH")))
    assert answers[0] == answers[1] and answers[0][0] == 400
    answers = []
    for path in (existing, missing):
        params = json.dumps(expectations(prior_image="prior", label=path))
        status, _, body = http(server.url, "POST", "/infer/p2sam", query={"image": "prior"}, fields={"params": params})
        answers.append((status, detail(body)))
    assert answers[0] == answers[1] and answers[0][0] == 422 and "unknown field(s) 'label'" in answers[0][1]

    status, _, _ = http(server.url, "GET", "/datastore/dataset")  # every patient's data in one download: gone
    assert status == 404
    assert tree(server.folder, skip=("studies", "server.log")) == before
    assert tree(server.studies) == datastore_before
    assert not (server.folder / "outside").exists() and not (server.folder.parent / "outside").exists()
    assert server_jobs(server) == []


def test_uploaded_names_are_replaced(server):
    """An upload's own name gives only its file type: stored under the server's names, inside."""
    before = tree(server.folder, skip=("studies", "jobs", "server.log"))
    status, _, body = http(server.url, "PUT", "/datastore/image", files={"file": ("../../outside/y.nrrd", CT)})
    assert status == 200 and json.loads(body)["image"] == "y"
    assert (server.studies / "y.nrrd").is_file()
    status, _, body = http(server.url, "PUT", "/datastore/image", files={"file": ("../../outside/run.sh", b"#!")})
    assert status == 400 and "not one of the accepted file types" in detail(body)
    status, _, body = http(server.url, "POST", "/p2sam/jobs", fields={"params": json.dumps(expectations(
        segments=["Nope"]))}, files=job_files(followup=("../../outside/z.nrrd", CT)))
    assert status == 202, body
    job = json.loads(body)["job"]
    inputs = server.jobs / job / "inputs"
    stored = sorted(os.listdir(inputs)) if inputs.exists() else []  # the run (refused: no segment 'Nope') may be over
    assert set(stored) <= {"prior_image.nrrd", "followup.nrrd", "prior_segmentation.nrrd"}
    deadline = time.monotonic() + 60
    while json.loads(http(server.url, "GET", f"/p2sam/jobs/{job}")[2])["status"] in ("queued", "running"):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    state = json.loads(http(server.url, "GET", f"/p2sam/jobs/{job}")[2])
    assert state["status"] == "failed" and state["error_status"] == 422
    assert "the uploaded prior segmentation" in state["error"] and str(server.folder) not in state["error"]
    assert not (server.jobs / job).exists()  # a failed job's uploads are gone
    assert tree(server.folder, skip=("studies", "jobs", "server.log")) == before


def test_endpoints_p2sam_does_not_use_are_gone(server):
    for method, path in [("GET", "/logs/"), ("GET", "/model/p2sam"), ("POST", "/reload"), ("GET", "/session/x"),
                         ("PUT", "/session/"), ("POST", "/train/"), ("POST", "/activelearning/random"),
                         ("POST", "/scoring/x"), ("POST", "/batch/infer/p2sam"), ("GET", "/ohif/"),
                         ("GET", "/proxy/dicom/x"), ("POST", "/infer/other"), ("GET", "/docs"),
                         ("GET", "/openapi.json"), ("GET", "/datastore/dataset"), ("PUT", "/datastore/")]:
        status, _, _ = http(server.url, method, path)
        assert status == 404, (method, path, status)
    for output in ("stats", "all", "train"):  # the datastore's listing names no path of the server
        status, _, body = http(server.url, "GET", "/datastore/", query={"output": output})
        assert status == 200 and str(server.folder) not in body.decode(), (output, body[:300])
    status, _, body = http(server.url, "GET", "/datastore/image/info", query={"image": "prior"})
    assert status == 200 and str(server.folder) not in body.decode()


def test_foreign_hosts_and_web_origins_get_nothing(server):
    status, _, _ = http(server.url, "GET", "/info/", headers={"Host": "attacker.example"})
    assert status == 400  # a web page's DNS name pointing at 127.0.0.1 does not reach the server
    status, headers, _ = http(server.url, "GET", "/info/", headers={"Origin": "https://attacker.example"})
    assert status == 200 and not any(k.lower() == "access-control-allow-origin" for k in headers)


def test_handshake_is_mandatory(server):
    for params, code, fragment, servers in [
        ({}, 428, "P2SAM handshake missing", local_engine_version()),
        (expectations(expected_model_sha256=None), 428, "params.expected_model_sha256", local_engine_version()),
        (expectations(expected_engine_version="0.0.1-old"), 409, "0.0.1-old", local_engine_version()),
        (expectations(expected_model_sha256="ab" * 32), 409, "ab" * 32, KNOWN_MODEL_SHA256["litemedsam"]),
    ]:
        status, _, body = http(server.url, "POST", "/p2sam/jobs", fields={"params": json.dumps(params)},
                               files=job_files())
        assert status == code and fragment in detail(body) and servers in detail(body), (params, status, body)
        status, _, body = http(server.url, "POST", "/infer/p2sam", query={"image": "prior"},
                               fields={"params": json.dumps(dict(params, prior_image="prior"))})
        assert status == code, (params, status, body)
    with pytest.raises(VersionMismatchError) as err:  # the client reads 428 as a version refusal
        P2SAMServerClient(server.url).submit_job(str(LUNG / "prior_ct.nrrd"), str(LUNG / "prior_labels.nrrd"),
                                                 str(LUNG / "prior_ct.nrrd"))
    assert "handshake missing" in str(err.value)
    assert os.listdir(server.jobs) == []


def test_request_sizes_and_parameters_are_bounded(server):
    def post(params, files=None):
        return http(server.url, "POST", "/p2sam/jobs", fields={"params": json.dumps(params)},
                    files=files or job_files())

    status, _, body = post(expectations(parameters={"max_parts": 1000}))
    assert status == 422 and "parameters.max_parts: 1000 is outside the range" in detail(body)
    status, _, body = post(expectations(parameters={"batch_size": 10 ** 9}))
    assert status == 422 and "parameters.batch_size" in detail(body)
    status, _, body = post(expectations(segments=[f"s{i}" for i in range(100)]))
    assert status == 422 and "params.segments" in detail(body)
    status, _, body = post(expectations(segments=["x" * 70000]))
    assert status == 413
    status, _, body = post(expectations(), job_files(followup=("big.nrrd", b"0" * (9 * 2 ** 20))))
    assert status == 413 and "8 MB" in detail(body)
    assert os.listdir(server.jobs) == []


def test_round_trip_gives_the_dice_of_the_cli(server, small_cohort, small_cohort_cli, tmp_path):
    """The Slicer client's worker process (below Qt): handshake, job, progress, result, clean-up."""
    from P2SAMLogic.io import read_segmentation, read_volume
    from P2SAMLogic.io.volume import PROPOSAL_STATUS, same_geometry

    prior, prior_src = read_volume(str(small_cohort / "prior_ct.nrrd"))
    follow, follow_src = read_volume(str(small_cohort / "followup_1.nrrd"))
    segments = read_segmentation(str(small_cohort / "prior.seg.nrrd"), prior, prior_src)
    job = ServerPropagation(prior, segments, follow, url=server.url, config=dict(FAST_PARAMETERS, segments=["GTV"]),
                            python=sys.executable, work_dir=str(tmp_path))
    job.start()
    assert job.wait(timeout=600) == 0, (job.error(), job.log_tail())
    messages = [m for _, m in job.poll()]
    assert messages[0].startswith("checking the server") and messages[-1] == "done"
    assert any(m.startswith("on the server: ") for m in messages)  # the engine's own progress comes through
    (proposal,), report = job.result()
    assert proposal.name == "GTV" and same_geometry(proposal.mask, follow)
    assert proposal.tags["P2SAM.Status"] == PROPOSAL_STATUS
    assert proposal.tags["P2SAM.ModelSHA256"] == KNOWN_MODEL_SHA256["litemedsam"]
    assert proposal.tags["P2SAM.Version"] == local_engine_version()
    truth = read_segmentation(str(small_cohort / "truth_1.seg.nrrd"), follow, follow_src)[0].array()
    a = proposal.array()
    dice = 2.0 * float((a & truth).sum()) / (int(a.sum()) + int(truth.sum()))
    assert dice == pytest.approx(small_cohort_cli[1], abs=1e-3)
    assert dice > 0.7
    assert report["status"] == PROPOSAL_STATUS and report["segments"][0]["name"] == "GTV"
    assert report["provenance"]["parameters"]["max_parts"] == 2
    assert report["provenance"]["version"] == local_engine_version()
    assert str(server.folder) not in json.dumps(report)  # the server's paths stay on the server
    (done,) = [j for j in server_jobs(server) if j["status"] == "done"]
    assert done["files_deleted"] and os.listdir(server.jobs) == []  # uploads and result deleted
    job.cleanup()
    assert not os.path.exists(job.folder)


def test_cancel_stops_the_job_on_the_server(server, lung_crop, simulated_followup, tmp_path):
    """Cancel in the client -> DELETE -> the engine stops at its next step; meanwhile the server answers."""
    from P2SAMLogic.io.volume import Segment

    ct, masks = lung_crop
    follow = simulated_followup[0]
    job = ServerPropagation(ct, [Segment(n, (1.0, 0.0, 0.0), m) for n, m in masks.items()], follow, url=server.url,
                            python=sys.executable, work_dir=str(tmp_path))  # default parameters: a long job
    job.start()
    deadline = time.monotonic() + 300
    running = []
    while not running:
        assert job.running and time.monotonic() < deadline, (job.error(), job.log_tail())
        running = [j for j in server_jobs(server) if j["status"] == "running" and j["fraction"] > 0]
        time.sleep(0.2)
    latencies = []
    for _ in range(5):  # inference runs in a worker thread: the event loop still answers
        started = time.monotonic()
        assert http(server.url, "GET", "/info/")[0] == 200
        latencies.append(time.monotonic() - started)
        time.sleep(0.2)
    assert max(latencies) < 2.0, latencies
    cancelled_at = time.monotonic()
    job.cancel()
    assert job.wait(timeout=60) == 3
    assert job.error()["type"] == "CancelledError" and "the server stopped the job" in job.error()["message"]
    while True:
        (state,) = [j for j in server_jobs(server) if j["job"] == running[0]["job"]]
        if state["status"] != "running":
            break
        assert time.monotonic() - cancelled_at < 60, state
        time.sleep(0.2)
    assert state["status"] == "cancelled" and state["files_deleted"], state
    assert not (server.jobs / state["job"]).exists()
    job.cleanup()


def test_mismatched_engine_version_is_refused_by_the_client_before_any_upload(server):
    before = server_jobs(server)
    with pytest.raises(VersionMismatchError) as err:
        P2SAMServerClient(server.url).propagate_files("unused.nrrd", "unused.seg.nrrd", "unused.nrrd", "out.seg.nrrd",
                                                      expected_engine_version="9.9.9")
    assert "9.9.9" in str(err.value) and local_engine_version() in str(err.value)
    assert server_jobs(server) == before


def test_mismatched_version_is_refused_by_the_server(server):
    client = P2SAMServerClient(server.url)
    files = (str(LUNG / "prior_ct.nrrd"), str(LUNG / "prior_labels.nrrd"), str(LUNG / "prior_ct.nrrd"))
    with pytest.raises(VersionMismatchError) as err:  # HTTP 409 from the app, before anything is stored
        client.submit_job(*files, expected_engine_version="0.0.1-old", expected_sha256=KNOWN_MODEL_SHA256["litemedsam"])
    assert "0.0.1-old" in str(err.value) and local_engine_version() in str(err.value)
    with pytest.raises(VersionMismatchError) as err:
        client.submit_job(*files, expected_engine_version=local_engine_version(), expected_sha256="ab" * 32)
    assert "ab" * 32 in str(err.value) and KNOWN_MODEL_SHA256["litemedsam"] in str(err.value)
    with pytest.raises(ServerError) as err:  # a bad parameter: 422 naming it
        client.submit_job(*files, parameters={"max_partz": 2}, expected_engine_version=local_engine_version(),
                          expected_sha256=KNOWN_MODEL_SHA256["litemedsam"])
    assert "max_partz" in str(err.value)
    assert os.listdir(server.jobs) == []


def test_the_widget_job_reports_a_model_mismatch(server, tmp_path, lung_crop):
    other = tmp_path / "other_model.pth"
    other.write_bytes(b"not the server's weights")
    ct, masks = lung_crop
    from P2SAMLogic.io.volume import Segment

    job = ServerPropagation(ct, [Segment("GTV", (1.0, 0.0, 0.0), masks["GTV"])], ct, url=server.url, model=str(other),
                            python=sys.executable, work_dir=str(tmp_path))
    job.start()
    assert job.wait(timeout=60) == 2
    err = job.error()
    assert err["type"] == "VersionMismatchError"
    assert expected_model_sha256(str(other)) in err["message"] and KNOWN_MODEL_SHA256["litemedsam"] in err["message"]
    job.cleanup()


def test_the_panel_runs_on_the_server_and_adds_the_result(server, small_cohort, small_cohort_cli, monkeypatch):
    """The module panel with "Run on server" ticked: the job goes to the server and the proposal comes back
    as a new segmentation node on the follow-up, with the CLI's Dice."""
    slicer = pytest.importorskip("slicer")
    import slicer_standins as standins
    from P2SAMLogic.io import read_segmentation, read_volume
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
    settings.runOnServer, settings.serverUrl = True, server.url
    shown = []
    widget.showResults = lambda outputs, report=None: shown.append(outputs)
    before = scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")
    widget._startBackground(settings, widget.checkedSegmentIds(), {"model": "litemedsam", "modelType": None,
                                                                   "device": "cpu"},
                            dict(FAST_PARAMETERS, segments=["GTV"]), None, server=server.url)
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
    from server_process import free_port

    with pytest.raises(ServerError) as err:
        P2SAMServerClient(f"http://127.0.0.1:{free_port()}", timeout=5).info()
    assert "cannot reach the P2SAM server at http://127.0.0.1:" in str(err.value)
    with pytest.raises(ServerError, match="must start with http"):
        P2SAMServerClient("gpu-server:8000")


def test_client_http_needs_neither_slicer_nor_torch():
    """The client's HTTP code runs in a bare worker process: no Slicer, Qt, VTK, torch or HTTP library at the
    top of the module (SimpleITK and P2SAMLogic only where images are read or written)."""
    import ast

    from conftest import imported_roots

    path = ROOT / "P2SAMSlicer" / "P2SAMSlicerLib" / "server_client.py"
    roots = set(imported_roots(ast.parse(path.read_text(encoding="utf-8"))))
    assert not roots & {"slicer", "vtk", "qt", "ctk", "torch", "requests", "monailabel", "fastapi"}, roots
    assert not set(imported_roots(ast.parse(path.read_text(encoding="utf-8")), top_level_only=True)) & {
        "SimpleITK", "P2SAMLogic"}
