"""The P2SAM server's rules alone, without a server: identifiers, uploads, parameter bounds, the handshake,
sign-in (password hashes, tokens, lock-out) and serve.py's refusal to open an unauthenticated server to
the network. The same rules are exercised through a real server in test_server.py / test_server_auth.py."""
from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "apps" / "p2sam"))
from p2sam_server.checks import (  # noqa: E402
    PARAMETER_RULES, REQUEST_KEYS, Refused, bounded_parameters, datastore_id, handshake_refusal, inside,
    request_params, segment_names, upload_suffix)

SERVER = {"engine_version": "0.2.0+s0123456789ab", "model": "LiteMedSAM", "model_sha256": "ab" * 32}


@pytest.mark.parametrize("value", ["../outside/x", "../../outside/x", "/etc/passwd", "C:\\Windows\\x", "a/b",
                                   "..", ".hidden", "a..b", "", "x" * 129, "é", "a\x00b", "~root", "a b", None, 3])
def test_paths_and_odd_names_are_not_identifiers(value):
    with pytest.raises(Refused) as err:
        datastore_id(value, "image id")
    assert err.value.status == 400 and "image id" in err.value.message and "not a valid identifier" in err.value.message


@pytest.mark.parametrize("value", ["p2sam-prior-0a1b", "case_001", "GTV.final", "x", "_a", "-1"])
def test_plain_names_are_identifiers(value):
    assert datastore_id(value, "image id") == value


def test_uploads_keep_only_a_known_suffix():
    assert upload_suffix("../../outside/x.seg.nrrd", "label") == ".seg.nrrd"
    assert upload_suffix("scan.NII.GZ", "image") == ".nii.gz"
    for bad in ("run.sh", "x.nrrd.sh", ".nrrd", None, "", "x.dcm"):
        with pytest.raises(Refused, match="not one of the accepted file types"):
            upload_suffix(bad, "image")


def test_inside_follows_links(tmp_path):
    root = tmp_path / "store"
    (root / "a").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    os.symlink(tmp_path / "outside", root / "link")
    assert inside(str(root), str(root / "a" / "x.nrrd"))
    assert not inside(str(root), str(root / ".." / "outside" / "x.nrrd"))
    assert not inside(str(root), str(root / "link" / "x.nrrd"))
    assert not inside(str(root), str(tmp_path / "store2" / "x"))


def test_request_params_accept_only_known_keys_and_small_json():
    assert request_params('{"segments": "GTV"}') == {"segments": "GTV"}
    with pytest.raises(Refused) as err:
        request_params('{"label": "/any/path", "image": "/etc/passwd"}')
    assert err.value.status == 422 and "'image'" in err.value.message and "'label'" in err.value.message
    with pytest.raises(Refused) as err:
        request_params('{"segments": "' + "x" * 70000 + '"}')
    assert err.value.status == 413
    for bad in ("[1]", "{", '"text"'):
        with pytest.raises(Refused) as err:
            request_params(bad)
        assert err.value.status == 400
    assert set(REQUEST_KEYS) >= {"expected_engine_version", "expected_model_sha256"}


def test_every_propagation_parameter_has_a_bound():
    """A new PropagationConfig field must get a rule (type and bounds) before the server accepts it."""
    from P2SAMLogic.propagation.pipeline import PropagationConfig

    fields = {f.name for f in dataclasses.fields(PropagationConfig)} - {"segments"}
    assert fields == set(PARAMETER_RULES), (sorted(fields - set(PARAMETER_RULES)), sorted(set(PARAMETER_RULES) - fields))
    defaults = PropagationConfig()
    accepted = bounded_parameters({k: getattr(defaults, k) for k in fields})  # the defaults are within bounds
    PropagationConfig(**accepted).validate()


@pytest.mark.parametrize("parameters, fragment", [
    ({"max_parts": 1000}, "parameters.max_parts: 1000 is outside the range this server accepts [1, 10]"),
    ({"batch_size": 10 ** 9}, "parameters.batch_size"),
    ({"roi_margin_mm": float("inf")}, "parameters.roi_margin_mm"),
    ({"slice_margin_mm": float("nan")}, "parameters.slice_margin_mm"),
    ({"max_parts": 2.5}, "not a whole number"),
    ({"max_parts": True}, "is not a number"),
    ({"decompose": "yes"}, "is not true or false"),
    ({"intensity_window": [0, 1e9]}, "parameters.intensity_window"),
    ({"intensity_window": [0]}, "expected [low, high]"),
    ({"method": "x" * 100}, "is not one of the engine's choices"),
    ({"max_partz": 2}, "unknown propagation parameter 'max_partz'"),
    ({"gate_score_ratio": [0.95]}, "expected [low, high]"),
    ({"gate_score_ratio": [0.95, 1e9]}, "parameters.gate_score_ratio"),
    ({"registered_prompts": ["tight"] * 9}, "expected a list of at most 8"),
    ({"registered_prompts": "tight"}, "expected a list"),
])
def test_parameters_are_bounded(parameters, fragment):
    with pytest.raises(Refused) as err:
        bounded_parameters(parameters)
    assert err.value.status == 422 and fragment in err.value.message


def test_segment_names_are_bounded():
    assert segment_names("GTV, Lung_L") == ["GTV", "Lung_L"]
    assert segment_names([]) is None
    with pytest.raises(Refused):
        segment_names(["x"] * 65)
    with pytest.raises(Refused):
        segment_names([{"name": "GTV"}])


def test_handshake_is_mandatory_and_names_both_sides():
    missing = handshake_refusal(SERVER, None, None)
    assert missing.status == 428 and "params.expected_engine_version and params.expected_model_sha256" in missing.message
    assert SERVER["engine_version"] in missing.message
    only_version = handshake_refusal(SERVER, SERVER["engine_version"], "")
    assert only_version.status == 428 and "expected_model_sha256" in only_version.message
    wrong = handshake_refusal(SERVER, "0.1.0", "cd" * 32)
    assert wrong.status == 409 and "0.1.0" in wrong.message and SERVER["engine_version"] in wrong.message
    assert "cd" * 32 in wrong.message and SERVER["model_sha256"] in wrong.message
    assert handshake_refusal(SERVER, SERVER["engine_version"], SERVER["model_sha256"]) is None


# -- sign-in ----------------------------------------------------------------------------------------------------
def test_passwords_are_stored_as_scrypt_hashes(tmp_path):
    from p2sam_server.auth import check_password, hash_password, read_users, write_users

    stored = hash_password("correct horse battery")
    assert stored.startswith("scrypt$") and "correct" not in stored
    assert check_password("correct horse battery", stored) and not check_password("correct horse batterx", stored)
    assert not check_password("x", "md5$abc") and not check_password("x", "garbage")
    path = tmp_path / "users.json"
    write_users(str(path), {"alice": {"password": stored, "roles": ["user"]}})
    assert read_users(str(path))["alice"]["roles"] == ["user"]
    if os.name == "posix":
        assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_manage_users_adds_lists_and_removes(tmp_path, monkeypatch, capsys):
    import io

    import manage_users

    path = str(tmp_path / "users.json")
    monkeypatch.setattr(sys, "stdin", io.StringIO("short\n"))
    assert manage_users.main([path, "add", "alice", "--password-stdin"]) == 2
    assert not os.path.exists(path)
    monkeypatch.setattr(sys, "stdin", io.StringIO("correct horse battery\n"))
    assert manage_users.main([path, "add", "alice", "--role", "user", "--role", "annotator", "--password-stdin"]) == 0
    assert manage_users.main([path, "add", "../x", "--password-stdin"]) == 2
    capsys.readouterr()
    assert manage_users.main([path, "list"]) == 0
    assert capsys.readouterr().out.strip() == "alice: annotator, user"
    assert manage_users.main([path, "remove", "bob"]) == 1
    assert manage_users.main([path, "remove", "alice"]) == 0


def test_local_users_sign_in_tokens_and_lockout(tmp_path):
    from conftest import require_extra

    require_extra("monailabel", "server")
    jwt = pytest.importorskip("jwt")
    from p2sam_server import auth

    path = str(tmp_path / "users.json")
    auth.write_users(path, {"alice": {"password": auth.hash_password("correct horse battery"),
                                      "roles": ["annotator"]}})
    users = auth.LocalUsers(path, token_seconds=60)
    answer = users.sign_in("alice", "correct horse battery")
    assert answer["token_type"] == "Bearer" and answer["expires_in"] == 60
    user = users.user_of(answer["access_token"])
    assert user.username == "alice" and user.roles == ["monailabel-user", "monailabel-annotator"]  # roles add up
    assert auth.implied_roles({"roles": ["admin"]}) == list(auth.ROLE_NAMES)
    assert auth.implied_roles({"roles": ["nonsense"]}) == []
    claims = jwt.decode(answer["access_token"], options={"verify_signature": False})
    forged = jwt.encode(dict(claims, roles=["admin"]), "another key of at least 32 bytes", algorithm="HS256")
    with pytest.raises(auth.AuthFailed, match="Signature verification failed"):
        users.user_of(forged)
    expired = jwt.encode(dict(claims, exp=claims["iat"] - 10), users._key, algorithm="HS256")
    with pytest.raises(auth.AuthFailed, match="expired"):
        users.user_of(expired)
    for _ in range(auth.MAX_FAILURES):
        with pytest.raises(auth.AuthFailed) as err:
            users.sign_in("alice", "wrong password")
        assert err.value.status == 401 and str(err.value) == "wrong user name or password"
    with pytest.raises(auth.AuthFailed) as err:  # locked out, even with the right password
        users.sign_in("alice", "correct horse battery")
    assert err.value.status == 429
    with pytest.raises(auth.AuthFailed, match="wrong user name or password"):  # unknown users: the same answer
        users.sign_in("mallory", "whatever")
    auth.write_users(path, {})  # removing a user ends their tokens
    os.utime(path, ns=(1, 1))
    with pytest.raises(auth.AuthFailed, match="no longer exists"):
        users.user_of(answer["access_token"])


# -- serve.py ---------------------------------------------------------------------------------------------------
def test_serve_listens_on_loopback_and_refuses_an_open_network_server(capsys, monkeypatch):
    import serve

    monkeypatch.delenv("MONAI_LABEL_AUTH_ENABLE", raising=False)
    ours, rest = serve.parse(["--studies", "/data", "--port", "8000"])
    assert ours.host == "127.0.0.1" and rest == ["--studies", "/data", "--port", "8000"]
    with pytest.raises(SystemExit) as err:
        serve.parse(["--studies", "/data", "--host", "0.0.0.0"])
    assert err.value.code == 2 and "sign-in is off" in capsys.readouterr().err
    ours, _ = serve.parse(["--studies", "/data", "--host", "0.0.0.0", "--auth-realm", "https://kc/realms/x"])
    assert ours.auth_realm == "https://kc/realms/x"
    ours, _ = serve.parse(["--studies", "/data", "--host", "0.0.0.0", "--allow-open-network"])
    assert ours.allow_open_network
    for banned in (["--workers", "2"], ["--uvicorn_app", "monailabel.app:app"]):
        with pytest.raises(SystemExit):
            serve.parse(["--studies", "/data"] + banned)
    assert serve.is_loopback("127.0.0.1") and serve.is_loopback("::1") and serve.is_loopback("localhost")
    assert not serve.is_loopback("0.0.0.0") and not serve.is_loopback("10.1.2.3")
