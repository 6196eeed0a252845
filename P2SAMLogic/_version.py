"""The engine's version string: a release number plus a digest of the code that runs.

``__version__`` is ``"<BASE_VERSION>+s<digest>"``, e.g. ``0.2.0+s3f9a0c1b2d4e``, where ``<digest>``
is the first 12 hex digits of a SHA-256 over every ``*.py`` file of this package (its path
relative to the package, then its bytes with Windows line ends turned into ``\\n``), in path
order. Any change to the engine's code changes the string, committed or not, in a source
checkout, an installed wheel or a Slicer extension alike, without git and without a build step;
the same code gives the same string on every platform. The string goes into every output's
provenance and into the server's version handshake.

To find which commit an output came from, compare its version with a commit's:
``python scripts/engine_version.py --git-rev <commit>`` (needs git and a checkout).

Reading the package's ~40 files takes a few milliseconds at import.
"""
import hashlib
import os
from typing import Iterable, Optional, Tuple

#: the release number; raise it for a release, the digest follows every change in between
BASE_VERSION = "0.2.0"

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def _digest(files: Iterable[Tuple[str, bytes]]) -> str:
    """SHA-256 (hex) over ``(relative POSIX path, content)`` pairs, sorted by path, CRLF -> LF."""
    digest = hashlib.sha256()
    for rel, data in sorted(files):
        digest.update(rel.encode("utf-8") + b"\0" + data.replace(b"\r\n", b"\n") + b"\0")
    return digest.hexdigest()


def _package_files(root: str = _PACKAGE_DIR):
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__" and not d.startswith("."))
        for name in names:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                with open(path, "rb") as handle:
                    yield os.path.relpath(path, root).replace(os.sep, "/"), handle.read()


def source_digest(root: str = _PACKAGE_DIR) -> str:
    """The digest of the ``*.py`` files under ``root`` (default: this installed package)."""
    return _digest(_package_files(root))


def version_for(digest: str) -> str:
    """The version string of code whose :func:`source_digest` is ``digest``."""
    return f"{BASE_VERSION}+s{digest[:12]}"


def git_rev_digest(rev: str, repository: Optional[str] = None) -> str:
    """:func:`source_digest` of the ``P2SAMLogic`` folder at git revision ``rev`` of ``repository``
    (default: the checkout holding this package)."""
    import subprocess

    repository = repository or os.path.dirname(_PACKAGE_DIR)

    def git(*args: str) -> bytes:
        return subprocess.run(["git", "-C", repository, *args], check=True, capture_output=True).stdout

    names = [n for n in git("ls-tree", "-r", "--name-only", rev, "--", "P2SAMLogic").decode().splitlines()
             if n.endswith(".py") and "/__pycache__/" not in n]
    return _digest((n[len("P2SAMLogic/"):], git("show", f"{rev}:{n}")) for n in names)
