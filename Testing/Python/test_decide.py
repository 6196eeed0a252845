"""The per-slice decision between the model's proposal and the registered prior (P2SAMLogic.propagation.decide)."""
from __future__ import annotations

import math

import numpy as np

from P2SAMLogic.propagation.decide import DecisionRule, decide_part, fuse_contours
from P2SAMLogic.propagation.slices import SliceProposal

SHAPE = (7, 48, 48)
SPACING = (3.0, 1.0, 1.0)


def disc(cy, cx, r):
    yy, xx = np.mgrid[: SHAPE[1], : SHAPE[2]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def proposal(k, mask, iou=0.95, score=0.9, prior_score=1.0, background=4.0):
    """A proposal on the whole slice (window = the slice); by default its features are a little more like
    the reference than the registered contour's (distance ratio 0.9)."""
    return SliceProposal(k=k, reference=k, window=np.array([0.0, 0.0, SHAPE[2], SHAPE[1]]), mask=mask,
                         predicted_iou=iou, score=score, background=background, prior_score=prior_score,
                         prior_background=4.0, box=None)


def registered_volume(first=2, last=4):
    reg = np.zeros(SHAPE, dtype=bool)
    for k in range(first, last + 1):
        reg[k] = disc(24, 24, 10)
    return reg


def test_trusted_proposals_are_kept_and_untrusted_ones_keep_the_registration():
    reg = registered_volume(1, 5)
    props = {k: proposal(k, disc(24, 24, 9)) for k in range(1, 6)}
    props[2] = proposal(2, disc(24, 25, 9))  # agrees, confident, more like the reference: the model's own
    props[3] = proposal(3, disc(8, 8, 6), iou=0.97)  # confident but elsewhere: registered
    props[4] = proposal(4, disc(24, 24, 9), iou=0.4)  # in place but unsure: registered
    out, decisions, model = decide_part(props, reg, DecisionRule(), SPACING)
    assert decisions[2].source == "model"
    assert (out[2] == props[2].mask).all()  # part median ratio 0.9 <= 0.95: no fusion
    assert decisions[3].source == "registered" and "overlap" in decisions[3].reason
    assert decisions[4].source == "registered" and "predicted IoU" in decisions[4].reason
    assert (out[3] == reg[3]).all() and (out[4] == reg[4]).all()
    # the raw proposals are kept for inspection
    assert (model[3] == props[3].mask).all()


def test_the_part_gate_weighs_the_registration_by_how_the_model_compares_with_it():
    """The median distance ratio over the part's slices sets the registered contour's weight: 0 at 0.95,
    0.5 at 1.0, 1 (the registration everywhere, flagged where the model disagrees) at 1.05 and above."""
    reg = registered_volume(1, 5)
    model_mask = disc(24, 27, 8)
    for ratio, weight in ((0.9, 0.0), (1.0, 0.5)):
        props = {k: proposal(k, model_mask, score=ratio) for k in range(1, 6)}
        out, decisions, _ = decide_part(props, reg, DecisionRule(), SPACING)
        assert decisions[3].source == "model"
        assert (out[3] == fuse_contours(model_mask, reg[3], weight, SPACING[1:])).all()
    props = {k: proposal(k, model_mask, score=1.1) for k in range(1, 6)}
    out, decisions, _ = decide_part(props, reg, DecisionRule(), SPACING)
    assert all(decisions[k].source == "registered" and not decisions[k].discounted for k in range(1, 6))
    # the slices say how far the model confirms the registration (its Dice with it), so they can be flagged
    assert all(math.isfinite(decisions[k].qa) and decisions[k].qa == decisions[k].agreement for k in range(1, 6))
    assert "does not see this structure" in decisions[3].reason
    assert (out == reg).all()


def test_the_structure_ends_where_the_model_loses_confidence_at_the_ends_of_the_extent():
    """A heart base that moved out of the slice, a tumour shorter along the slices: low predicted IoU at
    an end of the registered extent empties the slice, walking inward until a confident slice."""
    reg = registered_volume(1, 5)
    ious = {1: 0.5, 2: 0.7, 3: 0.95, 4: 0.6, 5: 0.9}  # slice 4 is unsure but not at an end
    props = {k: proposal(k, disc(24, 24, 9), iou=v) for k, v in ious.items()}
    out, decisions, _ = decide_part(props, reg, DecisionRule(), SPACING)
    assert [decisions[k].source for k in range(1, 6)] == ["absent", "absent", "model", "model", "model"]
    assert "ends before the registered extent" in decisions[1].reason
    assert not out[1].any() and not out[2].any() and out[3].any() and out[5].any()
    # never every slice: one stays even when all are unsure
    props = {k: proposal(k, disc(24, 24, 9), iou=0.3) for k in range(1, 6)}
    out, decisions, _ = decide_part(props, reg, DecisionRule(), SPACING)
    assert out.any()
    # without the fallback nothing is emptied
    out, decisions, _ = decide_part(props, reg, DecisionRule(mode="model"), SPACING)
    assert all(out[k].any() for k in range(1, 6))


def test_a_structure_that_really_shrank_is_trusted():
    """Half the registered area, inside it: real change, not a wandering proposal."""
    reg = registered_volume()
    props = {k: proposal(k, disc(24, 24, 7)) for k in range(2, 5)}
    _, decisions, _ = decide_part(props, reg, DecisionRule(), SPACING)
    assert decisions[3].source == "model", decisions[3].reason
    assert decisions[3].agreement < 0.7  # the Dice with the registration is low: it changed


def test_a_ring_outer_region_does_not_take_the_cavity_inside_it():
    """The outer region of a ring is the filled structure; a proposal of the bright cavity inside it
    lies inside the registered contour (overlap 1) at a fraction of its area: kept registered for an
    outer region, trusted for a whole structure (which may really have shrunk)."""
    from P2SAMLogic.propagation.pipeline import PropagationConfig

    reg = registered_volume()
    props = {3: proposal(3, disc(24, 24, 6))}
    cfg = PropagationConfig()
    _, outer, _ = decide_part(props, reg, cfg.rule("outer"), SPACING)
    _, whole, _ = decide_part(props, reg, cfg.rule("whole"), SPACING)
    assert outer[3].source == "registered" and "area" in outer[3].reason
    assert whole[3].source == "model"
    # a proposal of about the registered size is trusted for the outer region too
    _, near, _ = decide_part({3: proposal(3, disc(24, 24, 9.5))}, reg, cfg.rule("outer"), SPACING)
    assert near[3].source == "model", near[3].reason


def test_a_proposal_less_like_the_reference_than_the_registration_is_not_trusted():
    reg = registered_volume()
    props = {k: proposal(k, disc(24, 24, 9)) for k in range(2, 5)}
    props[3] = proposal(3, disc(24, 24, 9), score=1.3, prior_score=1.0)
    _, decisions, _ = decide_part(props, reg, DecisionRule(), SPACING)
    assert decisions[3].source == "registered" and "less like the reference" in decisions[3].reason
    assert decisions[2].source == "model"


def test_without_fallback_every_non_empty_proposal_is_kept():
    reg = registered_volume()
    props = {3: proposal(3, disc(8, 8, 6), iou=0.2)}
    out, decisions, _ = decide_part(props, reg, DecisionRule(mode="model", prior_weight=0.0), SPACING)
    assert decisions[3].source == "model" and (out[3] == props[3].mask).all()


def test_beyond_the_registered_extent_only_a_structure_like_proposal_next_to_a_kept_slice_stays():
    reg = registered_volume()
    props = {k: proposal(k, disc(24, 24, 11.5)) for k in range(2, 5)}  # the structure grew: 1.3x the area
    props[1] = proposal(1, disc(24, 24, 6), score=1.0, background=4.0)  # presence 0.25: kept
    props[0] = proposal(0, disc(24, 24, 5), score=1.0, background=4.0)  # kept (neighbour kept)
    props[5] = proposal(5, disc(24, 24, 6), score=3.5, background=4.0)  # presence 0.875: absent
    props[6] = proposal(6, disc(24, 24, 6), score=1.0, background=4.0)  # like it, but neighbour 5 was not kept
    out, decisions, _ = decide_part(props, reg, DecisionRule(), SPACING)
    assert [decisions[k].source for k in range(7)] == ["model", "model", "model", "model", "model", "absent", "absent"]
    assert "neighbour" in decisions[6].reason and "presence" in decisions[5].reason
    assert not out[5].any() and not out[6].any() and out[1].any()
    assert all(0.0 <= d.qa <= 1.0 for d in decisions.values() if math.isfinite(d.qa))


def test_without_growth_at_an_end_nothing_beyond_the_registered_extent_is_added():
    """A look-alike next to the structure (the next vertebra) passes the presence check; without growth at
    the registered prior's end slice there is no evidence that the structure reaches it."""
    reg = registered_volume()
    props = {k: proposal(k, disc(24, 24, 10)) for k in range(2, 5)}  # same size as registered
    props[1] = proposal(1, disc(24, 24, 10), score=1.0, background=4.0)  # presence 0.25: looks like it
    props[5] = proposal(5, disc(24, 24, 10), score=1.0, background=4.0)
    out, decisions, _ = decide_part(props, reg, DecisionRule(), SPACING)
    assert decisions[1].source == "absent" and decisions[5].source == "absent"
    assert "no growth" in decisions[1].reason and not out[1].any() and not out[5].any()
    # without the fallback (mode "model") the look-alike is kept, as before this rule
    _, loose, _ = decide_part(props, reg, DecisionRule(mode="model"), SPACING)
    assert loose[1].source == "model" and loose[5].source == "model"


def test_empty_proposal_inside_the_extent_keeps_the_registration():
    reg = registered_volume()
    props = {3: proposal(3, np.zeros(SHAPE[1:], dtype=bool))}
    out, decisions, _ = decide_part(props, reg, DecisionRule(), SPACING)
    assert decisions[3].source == "registered" and "nothing" in decisions[3].reason
    assert (out[3] == reg[3]).all()
    # registered slices the model did not process keep the registration too
    assert decisions[2].source == "registered" and (out[2] == reg[2]).all()
