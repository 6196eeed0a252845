"""Who may use the P2SAM server: MONAI Label's bearer-token authentication, made to work.

MONAI Label's own scheme: with ``MONAI_LABEL_AUTH_ENABLE=true`` every endpoint needs an
``Authorization: Bearer <token>`` header and a role (``monailabel-user`` to run inference,
``monailabel-annotator`` to write into the datastore, ``monailabel-admin`` to delete); a client
gets a token with ``POST /auth/token`` (form fields ``username``, ``password``), which MONAI Label
forwards to a Keycloak realm. Two ways to run it here (:func:`configure`):

* **Users file** (``serve.py --auth-users FILE``; :class:`LocalUsers`): the server itself checks
  user names and scrypt password hashes kept in a JSON file made with ``manage_users.py``, and
  signs short-lived tokens (HS256, a key drawn when the server starts: a restart signs everyone
  out). For a single server without an identity provider.
* **Keycloak** (``serve.py --auth-realm URL``, or MONAI Label's ``MONAI_LABEL_AUTH_REALM_URI``;
  :class:`KeycloakRealm`): tokens come from the realm (its ``token_endpoint``), signed RS256 with
  the realm's key. The hospital's accounts, roles and policies apply.

What is replaced in MONAI Label 0.8.5 and why: its token check calls ``jwt.decode`` without the
``algorithms`` argument, which PyJWT 2 refuses, so no token is ever accepted; its ``POST
/auth/token`` answers a wrong password with HTTP 500 and blocks the server's event loop while it
waits for the realm. :func:`make_dependency`'s check is installed with FastAPI's ``dependency_overrides``
in place of MONAI Label's ``get_current_user``, so MONAI Label's own role checks (``RBAC``) run
on it unchanged; :func:`router` serves ``/auth/`` with MONAI Label's request and answer formats.
"""
import base64
import hashlib
import hmac
import json
import logging
import os
import secrets
import stat
import threading
import time
from typing import Dict, List, Optional

logger = logging.getLogger(__name__)

ROLE_NAMES = ("user", "annotator", "reviewer", "admin")
TOKEN_SECONDS = 3600
#: scrypt cost (n = 2**14, r = 8, p = 1: about 16 MB and 50 ms per check)
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2 ** 14, 8, 1
#: failed sign-ins before a user name is locked out, and for how long (seconds)
MAX_FAILURES, LOCKOUT_SECONDS = 5, 300


def monai_role(short: str) -> str:
    """MONAI Label's role name (its settings ``MONAI_LABEL_AUTH_ROLE_*``) for ``user`` / ``annotator`` / ..."""
    from monailabel.config import settings

    return getattr(settings, f"MONAI_LABEL_AUTH_ROLE_{short.upper()}")


def implied_roles(user: dict) -> List[str]:
    """A users-file entry's roles, each including the ones before it in :data:`ROLE_NAMES`
    (an annotator may also run P2SAM; an admin may do everything)."""
    given = [ROLE_NAMES.index(r) for r in (user.get("roles") or ["user"]) if r in ROLE_NAMES]
    return list(ROLE_NAMES[: max(given) + 1]) if given else []


class AuthFailed(Exception):
    """Credentials or token refused (HTTP 401), or too many failures (429); ``status`` says which."""

    def __init__(self, message: str, status: int = 401) -> None:
        super().__init__(message)
        self.status = status


# -- password hashes --------------------------------------------------------------------------------------------
def hash_password(password: str) -> str:
    """``scrypt$n$r$p$salt$hash`` (base64) of ``password``."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    return "$".join(["scrypt", str(SCRYPT_N), str(SCRYPT_R), str(SCRYPT_P),
                     base64.b64encode(salt).decode(), base64.b64encode(digest).decode()])


def check_password(password: str, stored: str) -> bool:
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        if kind != "scrypt":
            return False
        got = hashlib.scrypt(password.encode("utf-8"), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                             dklen=len(base64.b64decode(digest)))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, base64.b64decode(digest))


_DUMMY_HASH = None


def _dummy_hash() -> str:
    global _DUMMY_HASH
    if _DUMMY_HASH is None:
        _DUMMY_HASH = hash_password(secrets.token_hex(8))
    return _DUMMY_HASH


# -- the users file ---------------------------------------------------------------------------------------------
def read_users(path: str) -> Dict[str, dict]:
    """``{name: {"password": scrypt hash, "roles": [short role names]}}`` from a users file."""
    with open(path, encoding="utf-8") as handle:
        data = json.load(handle)
    users = data.get("users") if isinstance(data, dict) else None
    if not isinstance(users, dict):
        raise ValueError(f"{path} is not a P2SAM users file (expected {{\"users\": {{...}}}})")
    return users


def write_users(path: str, users: Dict[str, dict]) -> None:
    """Write the users file atomically, readable by its owner only."""
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump({"users": users}, handle, indent=1, sort_keys=True)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


class LocalUsers:
    """Users and roles from a users file; tokens signed by this server (HS256).

    The file is read again when it changes, so users added or removed with ``manage_users.py``
    count from their next sign-in; a removed user's tokens stop working at once.
    """

    realm = "local users file"

    def __init__(self, path: str, token_seconds: int = TOKEN_SECONDS) -> None:
        self.path = os.path.abspath(path)
        self.token_seconds = int(token_seconds)
        self._key = secrets.token_bytes(32)
        self._lock = threading.Lock()
        self._users: Dict[str, dict] = {}
        self._mtime = None
        self._failures: Dict[str, List[float]] = {}
        self._load()
        if os.name == "posix" and os.stat(self.path).st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            logger.warning(f"the users file {self.path} is readable by other accounts; chmod 600 it")

    def _load(self) -> Dict[str, dict]:
        with self._lock:
            mtime = os.stat(self.path).st_mtime_ns
            if mtime != self._mtime:
                self._users, self._mtime = read_users(self.path), mtime
            return self._users

    def sign_in(self, username: str, password: str) -> dict:
        """A token for ``username`` (``{"access_token", "token_type", "expires_in"}``), or :class:`AuthFailed`."""
        now = time.time()
        with self._lock:
            recent = [t for t in self._failures.get(username, []) if now - t < LOCKOUT_SECONDS]
            self._failures[username] = recent
        if len(recent) >= MAX_FAILURES:
            raise AuthFailed(f"too many failed sign-ins for this user name; try again in {LOCKOUT_SECONDS // 60} "
                             "minutes", status=429)
        user = self._load().get(username)
        ok = check_password(password, user["password"] if user else _dummy_hash())  # same time either way
        if not (user and ok):
            with self._lock:
                self._failures.setdefault(username, []).append(now)
            raise AuthFailed("wrong user name or password")
        with self._lock:
            self._failures.pop(username, None)
        import jwt

        claims = {"iss": "p2sam-server", "sub": username, "preferred_username": username, "iat": int(now),
                  "exp": int(now) + self.token_seconds, "roles": list(user.get("roles") or ["user"])}
        token = jwt.encode(claims, self._key, algorithm="HS256")
        return {"access_token": token, "token_type": "Bearer", "expires_in": self.token_seconds}

    def user_of(self, token: str):
        """MONAI Label's ``User`` for a token this server signed, or :class:`AuthFailed`."""
        import jwt
        from monailabel.endpoints.user.auth import User

        try:
            claims = jwt.decode(token, self._key, algorithms=["HS256"], issuer="p2sam-server",
                                options={"require": ["exp", "sub"]})
        except jwt.InvalidTokenError as exc:
            raise AuthFailed(f"token refused ({exc}); sign in again") from None
        name = claims["sub"]
        user = self._load().get(name)
        if user is None:
            raise AuthFailed("token refused (the user no longer exists)")
        return User(username=name, email=None, name=name, roles=[monai_role(r) for r in implied_roles(user)])


class KeycloakRealm:
    """Tokens from a Keycloak realm (MONAI Label's scheme), checked with the realm's RS256 key."""

    def __init__(self, realm_uri: str, timeout: float = 10.0) -> None:
        self.realm = realm_uri.rstrip("/")
        self.timeout = timeout
        self._key = None
        self._token_endpoint = None

    def _get(self, url: str) -> dict:
        import requests

        answer = requests.get(url, timeout=self.timeout)
        answer.raise_for_status()
        return answer.json()

    def public_key(self) -> str:
        if self._key is None:
            key = self._get(self.realm)["public_key"]
            self._key = f"-----BEGIN PUBLIC KEY-----\n{key}\n-----END PUBLIC KEY-----"
        return self._key

    def sign_in(self, username: str, password: str) -> dict:
        import requests
        from monailabel.config import settings

        if self._token_endpoint is None:
            self._token_endpoint = self._get(f"{self.realm}/.well-known/openid-configuration")["token_endpoint"]
        answer = requests.post(self._token_endpoint, timeout=self.timeout,
                               data={"client_id": settings.MONAI_LABEL_AUTH_CLIENT_ID, "username": username,
                                     "password": password, "grant_type": "password"})
        if answer.status_code in (400, 401, 403):
            raise AuthFailed("wrong user name or password")
        answer.raise_for_status()
        return answer.json()

    def user_of(self, token: str):
        import jwt
        from monailabel.config import settings
        from monailabel.endpoints.user.auth import User

        try:
            claims = jwt.decode(token, self.public_key(), algorithms=["RS256"],
                                options={"verify_aud": False, "require": ["exp"]})
        except jwt.InvalidTokenError as exc:
            raise AuthFailed(f"token refused ({exc}); sign in again") from None
        roles = claims
        for part in settings.MONAI_LABEL_AUTH_TOKEN_ROLES.split("#"):
            roles = roles.get(part) if isinstance(roles, dict) else None
        return User(username=claims.get(settings.MONAI_LABEL_AUTH_TOKEN_USERNAME) or claims.get("sub", ""),
                    email=claims.get(settings.MONAI_LABEL_AUTH_TOKEN_EMAIL),
                    name=claims.get(settings.MONAI_LABEL_AUTH_TOKEN_NAME), roles=list(roles or []))


_PROVIDER = None


def configure():
    """The sign-in provider from the environment (set by ``serve.py`` before MONAI Label loads).

    ``P2SAM_AUTH_USERS``: a users file (:class:`LocalUsers`); else, when MONAI Label's
    ``MONAI_LABEL_AUTH_ENABLE`` is true, its ``MONAI_LABEL_AUTH_REALM_URI`` (:class:`KeycloakRealm`);
    else None (no authentication: every request acts as MONAI Label's default admin user).
    """
    global _PROVIDER
    from monailabel.config import settings

    users = os.environ.get("P2SAM_AUTH_USERS")
    if users:
        if not settings.MONAI_LABEL_AUTH_ENABLE:
            raise RuntimeError("P2SAM_AUTH_USERS is set but MONAI_LABEL_AUTH_ENABLE is not: start the server with "
                               "apps/p2sam/serve.py --auth-users FILE")
        _PROVIDER = LocalUsers(users, int(os.environ.get("P2SAM_TOKEN_SECONDS", TOKEN_SECONDS)))
    elif settings.MONAI_LABEL_AUTH_ENABLE:
        _PROVIDER = KeycloakRealm(settings.MONAI_LABEL_AUTH_REALM_URI, settings.MONAI_LABEL_AUTH_TIMEOUT)
    else:
        _PROVIDER = None
    return _PROVIDER


def provider():
    return _PROVIDER


def _bearer(authorization: Optional[str]) -> str:
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthFailed("this P2SAM server requires signing in: send 'Authorization: Bearer <token>' "
                         "(POST /auth/token with username and password gives one)")
    return token.strip()


def make_dependency():
    """The FastAPI dependency that replaces MONAI Label's ``get_current_user`` (see the module docstring)."""
    from fastapi import Header, HTTPException
    from monailabel.endpoints.user.auth import DEFAULT_USER

    def current_user(authorization: Optional[str] = Header(None)):
        if _PROVIDER is None:
            return DEFAULT_USER
        try:
            return _PROVIDER.user_of(_bearer(authorization))
        except AuthFailed as exc:
            raise HTTPException(status_code=exc.status, detail=str(exc),
                                headers={"WWW-Authenticate": "Bearer"}) from None

    return current_user


def router():
    """``/auth/`` (is sign-in on?), ``/auth/token`` (sign in), ``/auth/token/valid`` (who am I), as MONAI Label."""
    from fastapi import APIRouter, Depends, Form, HTTPException
    from monailabel.config import settings
    from monailabel.endpoints.user.auth import get_current_user

    r = APIRouter(prefix="/auth", tags=["Auth"])

    @r.get("/", summary="Whether this server requires signing in")
    def auth_enabled():
        return {"enabled": _PROVIDER is not None, "client_id": settings.MONAI_LABEL_AUTH_CLIENT_ID,
                "realm": None if _PROVIDER is None else _PROVIDER.realm}

    @r.post("/token", summary="Sign in: a bearer token for a user name and password")
    def access_token(username: str = Form(..., max_length=128), password: str = Form(..., max_length=1024)):
        if _PROVIDER is None:
            return {"access_token": None, "token_type": None}
        try:
            return _PROVIDER.sign_in(username, password)
        except AuthFailed as exc:
            raise HTTPException(status_code=exc.status, detail=str(exc),
                                headers={"WWW-Authenticate": "Bearer"}) from None

    @r.get("/token/valid", summary="The signed-in user, if the token is valid")
    def valid_token(user=Depends(get_current_user)):
        return user.model_dump()

    return r
