"""The code Slicer 5.8 runs (Python 3.9) uses nothing newer: ``Testing/Slicer/check_python39.py`` (vermin plus
a check of evaluated ``X | Y`` unions) over the engine, the module and the self-test runner."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("vermin")
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "Testing" / "Slicer"))

import check_python39  # noqa: E402

SEEDED = '''import itertools
import os
import re
from typing import Optional


def f(a: int | None) -> Optional[int]:
    match a:
        case None:
            return None
    return sum(1 for _ in itertools.pairwise([1, 2, 3]))


def g(xs, ys):
    with (open(xs) as a, open(ys) as b):
        return list(zip(a, b, strict=True))


Alias = int | None
ok = isinstance(3, int | str)
flags = os.W_OK | os.X_OK
pattern = re.compile("x", re.M | re.I)
'''
#: line -> what must be found there (lines 21 and 22 are bit flags: nothing)
EXPECTED = {7: "union", 8: "pattern matching", 11: "pairwise", 16: "zip(strict)", 19: "union", 20: "union"}


def test_the_check_flags_every_seeded_3_10_construct(tmp_path):
    path = tmp_path / "seeded.py"
    path.write_text(SEEDED)
    found = check_python39.check([str(path)])
    lines = {int(f.split(":")[1]) for f in found}
    assert set(EXPECTED) <= lines, found
    for line, what in EXPECTED.items():
        assert any(f.split(":")[1] == str(line) and what in f for f in found), (line, what, found)
    assert not lines & {21, 22}, "bit flags reported as union types"
    postponed = tmp_path / "postponed.py"
    postponed.write_text("from __future__ import annotations\n\n\ndef f(a: int | None) -> None:\n    return None\n")
    assert check_python39.check([str(postponed)]) == []  # a string under PEP 563, never evaluated


def test_the_code_slicer_runs_needs_no_python_newer_than_3_9():
    files = check_python39.python_files(check_python39.PATHS)
    assert len(files) > 50 and any(f.name == "SegmentEditorEffect.py" for f in files)
    found = check_python39.check()
    assert found == [], "\n".join(found)
