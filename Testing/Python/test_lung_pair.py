"""The real 4D-Lung visit pair: prior-visit tumour mask carried onto the follow-up slice.

The floor below was measured with the default configuration (LiteMedSAM, search window of
context 2 around the prior position, rank-sum retrieval): Dice 0.526 on 2026-11-25
(`python Testing/Benchmarks/benchmark_2d.py --variants p2sam`). The floor sits a little under
it so that a regression of the method fails, not a last-digit change.
"""
from pathlib import Path

import numpy as np
import pytest

from P2SAMLogic.io.images2d import read_image, read_mask
from P2SAMLogic.method.segmenter import P2SAMConfig, P2SAMSegmenter, mask_box

LUNG = Path(__file__).resolve().parents[1] / "Data" / "4dlung_visit_pair"
DICE_FLOOR = 0.45


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / max(1.0, float(a.sum() + b.sum()))


@pytest.fixture(scope="module")
def pair():
    return (read_image(LUNG / "ref_image.png"), read_mask(LUNG / "ref_mask.png"),
            read_image(LUNG / "test_image.png"), read_mask(LUNG / "test_mask.png"))


def test_follow_up_tumour_reaches_the_measured_dice_floor(litemedsam, pair):
    ref_img, ref_mask, img, truth = pair
    seg = P2SAMSegmenter(litemedsam, P2SAMConfig())
    ref = seg.prepare_reference(ref_img, ref_mask)
    result = seg.segment(ref, img)
    assert result.mask.shape == truth.shape
    assert dice(result.mask, truth) >= DICE_FLOOR, result.summary()["chosen"]
    # the prompts are reported in the target's full-image pixels, inside the search window
    x0, y0, x1, y1 = result.window
    bx = result.chosen.box
    assert x0 <= bx[0] < bx[2] <= x1 and y0 <= bx[1] < bx[3] <= y1
    assert np.isfinite(result.score)


def test_oracle_box_ceiling_is_what_the_benchmark_reports(litemedsam, pair):
    """The box of the true follow-up mask, decoded on the whole slice: the ceiling the README quotes (0.579)."""
    _, _, img, truth = pair
    seg = P2SAMSegmenter(litemedsam, P2SAMConfig())
    result = seg.segment_with_box(img, mask_box(truth))
    assert dice(result.mask, truth) >= 0.55
