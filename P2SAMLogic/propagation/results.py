"""What :func:`~.pipeline.propagate` returns: the proposals, the registered prior, the QA report per
segment and per slice (:class:`PropagationResult`), and the Slicer segment tags that carry provenance.

Slices are follow-up slice indices ``k``; areas in mm², volumes in mL; windows and boxes
``(x0, y0, x1, y1)`` in follow-up slice pixels.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Tuple

from ..io.volume import PROPOSAL_STATUS, Segment
from .regcheck import change_cell

@dataclass
class SliceReport:
    """One follow-up slice of one segment.

    Attributes:
        index: follow-up slice index ``k``.
        reference_index: native prior slice used as the reference (None when no model ran).
        status: ``accepted`` (the output has a contour on this slice) or ``rejected`` (empty).
        source: where the contour comes from: ``model`` (the model's proposal, fused with the
            registered prior), ``registered`` (the registered prior: the model was not trusted
            here, or did not run), ``mixed`` (a ring or pieces whose parts differ) or ``absent``.
        qa: 0-1 confidence (see :class:`P2SAMLogic.propagation.decide.SliceDecision`; the lowest over a
            structure's parts).
        flagged: needs a human look; ``reason`` says why.
        area_mm2 / registered_area_mm2: output / registered prior area on this slice.
        agreement: Dice of the model's proposal with the registered prior on this slice.
        presence: Wasserstein ratio foreground/background of the proposal (lower = more like the
            reference structure); NaN when not computed.
        window: the ROI ``(x0, y0, x1, y1)`` in slice pixels; box: the chosen prompt box
            (of the structure's first part).
        followup_reference: the follow-up slice that served as the reference (the second look at
            an untrusted slice, ``followup_references``), else None.
    """

    index: int
    reference_index: Optional[int]
    status: str
    qa: float
    flagged: bool
    reason: str
    area_mm2: float
    registered_area_mm2: float
    source: str = "registered"
    agreement: float = math.nan
    presence: float = math.nan
    predicted_iou: float = math.nan
    window: Optional[List[float]] = None
    box: Optional[List[float]] = None
    followup_reference: Optional[int] = None

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("qa", "area_mm2", "registered_area_mm2", "agreement", "presence", "predicted_iou"):
            v = d[k]
            d[k] = None if v is None or not math.isfinite(v) else round(float(v), 4)
        return d


@dataclass
class SegmentReport:
    """Per-segment summary; ``slices`` lists every processed follow-up slice.

    ``model_share`` is the fraction of the output's non-empty slices whose contour came from the
    model (source ``model``; ``mixed`` counts half): "the model earned its place" on this segment.
    ``change_not_measurable`` says why ``change_percent`` is NaN (None in JSON) when the volumes
    cannot be compared: the structure is cut by a field of view, or its registration failed the
    plausibility check (:mod:`P2SAMLogic.propagation.regcheck`); empty otherwise.
    """

    name: str
    color: Tuple[float, float, float]
    prior_volume_ml: float
    registered_volume_ml: float
    followup_volume_ml: float
    change_percent: float
    slices_processed: int
    slices_rejected: int
    slices_flagged: int
    flagged_slices: List[int]
    shape: str = "filled"
    model_share: float = math.nan
    slices: List[SliceReport] = field(default_factory=list)
    change_not_measurable: str = ""

    def to_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k != "slices"}
        for k in ("prior_volume_ml", "registered_volume_ml", "followup_volume_ml", "change_percent", "model_share"):
            d[k] = round(float(d[k]), 4) if math.isfinite(d[k]) else None
        d["color"] = [round(float(c), 4) for c in self.color]
        d["change_not_measurable"] = self.change_not_measurable or None
        d["slices"] = [s.to_dict() for s in self.slices]
        return d


@dataclass
class PropagationResult:
    """What :func:`propagate` returns; nothing has been written anywhere yet.

    Attributes:
        segments: proposals on the follow-up's geometry, tags carrying provenance and status.
        registered_prior: the prior segments carried onto the follow-up by the registration
            alone (rigid + deformable stage: the floor the output never goes below).
        reports: one per segment.
        provenance: model, checksum, parameters, version, date, status, registration, window.
        timings: wall seconds per stage: ``registration`` (rigid + deformable), ``model_load``,
            ``references`` (resampling the prior onto the follow-up's slice planes), ``encode``
            (the image encoder alone, reference and follow-up crops), ``cluster`` (pooling
            reference features, k-means), ``match`` (part similarity maps, prompt placement),
            ``decode`` (prompt encoder + mask decoder), ``retrieval`` (Wasserstein scores,
            selection), ``decide`` (per-slice decision, fusion), ``cleanup`` (3D clean-up,
            recomposition), ``report``, ``other`` (the rest: cropping, bookkeeping) and ``total``.
        warnings: non-fatal problems (e.g. prior and follow-up of different modality).
        details: per segment, per part: ``registered`` / ``model`` / ``decided`` bool arrays
            ``[k, j, i]`` and the decisions (for benchmarks and overlays; not written anywhere).
    """

    segments: List[Segment]
    registered_prior: List[Segment]
    reports: List[SegmentReport]
    provenance: dict
    timings: Dict[str, float]
    warnings: List[str] = field(default_factory=list)
    details: Dict[str, dict] = field(default_factory=dict, repr=False)

    def report_dict(self) -> dict:
        return {"status": PROPOSAL_STATUS, "provenance": self.provenance,
                "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
                "warnings": list(self.warnings),
                "segments": [r.to_dict() for r in self.reports]}

    def report_table(self) -> str:
        """Plain-text table: one row per segment."""
        head = ("segment", "shape", "prior mL", "follow-up mL", "change %", "slices", "from model", "flagged",
                "flagged slices")
        rows = []
        for r in self.reports:
            share = "n/a" if not math.isfinite(r.model_share) else f"{100 * r.model_share:.0f}%"
            rows.append((r.name, r.shape, f"{r.prior_volume_ml:.2f}", f"{r.followup_volume_ml:.2f}",
                         change_cell(r.change_percent, r.change_not_measurable),
                         str(r.slices_processed), share, str(r.slices_flagged),
                         ",".join(str(k) for k in r.flagged_slices) or "-"))
        widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(head)]
        line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
        out = [line(head), line(["-" * w for w in widths])] + [line(r) for r in rows]
        out.append(f"status: {PROPOSAL_STATUS} — review every flagged slice before clinical use")
        return "\n".join(out)


def segment_tags(provenance: dict, report: Optional[SegmentReport] = None) -> Dict[str, str]:
    """Slicer segment tags carrying provenance (values contain no ``|``, Slicer's tag separator)."""
    model = provenance.get("model") or {}
    tags = {
        "P2SAM.Status": PROPOSAL_STATUS,
        "Segmentation.Status": "inprogress",
        "P2SAM.Method": str(provenance.get("method", "")),
        "P2SAM.Model": str(model.get("name", "none (registration only)")),
        "P2SAM.ModelSHA256": str(model.get("sha256", "")),
        "P2SAM.Version": str(provenance.get("version", "")),
        "P2SAM.Date": str(provenance.get("date", "")),
        "P2SAM.Parameters": json.dumps(provenance.get("parameters", {}), separators=(",", ":"), sort_keys=True),
        "P2SAM.IntensityWindow": json.dumps(provenance.get("intensity", {}).get("followup", {}),
                                            separators=(",", ":")),
    }
    if report is not None:
        tags["P2SAM.FlaggedSlices"] = ",".join(str(k) for k in report.flagged_slices)
    return {k: v.replace("|", "/") for k, v in tags.items()}
