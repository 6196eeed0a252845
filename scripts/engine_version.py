#!/usr/bin/env python
"""Print P2SAMLogic's version string (see P2SAMLogic/_version.py), or the one a git commit would have.

Usage::

    python scripts/engine_version.py                 # the code in this checkout, as it is now
    python scripts/engine_version.py --git-rev REV   # the code at commit REV (needs git)

An output's provenance records the version; comparing it with ``--git-rev`` of candidate commits
tells which commit produced it.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from P2SAMLogic._version import git_rev_digest, source_digest, version_for  # noqa: E402


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--git-rev"] and len(argv) == 2:
        print(version_for(git_rev_digest(argv[1])))
        return 0
    if argv:
        print("usage: python scripts/engine_version.py [--git-rev REV]", file=sys.stderr)
        return 2
    print(version_for(source_digest()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
