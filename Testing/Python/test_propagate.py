"""3D propagation on simulated follow-ups of the bundled real lung CT crop.

The simulated follow-ups (Testing/Tools/simulate_followup.py) are the prior CT moved
rigidly, deformed smoothly, with the GTV shrunk by 25 % in volume, resampled on another
grid (0.7 x 0.7 x 3 mm instead of 0.57 x 0.57 x 5 mm, other field of view) with noise; the
true follow-up masks come from the same warp (the demo's case). The Dice floors were measured
with this file's code (case sim0 of `Testing/Benchmarks/benchmark_accuracy.py --sets lung-sim`)
and are set a stated tolerance below the measured value.

On this case the registration alone (rigid + demons) reaches Dice 0.990 (GTV) and 0.985 (vertebral
body), and the model's own proposals do not beat it (0.825 and 0.728 on the truth's slices), so the
pipeline keeps the registered contour on every slice (model share 0). The output's Dice is therefore a
test of the registration and the decision rule, not of the model; the model is tested by its own
proposals (`keep_details`): they must reach their measured Dice (a model with random weights gets about a
quarter of it) and stay close to the no-model baseline on the same slices, the registered contour's
filled box or inscribed ellipse, which on this case they do not beat (docs/testing.md).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk

from P2SAMLogic.errors import CancelledError, InputError
from P2SAMLogic.propagation.pipeline import PropagationConfig, fuse_contours, propagate
from P2SAMLogic.io.volume import PROPOSAL_STATUS, Segment, same_geometry
from baselines import dice as np_dice
from baselines import filled_box, inscribed_ellipse

# measured on the default simulation (seed 0 = benchmark_accuracy.py lung-sim case sim0), docs/testing.md
TOLERANCE = 0.03
GTV_DICE_FLOOR = 0.990 - TOLERANCE  # the output; demons registration alone 0.990, rigid 0.854
VERTEBRA_DICE_FLOOR = 0.985 - TOLERANCE  # the output on the label's own slices
RIGID_DICE_FLOOR = 0.75
#: the model's own proposals on the truth's slices (real LiteMedSAM; random weights: see docs/testing.md)
MODEL_PROPOSAL_MEASURED = {"GTV": 0.825, "VertebralBody": 0.728}
MODEL_TOLERANCE = 0.06
#: the no-model baseline on the same slices: the better of the registered contour's filled box (0.795 GTV,
#: 0.693 vertebral body) and its inscribed ellipse (0.838, 0.725). On this case LiteMedSAM's proposals are
#: no better than that ellipse, so the test allows them this much under it (random weights: 0.217, 0.190).
MODEL_UNDER_ELLIPSE_ALLOWED = 0.05


def dice(a: sitk.Image, b: sitk.Image) -> float:
    x = sitk.GetArrayViewFromImage(a).astype(bool)
    y = sitk.GetArrayViewFromImage(b).astype(bool)
    return 2.0 * float((x & y).sum()) / max(1, int(x.sum()) + int(y.sum()))


def segments(masks, names=("GTV", "VertebralBody")):
    colours = {"GTV": (0.9, 0.2, 0.2), "VertebralBody": (0.95, 0.85, 0.55)}
    return [Segment(n, colours[n], masks[n], segment_id=n) for n in names]


@pytest.fixture(scope="module")
def p2sam_run(lung_crop, simulated_followup, litemedsam):
    """One P²SAM propagation of both segments onto the default simulated follow-up, from an empty
    embedding cache: ``(result, progress calls, images encoded)``."""
    from P2SAMLogic.models import EmbeddingCache

    ct, masks = lung_crop
    fu, truth, info = simulated_followup
    calls = []
    saved = litemedsam.cache
    litemedsam.cache = EmbeddingCache()
    before = litemedsam.encode_calls
    try:
        result = propagate(ct, segments(masks), fu, model=litemedsam, keep_details=True,
                           progress=lambda f, m: calls.append((f, m)))
    finally:
        litemedsam.cache = saved
    return result, calls, litemedsam.encode_calls - before


def test_the_models_own_proposals_reach_their_measured_dice(p2sam_run, simulated_followup):
    """The model's raw proposals (before the decision rule), on the slices where the truth and the registered
    contour both are: their Dice reaches the measured value and is at most ``MODEL_UNDER_ELLIPSE_ALLOWED``
    under the registered contour's filled box / inscribed ellipse on the same slices (what a box prompt
    gives without a model). The case where the model beats its no-model baseline is the ring and the two
    pieces of test_propagate_shapes.py."""
    result, _, _ = p2sam_run
    _, truth, _ = simulated_followup
    for name, measured in MODEL_PROPOSAL_MEASURED.items():
        detail = result.details[name]
        (part,) = detail["parts"].values()
        model, registered = part["model"], detail["registered"]
        true = sitk.GetArrayFromImage(truth[name]).astype(bool)
        ks = np.flatnonzero(true.any(axis=(1, 2)) & registered.any(axis=(1, 2)))
        box, ellipse = filled_box(registered[ks]), inscribed_ellipse(registered[ks])
        got = np_dice(model[ks], true[ks])
        baseline = max(np_dice(box, true[ks]), np_dice(ellipse, true[ks]))
        print(f"{name}: model proposals {got:.3f}, registered box/ellipse {baseline:.3f}, "
              f"registered {np_dice(registered[ks], true[ks]):.3f}")
        assert got >= measured - MODEL_TOLERANCE, (name, got)
        assert got >= baseline - MODEL_UNDER_ELLIPSE_ALLOWED, (name, got, baseline)


def test_p2sam_output_reaches_the_dice_floor_on_both_segments(p2sam_run, simulated_followup):
    """The output (registration + decision rule): on this case every slice keeps the registered contour,
    so this tests that the model's weaker proposals do not spoil it, not the model's accuracy."""
    result, _, _ = p2sam_run
    fu, truth, _ = simulated_followup
    by_name = {s.name: s for s in result.segments}
    assert dice(by_name["GTV"].mask, truth["GTV"]) >= GTV_DICE_FLOOR
    # never worse than the registration it started from (the registered prior: rigid + demons)
    for out, reg in zip(result.segments, result.registered_prior):
        assert dice(out.mask, truth[out.name]) >= dice(reg.mask, truth[out.name]) - 0.01, out.name
    # the vertebral body label is threshold-derived and cut by a box (see Testing/Data/lung1_crop/README.md):
    # the model segments the whole vertebral body, also on the slices just beyond the label's extent.
    # On the label's own slices the proposal must agree; beyond them every kept slice must be flagged.
    got = by_name["VertebralBody"].array()
    true = sitk.GetArrayFromImage(truth["VertebralBody"]).astype(bool)
    ks = true.any(axis=(1, 2))
    on_label = 2.0 * (got[ks] & true[ks]).sum() / (got[ks].sum() + true[ks].sum())
    print(f"VertebralBody Dice on the label's slices: {on_label:.3f}")
    assert on_label >= VERTEBRA_DICE_FLOOR
    report = result.reports[1]
    registered = result.registered_prior[1].array().any(axis=(1, 2))
    beyond = [s for s in report.slices if not registered[s.index]]
    assert beyond, "the slice margin beyond the registered extent was not examined"
    for s in beyond:  # either kept (from the model, flagged) or absent
        if s.status == "accepted":
            assert s.flagged and "beyond" in s.reason and s.source == "model"
        else:
            assert s.source == "absent" and not got[s.index].any()


def test_output_is_on_the_followup_grid_with_names_colours_and_provenance(p2sam_run, simulated_followup, litemedsam):
    result, _, _ = p2sam_run
    fu = simulated_followup[0]
    assert [s.name for s in result.segments] == ["GTV", "VertebralBody"]
    assert result.segments[0].color == (0.9, 0.2, 0.2)
    for s in result.segments + result.registered_prior:
        assert same_geometry(s.mask, fu)
    tags = result.segments[0].tags
    assert tags["P2SAM.Status"] == PROPOSAL_STATUS
    assert tags["P2SAM.ModelSHA256"] == litemedsam.sha256
    assert "|" not in "".join(tags.values())
    prov = result.provenance
    assert prov["status"] == PROPOSAL_STATUS and prov["model"]["sha256"] == litemedsam.sha256
    assert prov["intensity"]["followup"]["rule"] == "CT fixed window"
    assert prov["parameters"]["method"] == "p2sam"


def test_report_counts_are_consistent(p2sam_run, simulated_followup):
    result, _, _ = p2sam_run
    fu, truth, info = simulated_followup
    d = result.report_dict()
    assert d["status"] == PROPOSAL_STATUS
    gtv = result.reports[0]
    assert gtv.slices_processed == len(gtv.slices) > 0
    assert gtv.slices_rejected == sum(s.status == "rejected" for s in gtv.slices)
    assert gtv.flagged_slices == [s.index for s in gtv.slices if s.flagged]
    # the GTV shrank by 25 % in volume: the proposal's volume change says so (within 15 points)
    true_change = 100.0 * (info["volume_ratio"]["GTV"] - 1.0)
    assert abs(gtv.change_percent - true_change) < 15.0
    assert "GTV" in result.report_table() and PROPOSAL_STATUS in result.report_table()
    for s in gtv.slices:
        assert 0.0 <= s.qa <= 1.0
        assert s.source in ("model", "registered", "mixed", "absent")
        assert (s.status == "accepted") == (s.source != "absent")
    # the share of slices from the model is what the slices say
    accepted = [s for s in gtv.slices if s.status == "accepted"]
    assert gtv.model_share == pytest.approx(sum(s.source == "model" for s in accepted) / len(accepted))


def test_progress_is_monotonic_and_complete(p2sam_run):
    _, calls, _ = p2sam_run
    fractions = [f for f, _ in calls]
    assert fractions == sorted(fractions)
    assert fractions[-1] == 1.0 and len(calls) > 5


def test_each_slice_and_reference_encoded_once(p2sam_run, lung_crop):
    result, _, encoded = p2sam_run
    slices = sum(r.slices_processed for r in result.reports)
    # one reference per native prior slice holding the structure, each encoded once for all targets
    references = sum(int(sitk.GetArrayViewFromImage(m).any(axis=(1, 2)).sum()) for m in lung_crop[1].values())
    assert encoded == slices + references


@pytest.mark.parametrize("direction", [
    None,
    (1, 0, 0, 0, -1, 0, 0, 0, -1),  # flipped rows and slices
    tuple(sitk.VersorTransform((0, 0, 1), math.radians(25)).GetMatrix()),  # oblique in-plane
    tuple(sitk.VersorTransform((1, 0.3, 0), math.radians(12)).GetMatrix()),  # oblique slices
])
def test_registration_only_propagation_lands_in_physical_space(lung_crop, direction):
    """Whatever the follow-up's orientation, the output sits on its grid and on the true structure."""
    from simulate_followup import simulate_followup

    ct, masks = lung_crop
    fu, truth, _ = simulate_followup(ct, {"GTV": masks["GTV"]}, seed=1, direction=direction, spacing=(0.8, 0.75, 2.5))
    result = propagate(ct, segments(masks, ("GTV",)), fu, config=PropagationConfig(method="rigid"))
    assert same_geometry(result.segments[0].mask, fu)
    assert dice(result.segments[0].mask, truth["GTV"]) >= RIGID_DICE_FLOOR


def test_cancel_stops_cleanly(lung_crop, simulated_followup, litemedsam):
    ct, masks = lung_crop
    fu = simulated_followup[0]
    seen = []

    def cancel():
        seen.append(1)
        return len(seen) > 3

    with pytest.raises(CancelledError):
        propagate(ct, segments(masks, ("GTV",)), fu, model=litemedsam, cancel=cancel)


def test_bad_inputs_name_the_problem(lung_crop, simulated_followup):
    ct, masks = lung_crop
    fu = simulated_followup[0]
    empty = sitk.Image(masks["GTV"].GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(masks["GTV"])
    with pytest.raises(InputError, match="'Empty'.*empty"):
        propagate(ct, [Segment("Empty", (1, 0, 0), empty)], fu, config=PropagationConfig(method="rigid"))
    with pytest.raises(InputError, match="no segment named 'Liver'"):
        propagate(ct, segments(masks, ("GTV",)), fu, config=PropagationConfig(method="rigid", segments=["Liver"]))
    shifted = sitk.Image(masks["GTV"])
    shifted.SetOrigin([v + 1.0 for v in shifted.GetOrigin()])
    with pytest.raises(InputError, match="not on the prior image's voxel grid"):
        propagate(ct, [Segment("GTV", (1, 0, 0), shifted)], fu, config=PropagationConfig(method="rigid"))
    flat = sitk.Image([64, 64, 1], sitk.sitkFloat32)
    with pytest.raises(InputError, match="3D volume"):
        propagate(ct, segments(masks, ("GTV",)), flat, config=PropagationConfig(method="rigid"))
    with pytest.raises(InputError, match="prior_weight"):
        PropagationConfig(prior_weight=2.0).validate()


def test_followup_without_the_structure_is_refused(lung_crop, simulated_followup):
    """A follow-up whose field of view stops short of the structure: an error, not a guess."""
    ct, masks = lung_crop
    fu, truth, _ = simulated_followup
    ks = np.flatnonzero(sitk.GetArrayViewFromImage(truth["GTV"]).any(axis=(1, 2)))
    part = fu[:, :, : max(2, int(ks[0]) - 6)]  # slices well below the GTV only
    with pytest.raises(InputError, match="does not cover segment 'GTV'|overlap"):
        propagate(ct, segments(masks, ("GTV",)), part, config=PropagationConfig(method="rigid"))


def test_modality_mismatch_warns(lung_crop, simulated_followup):
    ct, masks = lung_crop
    fu = simulated_followup[0]
    mr_like = sitk.Cast(sitk.RescaleIntensity(fu, 0.0, 1500.0), sitk.sitkFloat32)
    with pytest.warns(UserWarning, match="CT but follow-up is MR"):
        result = propagate(ct, segments(masks, ("GTV",)), mr_like, config=PropagationConfig(method="rigid"))
    assert any("MR" in w for w in result.warnings)


def test_fuse_contours_is_between_its_inputs():
    yy, xx = np.mgrid[:64, :64]
    big = (yy - 32) ** 2 + (xx - 32) ** 2 <= 20 ** 2
    small = (yy - 32) ** 2 + (xx - 32) ** 2 <= 10 ** 2
    mid = fuse_contours(small, big, 0.5, (1.0, 1.0))
    r = math.sqrt(mid.sum() / math.pi)
    assert 14.0 <= r <= 16.0
    assert (fuse_contours(small, big, 0.0, (1.0, 1.0)) == small).all()
    assert (fuse_contours(small, big, 1.0, (1.0, 1.0)) == big).all()


def test_point_prompt_models_run_through_the_3d_pipeline(lung_crop, simulated_followup, tiny_sam):
    """A SAM-architecture model (points, the paper's cascade) goes through the same pipeline; the tiny
    random SAM checks plumbing only (its masks are meaningless)."""
    ct, masks = lung_crop
    fu = simulated_followup[0]
    result = propagate(ct, segments(masks, ("GTV",)), fu, model=tiny_sam)
    assert same_geometry(result.segments[0].mask, fu)
    assert result.provenance["model"]["prompt_modality"] == "points"
    assert result.reports[0].slices_processed > 0
