"""One prior onto several follow-ups in one run (e.g. the weekly CBCTs of a treatment course).

:func:`propagate_series` loads the model once and calls :func:`P2SAMLogic.propagation.pipeline.propagate`
once per follow-up with that loaded model (its embedding cache is shared by the runs). Each
follow-up is taken from the prior (default), or, with ``chain=True``, from the result of the
visit before it: visit ``n`` is then propagated from visit ``n - 1``'s image and proposal.
The outcome is one :class:`~P2SAMLogic.propagation.pipeline.PropagationResult` per follow-up and one
combined report.

Frames: every image is a ``SimpleITK.Image`` in LPS mm; each result's segments lie on its own
follow-up's grid. Nothing is written here.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence, Union

import SimpleITK as sitk

from .. import __version__
from ..errors import InputError
from .pipeline import PropagationConfig, PropagationResult, needs_model, propagate
from .regcheck import change_cell
from ..io.volume import PROPOSAL_STATUS, Segment, VolumeSource

ProgressCallback = Callable[[float, str], None]
CancelCallback = Callable[[], bool]


@dataclass
class SeriesResult:
    """What :func:`propagate_series` returns.

    Attributes:
        results: one per follow-up, in the order given.
        names: the follow-ups' names (file stems, node names...), same order.
        priors: what each follow-up was propagated from: ``"prior"`` or the name of the visit before.
        chain: whether the follow-ups were chained.
        model_loads: how many times a model was loaded for the whole run (1, or 0 for ``method="rigid"``
            or a model object given by the caller).
        seconds: wall time of the whole run.
    """

    results: List[PropagationResult]
    names: List[str]
    priors: List[str]
    chain: bool
    model_loads: int
    seconds: float
    warnings: List[str] = field(default_factory=list)

    def report_dict(self) -> dict:
        """The combined report: per follow-up its full report, plus a per-segment volume course."""
        course = {}
        for name, result in zip(self.names, self.results):
            for r in result.reports:
                entry = course.setdefault(r.name, {"prior_volume_ml": _round(r.prior_volume_ml), "visits": []})
                entry["visits"].append({"followup": name, "volume_ml": _round(r.followup_volume_ml),
                                        "change_percent": _round(r.change_percent),
                                        "change_not_measurable": r.change_not_measurable or None,
                                        "slices_flagged": r.slices_flagged})
        return {"status": PROPOSAL_STATUS, "tool": "p2sam propagate (series)", "version": __version__,
                "chain": self.chain, "model_loads": self.model_loads, "seconds": round(self.seconds, 2),
                "warnings": list(self.warnings),
                "course": course,
                "followups": [{"name": n, "propagated_from": p, "report": r.report_dict()}
                              for n, p, r in zip(self.names, self.priors, self.results)]}

    def report_table(self) -> str:
        """Plain text: one row per (segment, follow-up) with volume, change against the prior, flags."""
        head = ("segment", "follow-up", "from", "mL", "change %", "flagged slices")
        rows = []
        for name, prior, result in zip(self.names, self.priors, self.results):
            for r in result.reports:
                change = change_cell(r.change_percent, r.change_not_measurable)
                rows.append((r.name, name, prior, f"{r.followup_volume_ml:.2f}", change,
                             ",".join(str(k) for k in r.flagged_slices) or "-"))
        rows.sort(key=lambda row: row[0])  # segment by segment, visits in order
        widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(head)]

        def line(cells):
            return "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()

        out = [line(head), line(["-" * w for w in widths])] + [line(r) for r in rows]
        out.append(f"status: {PROPOSAL_STATUS} — review every flagged slice before clinical use")
        return "\n".join(out)


def _round(value: float) -> Optional[float]:
    return round(float(value), 4) if math.isfinite(value) else None


def _scaled(progress: Optional[ProgressCallback], n: int, total: int, name: str) -> Optional[ProgressCallback]:
    if progress is None:
        return None

    def report(fraction: float, message: str) -> None:
        progress((n + min(1.0, max(0.0, fraction))) / total, f"follow-up {n + 1}/{total} ({name}): {message}")

    return report


def propagate_series(prior_image: sitk.Image, prior_segments: Sequence[Segment], followups: Sequence[sitk.Image], *,
                     model: Union[str, object] = "litemedsam", model_type: Optional[str] = None,
                     device: str = "auto", config: Optional[PropagationConfig] = None, chain: bool = False,
                     names: Optional[Sequence[str]] = None, prior_source: Optional[VolumeSource] = None,
                     followup_sources: Optional[Sequence[Optional[VolumeSource]]] = None,
                     progress: Optional[ProgressCallback] = None,
                     cancel: Optional[CancelCallback] = None) -> SeriesResult:
    """Propagate ``prior_segments`` onto each image of ``followups``, loading the model once.

    Args:
        prior_image: the prior scan (3D, LPS); prior_segments: its segments (masks on its grid).
        followups: the follow-up scans, in visit order (each 3D, any grid).
        model: ``"litemedsam"``, a SAM checkpoint path (loaded once here, with ``model_type`` and
            ``device``), or an already loaded model (used as is).
        config: :class:`PropagationConfig` for every follow-up (``segments`` selects the prior's).
        chain: False (default): every follow-up from the prior. True: follow-up ``n`` from the
            image and result of follow-up ``n - 1`` (the first one from the prior).
        names: one name per follow-up for messages and the report (default ``"follow-up 1"``...).
        prior_source, followup_sources: where the images came from (messages, provenance).
        progress: ``(fraction 0-1 of the whole series, message)``; cancel: polled, True stops.
    Returns:
        :class:`SeriesResult` with one result per follow-up.
    Raises:
        InputError: no follow-up, names/sources of the wrong length, a bad input of any run (the
            message names the follow-up), or in chained mode a segment that the previous visit's
            proposal left empty (it cannot be the next prior).
        CancelledError: ``cancel`` returned True.
    """
    started = time.perf_counter()
    followups = list(followups)
    if not followups:
        raise InputError("follow-ups", "no follow-up image given")
    names = list(names) if names is not None else [f"follow-up {n + 1}" for n in range(len(followups))]
    sources = list(followup_sources) if followup_sources is not None else [None] * len(followups)
    if len(names) != len(followups) or len(sources) != len(followups):
        raise InputError("follow-ups", f"{len(followups)} follow-ups but {len(names)} names and "
                                       f"{len(sources)} sources")
    cfg = (config or PropagationConfig()).validate()
    loads = 0
    net = model
    if needs_model(cfg.method) and isinstance(model, str):
        from .. import models

        if progress is not None:
            progress(0.0, "loading the model")
        net = models.load_model(model, model_type=model_type, device=device)
        loads = 1
    results: List[PropagationResult] = []
    priors: List[str] = []
    warnings: List[str] = []
    for n, (followup, name, source) in enumerate(zip(followups, names, sources)):
        if chain and n > 0:
            previous = results[-1]
            empty = [s.name for s in previous.segments if not s.array().any()]
            if empty:
                raise InputError(names[n - 1], f"the proposal for {', '.join(repr(e) for e in empty)} is empty on "
                                               f"this follow-up, so it cannot be the prior of '{name}'; propagate "
                                               "each follow-up from the prior instead (no chaining)")
            run_prior, run_segments, run_source = followups[n - 1], previous.segments, sources[n - 1]
            run_cfg = dataclasses.replace(cfg, segments=None)  # the previous result holds just those
            priors.append(names[n - 1])
        else:
            run_prior, run_segments, run_source, run_cfg = prior_image, list(prior_segments), prior_source, cfg
            priors.append("prior")
        try:
            result = propagate(run_prior, run_segments, followup, model=net, device=device, config=run_cfg,
                               prior_source=run_source, followup_source=source,
                               progress=_scaled(progress, n, len(followups), name), cancel=cancel)
        except InputError as exc:
            if name in str(exc):
                raise
            raise InputError(name, str(exc)) from None
        results.append(result)
        warnings += [f"{name}: {w}" for w in result.warnings]
    if progress is not None:
        progress(1.0, "done")
    return SeriesResult(results, names, priors, bool(chain), loads, time.perf_counter() - started, warnings)
