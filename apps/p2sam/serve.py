#!/usr/bin/env python
"""Start the P2SAM MONAI Label server: ``monailabel start_server`` with P2SAM's checked web app.

Usage::

    python apps/p2sam/serve.py --studies DATASTORE_FOLDER [--host 127.0.0.1] [--port 8000]
        [--auth-users USERS.json | --auth-realm https://keycloak/realms/NAME] [--token-minutes 60]
        [--allowed-hosts NAME,...] [--cors-origins URL,...] [--max-upload-mb 2048]
        [--conf model litemedsam] [--conf device cuda] [--conf workers 1] [other start_server options]

What it adds to ``monailabel start_server``:

* **Listens on 127.0.0.1 unless told otherwise** (MONAI Label's default is every interface), and
  refuses another address without sign-in (``--auth-users`` or ``--auth-realm``) unless
  ``--allow-open-network`` says that everyone who can reach the port may use the server.
* **Sign-in** (``p2sam_server/auth.py``): ``--auth-users FILE`` (users made with
  ``manage_users.py``) or ``--auth-realm URL`` (a Keycloak realm, MONAI Label's scheme); both turn
  on MONAI Label's ``MONAI_LABEL_AUTH_ENABLE``.
* **The checked app** ``p2sam_server.asgi:app`` instead of MONAI Label's own (endpoints removed,
  names checked, hosts and origins restricted, uploads bounded, inference in worker threads).
* One uvicorn process (``--workers`` is refused: the job queue lives in the process; use
  ``--conf workers N`` for N jobs at once).
* One import fix: MONAI Label 0.8.5 imports ``pydicom_seg`` (0.4.1, the newest), which imports
  ``SegmentationStorage`` from ``pydicom._storage_sopclass_uids``, a private module pydicom 3
  removed. This repository needs pydicom 3 (highdicom >= 0.23, dicomweb-client 0.61), so before
  MONAI Label loads, that module name is registered with the UID pydicom 3 provides. The app never
  calls pydicom_seg.
"""
import argparse
import ipaddress
import os
import sys
import types

APP_DIR = os.path.dirname(os.path.abspath(__file__))
ASGI_APP = "p2sam_server.asgi:app"


def install_pydicom3_alias() -> None:
    """Make ``pydicom._storage_sopclass_uids`` importable under pydicom 3 (see the module docstring)."""
    try:
        import pydicom._storage_sopclass_uids  # noqa: F401  (pydicom 2: nothing to do)
        return
    except ImportError:
        pass
    import pydicom.uid

    alias = types.ModuleType("pydicom._storage_sopclass_uids")
    alias.__doc__ = "pydicom 2's private SOP class UID module, aliased to pydicom.uid by apps/p2sam/serve.py"
    alias.SegmentationStorage = pydicom.uid.SegmentationStorage
    sys.modules["pydicom._storage_sopclass_uids"] = alias


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) is reachable from this machine only."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse(argv):
    """``(P2SAM options, the rest for start_server)``; exits with status 2 and a message on a bad combination."""
    parser = argparse.ArgumentParser("serve.py", allow_abbrev=False,
                                     description="Start the P2SAM MONAI Label server (see the module docstring); "
                                                 "other options go to monailabel start_server.")
    parser.add_argument("-i", "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    sign_in = parser.add_mutually_exclusive_group()
    sign_in.add_argument("--auth-users", metavar="FILE", help="sign-in with the users in FILE (manage_users.py)")
    sign_in.add_argument("--auth-realm", metavar="URL", help="sign-in with a Keycloak realm, e.g. "
                                                             "https://keycloak.example.org/realms/p2sam")
    parser.add_argument("--token-minutes", type=int, default=60, help="lifetime of a --auth-users token")
    parser.add_argument("--allowed-hosts", default=None,
                        help="host names clients use to reach the server (default: the loopback names when "
                             "listening on a loopback address, else any)")
    parser.add_argument("--cors-origins", default="", help="web origins allowed to call the server (default none)")
    parser.add_argument("--max-upload-mb", type=int, default=2048, help="largest request body (default 2048)")
    parser.add_argument("--allow-open-network", action="store_true",
                        help="listen on a non-loopback address WITHOUT sign-in: everyone who can reach the port "
                             "may upload scans, run jobs and read the datastore")
    ours, rest = parser.parse_known_args(argv)
    for banned in ("--uvicorn_app", "--workers"):
        if any(a == banned or a.startswith(banned + "=") for a in rest):
            parser.error(f"{banned} is set by serve.py ({ASGI_APP}, one process; --conf workers N runs N jobs at once)")
    if ours.auth_users and not os.path.isfile(ours.auth_users):
        parser.error(f"--auth-users {ours.auth_users}: no such file (create it with apps/p2sam/manage_users.py)")
    secured = bool(ours.auth_users or ours.auth_realm or _env_true("MONAI_LABEL_AUTH_ENABLE"))
    if not is_loopback(ours.host) and not secured and not ours.allow_open_network:
        parser.error(f"--host {ours.host} makes the server reachable from other machines, and sign-in is off: add "
                     "--auth-users FILE or --auth-realm URL (or --allow-open-network to accept an open server)")
    return ours, rest


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def configure_environment(ours) -> None:
    """The settings MONAI Label and ``p2sam_server`` read at import (so: before MONAI Label loads)."""
    if ours.auth_users:
        os.environ["MONAI_LABEL_AUTH_ENABLE"] = "true"
        os.environ["P2SAM_AUTH_USERS"] = os.path.abspath(ours.auth_users)
        os.environ["P2SAM_TOKEN_SECONDS"] = str(60 * int(ours.token_minutes))
    elif ours.auth_realm:
        os.environ["MONAI_LABEL_AUTH_ENABLE"] = "true"
        os.environ["MONAI_LABEL_AUTH_REALM_URI"] = ours.auth_realm
    else:
        os.environ.pop("P2SAM_AUTH_USERS", None)
    if ours.allowed_hosts:
        os.environ["P2SAM_ALLOWED_HOSTS"] = ours.allowed_hosts
    elif is_loopback(ours.host):
        os.environ["P2SAM_ALLOWED_HOSTS"] = "127.0.0.1,localhost,::1,[::1]"
    else:
        os.environ["P2SAM_ALLOWED_HOSTS"] = "*"
    os.environ["P2SAM_CORS_ORIGINS"] = ours.cors_origins
    os.environ["P2SAM_MAX_UPLOAD_MB"] = str(int(ours.max_upload_mb))
    # MONAI Label features this app does not use (their endpoints are removed too)
    for name in ("MONAI_LABEL_SESSIONS", "MONAI_LABEL_TASKS_TRAIN", "MONAI_LABEL_TASKS_STRATEGY",
                 "MONAI_LABEL_TASKS_SCORING", "MONAI_LABEL_TASKS_BATCH_INFER"):
        os.environ[name] = "false"


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    ours, rest = parse(argv)
    configure_environment(ours)
    install_pydicom3_alias()
    if APP_DIR not in sys.path:
        sys.path.insert(0, APP_DIR)  # p2sam_server, for uvicorn's import of ASGI_APP
    from monailabel.main import Main

    if "--app" not in rest and "-a" not in rest:
        rest = ["--app", APP_DIR] + rest
    sys.argv = ["monailabel", "start_server", "--host", ours.host, "--uvicorn_app", ASGI_APP] + rest
    Main().run()


if __name__ == "__main__":
    main()
