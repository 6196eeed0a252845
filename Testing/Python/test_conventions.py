"""Project conventions that CI can check without Slicer: the engine stays Slicer-free and Python 3.9 compatible."""
import ast
from pathlib import Path

import pytest

from conftest import imported_roots

ROOT = Path(__file__).resolve().parents[2]
ENGINE_FILES = sorted((ROOT / "P2SAMLogic").rglob("*.py"))
MODULE_FILES = sorted((ROOT / "P2SAMSlicer").rglob("*.py"))
FORBIDDEN = {"slicer", "qt", "vtk", "ctk", "PythonQt", "torchvision", "timm"}


def test_there_is_an_engine_to_check():
    assert len(ENGINE_FILES) >= 10 and MODULE_FILES


@pytest.mark.parametrize("path", ENGINE_FILES + MODULE_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_parses_as_python_3_9(path):
    ast.parse(path.read_text(encoding="utf-8"), filename=str(path), feature_version=(3, 9))


@pytest.mark.parametrize("path", ENGINE_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_engine_never_imports_slicer_qt_vtk_torchvision_or_timm(path):
    roots = set(imported_roots(ast.parse(path.read_text(encoding="utf-8"))))
    assert not roots & FORBIDDEN, f"{path.name} imports {sorted(roots & FORBIDDEN)}"
