"""The P2SAM server started here on 127.0.0.1 with sign-in (``serve.py --auth-users FILE``): nothing without a
valid token, roles as MONAI Label defines them, jobs private to their owner, and the Slicer client's worker
signing in the way MONAI Label's own Slicer client does (``POST /auth/token``, ``Authorization: Bearer``).

One server for the module; it stops at the end and a watchdog kills it after 15 minutes.
"""
from __future__ import annotations

import json
import os
import sys
import types
from pathlib import Path

import pytest

from conftest import require_extra
from server_process import detail, http, running_server, tree

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "P2SAMSlicer"))
sys.path.insert(0, str(ROOT / "apps" / "p2sam"))
from P2SAMSlicerLib.server_client import (  # noqa: E402
    KNOWN_MODEL_SHA256, AuthenticationError, P2SAMServerClient, ServerPropagation, local_engine_version)

LUNG = ROOT / "Testing" / "Data" / "lung1_crop"
CT = (LUNG / "prior_ct.nrrd").read_bytes()
LABELS = (LUNG / "prior_labels.nrrd").read_bytes()
PASSWORDS = {"alice": "alice's long passphrase", "carol": "carol's long passphrase"}
JOB_FILES = {"prior_image": ("ct.nrrd", CT), "followup": ("ct.nrrd", CT), "prior_segmentation": ("labels.nrrd", LABELS)}
EXPECTED = {"expected_engine_version": local_engine_version(), "expected_model_sha256": KNOWN_MODEL_SHA256["litemedsam"]}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """alice may run P2SAM (role user); carol may also write into the datastore (annotator)."""
    require_extra("monailabel", "server")
    from p2sam_server.auth import hash_password, write_users

    folder = tmp_path_factory.mktemp("p2sam_server_auth")
    users = folder / "users.json"
    write_users(str(users), {"alice": {"password": hash_password(PASSWORDS["alice"]), "roles": ["user"]},
                             "carol": {"password": hash_password(PASSWORDS["carol"]), "roles": ["annotator", "user"]}})
    with running_server(folder, "--auth-users", str(users)) as url:
        yield types.SimpleNamespace(url=url, folder=folder, studies=folder / "studies", jobs=folder / "jobs")


def token(server, name: str) -> dict:
    status, _, body = http(server.url, "POST", "/auth/token", form={"username": name, "password": PASSWORDS[name]})
    assert status == 200, body
    answer = json.loads(body)
    return {"Authorization": f"{answer['token_type']} {answer['access_token']}"}


def test_nothing_without_a_valid_token(server):
    before = tree(server.folder, skip=("server.log",))
    requests = [
        ("GET", "/info/", None, None, None), ("GET", "/datastore/", None, None, None),
        ("PUT", "/datastore/image", {"image": "x"}, None, {"file": ("ct.nrrd", CT)}),
        ("GET", "/datastore/image", {"image": "x"}, None, None), ("HEAD", "/datastore/image", {"image": "x"}, None, None),
        ("DELETE", "/datastore/image", {"id": "x"}, None, None),
        ("PUT", "/datastore/label", {"image": "x", "tag": "final"}, {"params": "{}"}, {"label": ("l.nrrd", LABELS)}),
        ("POST", "/infer/p2sam", {"image": "x"}, {"params": json.dumps(dict(EXPECTED, prior_image="x"))}, None),
        ("POST", "/p2sam/jobs", None, {"params": json.dumps(EXPECTED)}, JOB_FILES),
        ("GET", "/p2sam/jobs", None, None, None), ("GET", "/p2sam/jobs/" + "0" * 32, None, None, None),
        ("DELETE", "/p2sam/jobs/" + "0" * 32, None, None, None), ("GET", "/auth/token/valid", None, None, None),
    ]
    for headers in ({}, {"Authorization": "Bearer not-a-token"}, {"Authorization": "Basic YWxpY2U6eA=="}):
        for method, path, query, fields, files in requests:
            status, hdrs, body = http(server.url, method, path, query=query, fields=fields, files=files,
                                      headers=headers)
            assert status == 401, (headers, method, path, status, body)
            assert hdrs.get("www-authenticate") == "Bearer"
    status, _, body = http(server.url, "GET", "/auth/")  # the one open endpoint: is sign-in on?
    assert status == 200 and json.loads(body)["enabled"] is True
    assert tree(server.folder, skip=("server.log",)) == before


def test_sign_in_and_the_token_is_accepted(server):
    status, _, body = http(server.url, "POST", "/auth/token", form={"username": "alice", "password": "wrong"})
    assert status == 401 and detail(body) == "wrong user name or password"
    status, _, body = http(server.url, "POST", "/auth/token", form={"username": "mallory", "password": "wrong"})
    assert status == 401 and detail(body) == "wrong user name or password"  # unknown users: the same answer
    alice = token(server, "alice")
    status, _, body = http(server.url, "GET", "/auth/token/valid", headers=alice)
    assert status == 200 and json.loads(body)["username"] == "alice"
    assert json.loads(body)["roles"] == ["monailabel-user"]
    status, _, body = http(server.url, "GET", "/info/", headers=alice)
    assert status == 200 and json.loads(body)["p2sam"]["engine_version"] == local_engine_version()
    forged = dict(alice, Authorization=alice["Authorization"][:-3] + "AAA")
    assert http(server.url, "GET", "/info/", headers=forged)[0] == 401


def test_roles_decide_what_a_user_may_do(server):
    alice, carol = token(server, "alice"), token(server, "carol")
    status, _, body = http(server.url, "PUT", "/datastore/image", query={"image": "roles"},
                           files={"file": ("ct.nrrd", CT)}, headers=alice)
    assert status == 403 and "monailabel-annotator" in detail(body)
    assert not (server.studies / "roles.nrrd").exists()
    status, _, _ = http(server.url, "PUT", "/datastore/image", query={"image": "roles"},
                        files={"file": ("ct.nrrd", CT)}, headers=carol)
    assert status == 200 and (server.studies / "roles.nrrd").is_file()
    status, _, _ = http(server.url, "DELETE", "/datastore/image", query={"id": "roles"}, headers=carol)
    assert status == 403  # deleting needs an admin


def test_jobs_are_private_to_their_owner(server):
    alice, carol = token(server, "alice"), token(server, "carol")
    status, _, body = http(server.url, "POST", "/p2sam/jobs", fields={"params": json.dumps(dict(EXPECTED, segments=["Nope"]))},
                           files=JOB_FILES, headers=alice)
    assert status == 202, body
    job = json.loads(body)["job"]
    assert http(server.url, "GET", f"/p2sam/jobs/{job}", headers=carol)[0] == 404
    assert http(server.url, "DELETE", f"/p2sam/jobs/{job}", headers=carol)[0] == 404
    assert json.loads(http(server.url, "GET", "/p2sam/jobs", headers=carol)[2]) == []
    status, _, body = http(server.url, "GET", f"/p2sam/jobs/{job}", headers=alice)
    assert status == 200 and json.loads(body)["job"] == job
    assert http(server.url, "DELETE", f"/p2sam/jobs/{job}", headers=alice)[0] == 200


def test_the_client_signs_in_like_monai_labels_slicer_client(server):
    client = P2SAMServerClient(server.url, username="alice", password=PASSWORDS["alice"])
    assert client.auth_enabled()
    client.token = "Bearer expired-or-garbage"  # a stale token is renewed once with the credentials
    assert client.info()["p2sam"]["engine_version"] == local_engine_version()
    assert client.token.startswith("Bearer ey")
    with pytest.raises(AuthenticationError, match="enter a user name and password"):
        P2SAMServerClient(server.url).info()
    with pytest.raises(AuthenticationError, match="wrong user name or password"):
        P2SAMServerClient(server.url, username="alice", password="not hers").info()


def test_the_worker_round_trip_signed_in(server, small_cohort, tmp_path):
    """The Slicer client's worker process gets the credentials through a pipe (never a file): refused without
    them, with a wrong password; with them, the proposal comes back and nothing stays on the server."""
    from P2SAMLogic.io import read_segmentation, read_volume

    prior, prior_src = read_volume(str(small_cohort / "prior_ct.nrrd"))
    follow, _ = read_volume(str(small_cohort / "followup_2.nrrd"))
    segments = read_segmentation(str(small_cohort / "prior.seg.nrrd"), prior, prior_src)
    config = {"max_parts": 2, "slice_margin_mm": 0.0, "segments": ["GTV"]}
    for credentials, code, fragment in [({}, 2, "enter a user name and password"),
                                        ({"username": "alice", "password": "not hers"}, 2, "wrong user name or password"),
                                        ({"username": "alice", "password": PASSWORDS["alice"]}, 0, None)]:
        job = ServerPropagation(prior, segments, follow, url=server.url, config=config, python=sys.executable,
                                work_dir=str(tmp_path), **credentials)
        job.start()
        assert job.wait(timeout=600) == code, (job.error(), job.log_tail())
        for name in os.listdir(job.folder):  # the password never reaches the disk
            path = os.path.join(job.folder, name)
            if os.path.isfile(path):
                with open(path, "rb") as handle:
                    data = handle.read()
                assert PASSWORDS["alice"].encode() not in data and b"not hers" not in data, name
        if fragment:
            assert job.error()["type"] == "AuthenticationError" and fragment in job.error()["message"]
        else:
            (proposal,), report = job.result()
            assert proposal.name == "GTV" and proposal.array().any()
            assert report["provenance"]["version"] == local_engine_version()
        job.cleanup()
    assert os.listdir(server.jobs) == []


def test_the_panel_asks_for_a_login_and_runs_signed_in(server, small_cohort, monkeypatch):
    """"Run on server" against a server that requires signing in: the first try is refused, the panel asks
    for a user name and password (kept in memory), and the run goes through with them."""
    import time

    slicer = pytest.importorskip("slicer")
    import slicer_standins as standins
    from P2SAMLogic.io import read_segmentation, read_volume
    from P2SAMSlicerLib import mrml_bridge

    scene = slicer.vtkMRMLScene()
    standins.install(monkeypatch, scene)
    module = standins.load(ROOT / "P2SAMSlicer" / "P2SAMSlicer.py", "P2SAMSlicer_server_auth_under_test")
    widget = module.P2SAMSlicerWidget()
    widget.ui = standins.widget_ui()
    widget.logic = module.P2SAMSlicerLogic()
    widget._timer = standins.Anything()
    settings = standins.ParameterNode(scene)
    widget.setParameterNode(settings)
    prior, prior_src = read_volume(str(small_cohort / "prior_ct.nrrd"))
    follow, _ = read_volume(str(small_cohort / "followup_1.nrrd"))
    segments = read_segmentation(str(small_cohort / "prior.seg.nrrd"), prior, prior_src)
    prior_node = mrml_bridge.image_to_volume_node(prior, scene, "prior")
    settings.priorVolume = prior_node
    settings.priorSegmentation = mrml_bridge.segments_to_segmentation_node(scene, segments, prior, "prior contours",
                                                                           reference_volume_node=prior_node)
    settings.followupVolume = mrml_bridge.image_to_volume_node(follow, scene, "follow-up 1")
    settings.runOnServer, settings.serverUrl = True, server.url
    asked, shown = [], []
    widget.showResults = lambda outputs, report=None: shown.append(outputs)

    def ask(url, reason):
        asked.append((url, reason))
        widget._serverLogins[url] = {"username": "alice", "password": PASSWORDS["alice"]}
        return True

    widget.askServerLogin = ask
    again = []
    monkeypatch.setattr(sys.modules["qt"], "QTimer", standins.Anything(singleShot=lambda ms, f: again.append(f)))
    for _ in range(2):  # the refused run, then the one Apply would start again after the login
        widget._startBackground(settings, widget.checkedSegmentIds(), {"model": "litemedsam", "modelType": None,
                                                                       "device": "cpu"},
                                {"max_parts": 2, "slice_margin_mm": 0.0, "segments": ["GTV"]}, None, server=server.url)
        deadline = time.monotonic() + 600
        while widget._job is not None and time.monotonic() < deadline:
            time.sleep(0.5)
            widget.onTimer()
        assert widget._job is None
    assert len(asked) == 1 and asked[0][0] == server.url and "enter a user name and password" in asked[0][1]
    assert again == [widget.onApplyButton]  # the panel starts the run again once signed in
    (node, report, volume), = shown[0]
    assert report["status"] == "unreviewed proposal" and node.GetSegmentation().GetNumberOfSegments() == 1
