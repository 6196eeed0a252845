"""Click correction of one slice (P2SAMLogic.method.interactive) with the real LiteMedSAM.

Data: the follow-up slice of the bundled 4D-Lung pair (512 x 512, its tumour ~43 px wide),
ROI = the tumour box grown by twice its size per side, as P²SAM's search window; and, for
re-propagation, the GTV of the bundled 3D lung1 crop.
"""
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from P2SAMLogic.errors import InputError
from P2SAMLogic.method.interactive import SliceCorrector, mask_box, repropagate_neighbours
from P2SAMLogic.method.roi import roi_context

DATA = Path(__file__).resolve().parents[1] / "Data"
PAIR = DATA / "4dlung_visit_pair"
LUNG1 = DATA / "lung1_crop"


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / max(1.0, float(a.sum() + b.sum()))


@pytest.fixture(scope="module")
def lung_slice():
    """``(values HxW float, truth HxW bool, truth box, ROI)`` of the follow-up slice."""
    values = np.asarray(Image.open(PAIR / "test_image.png"), dtype=np.float32)
    truth = np.asarray(Image.open(PAIR / "test_mask.png")) > 0
    box = mask_box(truth)
    return values, truth, box, roi_context(box, truth.shape, context=2.0, minimum=64)


def corrector(model, lung_slice, box_offset):
    values, truth, box, roi = lung_slice
    return SliceCorrector(model, values, (0.0, 255.0), window=roi, box=box + np.asarray(box_offset, dtype=float))


def test_positive_click_inside_the_structure_keeps_dice_high(litemedsam, lung_slice):
    _, truth, _, _ = lung_slice
    c = corrector(litemedsam, lung_slice, (0, 0, 0, 0))
    before = c.predict()
    encodes = litemedsam.encode_calls
    ys, xs = np.nonzero(truth)
    c.add_click(xs.mean(), ys.mean(), positive=True)
    after = c.predict()
    assert dice(before, truth) > 0.7
    assert dice(after, truth) >= max(0.7, dice(before, truth) - 0.02)
    assert after[int(ys.mean()), int(xs.mean())]
    assert litemedsam.encode_calls == encodes, "a click must reuse the ROI's embedding"


def test_positive_click_on_a_missed_part_adds_it(litemedsam, lung_slice):
    _, truth, _, _ = lung_slice
    c = corrector(litemedsam, lung_slice, (8, 8, -8, -8))  # a box too small: under-segmentation
    before = c.predict()
    missed = truth & ~before
    ys, xs = np.nonzero(missed)
    cy, cx = np.nonzero(truth)[0].mean(), np.nonzero(truth)[1].mean()
    far = int(np.argmax((xs - cx) ** 2 + (ys - cy) ** 2))
    c.add_click(xs[far], ys[far], positive=True)
    after = c.predict()
    assert after[ys[far], xs[far]], "the clicked pixel must be in the mask"
    assert dice(after, truth) >= dice(before, truth) + 0.1


def test_negative_click_removes_a_region(litemedsam, lung_slice):
    _, truth, _, _ = lung_slice
    c = corrector(litemedsam, lung_slice, (-12, -12, 12, 12))  # a box too large: leaks
    before = c.predict()
    wrong = before & ~truth
    assert wrong.sum() > 200, "the oversized box should leak outside the tumour"
    ys, xs = np.nonzero(wrong)
    cy, cx = np.nonzero(truth)[0].mean(), np.nonzero(truth)[1].mean()
    far = int(np.argmax((xs - cx) ** 2 + (ys - cy) ** 2))
    c.add_click(xs[far], ys[far], positive=False)
    after = c.predict()
    assert not after[ys[far], xs[far]]
    assert after.sum() <= 0.9 * before.sum(), "a region, not a pixel, must go"
    assert not (after & ~before).any(), "a negative click only removes"
    assert dice(after, truth) >= dice(before, truth)
    # undo restores the previous mask without encoding again
    encodes = litemedsam.encode_calls
    c.undo_click()
    assert np.array_equal(c.predict(), before)
    assert litemedsam.encode_calls == encodes


def test_clicks_edit_the_current_contour_instead_of_replacing_it(litemedsam, lung_slice):
    """edit_current (the Segment Editor effect on a slice that has a contour): a click inside a good contour
    changes nothing; a click on a missed structure adds it; a negative click carves; undo restores."""
    values, truth, box, roi = lung_slice
    good = truth.copy()  # the true contour itself
    c = SliceCorrector(litemedsam, values, (0.0, 255.0), window=roi, box=box, initial_mask=good, edit_current=True)
    assert np.array_equal(c.predict(), good)
    ys, xs = np.nonzero(truth)
    c.add_click(xs.mean(), ys.mean(), positive=True)
    assert np.array_equal(c.predict(), good), "a positive click inside the contour must not change it"
    # half of the structure missing: a positive click on the missing half brings it back
    half = truth.copy()
    cx = int(np.median(xs))
    half[:, cx:] = False
    c2 = SliceCorrector(litemedsam, values, (0.0, 255.0), window=roi, box=box, initial_mask=half, edit_current=True)
    right = truth & ~half
    ry, rx = np.nonzero(right)
    c2.add_click(float(np.median(rx)), float(np.median(ry)), positive=True)
    added = c2.predict()
    assert (added & half).sum() == half.sum(), "what was there stays"
    assert dice(added, truth) >= dice(half, truth) + 0.1
    # a negative click on the contour removes the part around it
    c.add_click(float(xs.min() + 1), float(ys[np.argmin(xs)]), positive=False)
    carved = c.predict()
    assert carved.sum() < good.sum() and not carved[ys[np.argmin(xs)], xs.min() + 1]
    c.undo_click()
    c.undo_click()
    assert np.array_equal(c.predict(), good)


def test_click_outside_the_roi_moves_the_roi(fresh_tiny_sam, lung_slice):
    """Plumbing only (tiny random SAM): the ROI grows to hold the click, and is encoded once more."""
    values, truth, box, roi = lung_slice
    c = corrector(fresh_tiny_sam, lung_slice, (0, 0, 0, 0))
    c.predict()
    assert fresh_tiny_sam.encode_calls == 1
    x, y = roi[2] + 5, (box[1] + box[3]) / 2
    c.add_click(x, y, positive=True)
    c.predict()
    x0, y0, x1, y1 = c.window
    assert x0 <= x < x1 and y0 <= y < y1
    assert fresh_tiny_sam.encode_calls == 2
    c.predict()
    assert fresh_tiny_sam.encode_calls == 2


def test_bad_clicks_and_inputs_are_named(tiny_sam, lung_slice):
    values, truth, box, roi = lung_slice
    c = SliceCorrector(tiny_sam, values, (0.0, 255.0), window=roi, box=box)
    with pytest.raises(InputError, match="click"):
        c.add_click(values.shape[1] + 3, 10)
    with pytest.raises(InputError, match="ROI window"):
        SliceCorrector(tiny_sam, values, (0.0, 255.0), window=(0, 0, 600, 100), box=box)
    with pytest.raises(InputError, match="intensity window"):
        SliceCorrector(tiny_sam, values, (10.0, 10.0), window=roi, box=box)
    empty = SliceCorrector(tiny_sam, values, (0.0, 255.0))
    assert not empty.predict().any(), "no prompt, no mask"


def test_repropagate_from_a_corrected_slice(litemedsam):
    """GTV of lung1 (crop slices 11-13): slice 12's true contour re-segments 11 and 13."""
    ct = sitk.ReadImage(str(LUNG1 / "prior_ct.nrrd"))
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(LUNG1 / "prior_labels.nrrd")))
    volume = sitk.GetArrayFromImage(ct).astype(np.float32)
    gtv = labels == 1
    out = repropagate_neighbours(litemedsam, volume, (-910.0, 590.0), 12, gtv[12], neighbours=1,
                                 spacing_xy=ct.GetSpacing()[:2], max_parts=2)
    assert sorted(out) == [11, 13]
    scores = {k: dice(m, gtv[k]) for k, m in out.items()}
    assert min(scores.values()) >= 0.4, scores
    assert np.mean(list(scores.values())) >= 0.6, scores
    with pytest.raises(InputError, match="empty"):
        repropagate_neighbours(litemedsam, volume, (-910.0, 590.0), 0, gtv[0])


def test_intensity_window_from_a_provenance_record():
    from P2SAMLogic.method.interactive import as_intensity_window

    w = as_intensity_window({"low": -910.0, "high": 590.0, "rule": "CT default"})
    assert (w.low, w.high, w.rule) == (-910.0, 590.0, "CT default")
    assert (as_intensity_window((-100, 100)).low, as_intensity_window([-100, 100]).high) == (-100.0, 100.0)
    with pytest.raises(InputError, match="intensity window"):
        as_intensity_window({"low": 5.0})
    with pytest.raises(InputError, match="high must exceed low"):
        as_intensity_window({"low": 5.0, "high": 1.0})
