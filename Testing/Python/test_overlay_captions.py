"""The overlay montage: flagged slices first, each tile saying where its contour came from.

The slice reports are made by the engine's own report stage (``build_report``) from per-slice decisions,
so the captions are checked against the reasons the engine really writes.
"""
from __future__ import annotations

import math

import numpy as np
import SimpleITK as sitk

from P2SAMLogic.propagation.decide import SliceDecision
from P2SAMLogic.propagation.pipeline import PropagationConfig, _PartOutcome, build_report
from P2SAMLogic.propagation.report import montage_slices, slice_origin
from P2SAMLogic.propagation.structures import Part, StructurePlan
from P2SAMLogic.io.volume import Segment


def _report(name: str, decisions, output_slices, registered_slices, n_slices: int = 8):
    """A :class:`SegmentReport` from ``build_report``: a 20 x 20 square on the given slices."""
    shape = (n_slices, 32, 32)
    registered = np.zeros(shape, bool)
    output = np.zeros(shape, bool)
    for k in registered_slices:
        registered[k, 6:26, 6:26] = True
    for k in output_slices:
        output[k, 6:26, 6:26] = True
    img = sitk.GetImageFromArray(registered.astype(np.uint8))
    img.SetSpacing((1.0, 1.0, 3.0))
    seg = Segment(name, (1.0, 0.0, 0.0), img)
    plan = StructurePlan(name, [Part(name, "whole", 0, img)])
    outcome = _PartOutcome(registered, output, None, {d.k: d for d in decisions}, {})
    return build_report(seg, output, registered, plan, {name: outcome}, PropagationConfig(), (1.0, 1.0, 3.0))


def _decision(k, source, agreement, reason=""):
    return SliceDecision(k, source, reason, agreement, agreement if source == "registered" else 0.9)


def test_each_slice_says_where_its_contour_came_from():
    rep = _report("GTV", [
        _decision(1, "model", 0.85),
        _decision(2, "registered", 0.30, "predicted IoU 0.40 < 0.60"),  # kept, the model disagrees
        _decision(3, "registered", 0.92, "predicted IoU 0.50 < 0.60"),  # kept, the model agrees
        _decision(4, "absent", math.nan, "no structure"),
    ], output_slices=[1, 2, 3], registered_slices=[1, 2, 3, 4])
    words = {s.index: slice_origin(s) for s in rep.slices}
    assert words == {1: "model", 2: "registration (model not trusted)", 3: "registration (model agrees)",
                     4: "absent"}
    assert [s.index for s in rep.slices if s.flagged] == [2, 4]


def test_registration_only_slices_say_registration():
    rep = _report("Cord", [], output_slices=[2, 3], registered_slices=[2, 3])
    assert [slice_origin(s) for s in rep.slices] == ["registration", "registration"]
    assert not any(s.flagged for s in rep.slices)


def test_flagged_slices_of_every_segment_come_first():
    gtv = _report("GTV", [_decision(k, "model", 0.9) for k in range(1, 7) if k != 5]
                  + [_decision(5, "registered", 0.2, "predicted IoU 0.30 < 0.60")]
                  + [_decision(k, "absent", math.nan, "no structure") for k in (0, 7)],  # empty, not flagged
                  output_slices=range(1, 7), registered_slices=range(1, 7))
    body = _report("VertebralBody", [_decision(k, "registered", 0.9, "predicted IoU 0.5 < 0.6") for k in (2, 3, 4)]
                   + [_decision(6, "registered", 0.1, "predicted IoU 0.2 < 0.6")],
                   output_slices=[2, 3, 4, 6], registered_slices=[2, 3, 4, 6])
    order = [(n, s.index, s.flagged) for n, s in montage_slices([gtv, body], max_tiles=8)]
    assert order[:2] == [(0, 5, True), (1, 6, True)]
    assert not any(flag for _, _, flag in order[2:])
    # then the others, per segment in slice order: 4 tiles a segment, the GTV's 3 others spread over its 5
    # slices with a contour (its empty slices 0 and 7 only if room were left)
    assert [k for n, k, _ in order[2:] if n == 0] == [1, 3, 6]
    assert [k for n, k, _ in order[2:] if n == 1] == [2, 3, 4]
