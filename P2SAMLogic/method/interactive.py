"""Correct one follow-up slice with clicks, on top of P²SAM's own prompts.

The engine side of the Slicer Segment Editor effect "P²SAM" (it never imports Slicer).
For one follow-up slice, :class:`SliceCorrector` encodes the slice's region of interest
(ROI) once -- the same crop :func:`P2SAMLogic.propagation.pipeline.propagate` encoded, so a model that
already propagated hits its embedding cache -- and re-decodes every time the user adds a
positive or negative click. :func:`repropagate_neighbours` then uses a corrected slice as
the reference for the slices next to it.

Frames (as in :mod:`P2SAMLogic.propagation.pipeline`): a slice is an ``H x W`` array indexed
``[row, column]`` = ``[j, i]`` of the volume's slice ``k``; points are ``(x, y)`` =
``(column, row)`` in that slice's pixels; boxes and ROI windows are ``(x0, y0, x1, y1)``
in the same pixels (``x1``, ``y1`` exclusive).

How clicks act. LiteMedSAM was trained with box prompts only, so its decoder barely
reacts to points. The clicks therefore act on the prompts *and* on the result, the same
way for every model:

* the decoder gets P²SAM's box, grown to include every positive click; models whose
  prompts are points (SAM) also get every click as a point prompt (for LiteMedSAM they
  only perturbed the box's mask: measured on the 4D-Lung pair);
* a positive click the decoded mask still misses gets a second decode with a box of the
  same size centred on the click; the part of that mask connected to the click is added;
* a negative click removes the part of the mask closer to it than to any positive cue
  (the positive clicks and the box centre): a nearest-cue split of the mask, so the
  clicked pixel and its surroundings always go, and the rest stays.

With ``edit_current`` (what the Segment Editor effect uses when the slice already has a
contour) the clicks edit that contour instead of replacing it by the box's decode: a positive
click inside it changes nothing, one outside adds the structure under the click (the decode of
a structure-sized box centred on it), a negative click carves as above. The proposal on a slice
may be the registered contour (the model was not trusted there) or a fusion of the model's
proposal with it; re-decoding P²SAM's box would replace that contour with the raw model's.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from scipy import ndimage

from ..errors import CancelledError, InputError
from ..io.intensity import IntensityWindow
from ..models.base import Embedding, PromptableModel
from .roi import roi_context, roi_mm
from .segmenter import box_region, mask_box, union_region

WindowLike = Union[IntensityWindow, Tuple[float, float], Sequence[float], Dict[str, object]]


@dataclass(frozen=True)
class Click:
    """One user click: ``(x, y)`` in slice pixels (column, row); ``positive`` = belongs to the structure."""

    x: float
    y: float
    positive: bool = True


def as_intensity_window(intensity: WindowLike) -> IntensityWindow:
    """An :class:`IntensityWindow` from itself, from ``(low, high)`` scanner units, or from the
    ``{"low": ..., "high": ..., "rule": ...}`` record of a propagation's provenance."""
    if isinstance(intensity, IntensityWindow):
        return intensity
    if isinstance(intensity, dict):
        if "low" not in intensity or "high" not in intensity:
            raise InputError("intensity window", f"{intensity} has no 'low' and 'high'")
        low, high = float(intensity["low"]), float(intensity["high"])
        if not high > low:
            raise InputError("intensity window", f"({low}, {high}): high must exceed low")
        return IntensityWindow(low, high, str(intensity.get("rule", "given window")))
    low, high = float(intensity[0]), float(intensity[1])
    if not high > low:
        raise InputError("intensity window", f"({low}, {high}): high must exceed low")
    return IntensityWindow(low, high, "given window")


def _union_box(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.array([min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])], dtype=np.float64)


def _clip_box(box: np.ndarray, shape: Tuple[int, int]) -> np.ndarray:
    h, w = shape
    x0, y0 = np.clip(box[0], 0, w - 1), np.clip(box[1], 0, h - 1)
    x1, y1 = np.clip(box[2], x0 + 1, w), np.clip(box[3], y0 + 1, h)
    return np.array([x0, y0, x1, y1], dtype=np.float64)


def _component_at(mask: np.ndarray, x: int, y: int) -> np.ndarray:
    """The connected component of ``mask`` (bool ``h x w``) holding pixel ``(x, y)``; ``mask[y, x]`` must be set."""
    labels, _ = ndimage.label(mask)
    return labels == labels[y, x]


class SliceCorrector:
    """Re-segment one follow-up slice from P²SAM's box plus the user's clicks.

    Args:
        model: a loaded :class:`PromptableModel` (pass the one that propagated, to reuse its
            cached ROI embedding).
        slice_values: float ``H x W`` scanner values of the follow-up slice, ``[row, column]``.
        intensity: the window that maps scanner values to the model's 8-bit input; use the
            one in the propagation's provenance (``provenance["intensity"]["followup"]``)
            so the crop is byte-identical to what was propagated.
        window: the ROI ``(x0, y0, x1, y1)`` P²SAM searched on this slice (its
            ``SliceReport.window``). None: a square around ``box`` (or ``initial_mask``, or
            the first positive click) grown by its own size on each side.
        box: P²SAM's chosen prompt box on this slice (``SliceReport.box``). None: the box of
            ``initial_mask``, else none until a positive click arrives.
        initial_mask: bool ``H x W``, the slice's current mask (returned while there is no prompt).
        edit_current: the clicks edit ``initial_mask`` (when it is not empty) instead of replacing
            it with the decode of the prompt box (see the module docstring).

    A click outside the ROI moves the ROI to include it (one more encode). Everything else
    reuses the one embedding: :meth:`predict` costs decoder calls only.
    """

    #: pixels added around a positive click when it grows the box
    CLICK_MARGIN_PX = 3.0

    def __init__(self, model: PromptableModel, slice_values: np.ndarray, intensity: WindowLike,
                 window: Optional[Sequence[float]] = None, box: Optional[Sequence[float]] = None,
                 initial_mask: Optional[np.ndarray] = None, edit_current: bool = False) -> None:
        values = np.asarray(slice_values)
        if values.ndim != 2 or min(values.shape) < 2:
            raise InputError("slice", f"expected an H x W slice, got shape {values.shape}")
        self.model = model
        self.values = values
        self.shape: Tuple[int, int] = (int(values.shape[0]), int(values.shape[1]))
        self.intensity = as_intensity_window(intensity)
        self.initial_mask = None
        if initial_mask is not None:
            self.initial_mask = np.asarray(initial_mask).astype(bool)
            if self.initial_mask.shape != self.shape:
                raise InputError("initial mask", f"shape {self.initial_mask.shape} differs from the slice's {self.shape}")
        self.box: Optional[np.ndarray] = None
        if box is not None:
            self.box = _clip_box(np.asarray(box, dtype=np.float64), self.shape)
        elif self.initial_mask is not None:
            self.box = mask_box(self.initial_mask)
        self.window: Optional[np.ndarray] = None
        if window is not None:
            self.window = self._checked_window(window)
        elif self.box is not None:
            self.window = roi_context(self.box, self.shape, context=1.0, minimum=64)
        self.clicks: List[Click] = []
        self._embedding: Optional[Embedding] = None
        self._embedding_window: Optional[Tuple[int, int, int, int]] = None
        self.last_iou: float = math.nan
        self.edit_current = bool(edit_current) and self.initial_mask is not None and bool(self.initial_mask.any())
        #: pass the clicks to the decoder as point prompts (models trained with points only)
        self.use_point_prompts = getattr(model, "prompt_modality", "points") == "points"

    # -- clicks --------------------------------------------------------------------------
    def add_click(self, x: float, y: float, positive: bool = True) -> None:
        """Add a click at ``(x, y)`` slice pixels (column, row)."""
        if not (0 <= x < self.shape[1] and 0 <= y < self.shape[0]):
            raise InputError("click", f"({x:.1f}, {y:.1f}) lies outside the {self.shape[1]} x {self.shape[0]} slice")
        self.clicks.append(Click(float(x), float(y), bool(positive)))

    def undo_click(self) -> Optional[Click]:
        """Remove and return the last click (None when there is none)."""
        return self.clicks.pop() if self.clicks else None

    def clear_clicks(self) -> None:
        self.clicks = []

    # -- geometry --------------------------------------------------------------------------
    def _checked_window(self, window: Sequence[float]) -> np.ndarray:
        w = np.asarray(window, dtype=np.float64)
        if w.shape != (4,) or w[2] - w[0] < 2 or w[3] - w[1] < 2:
            raise InputError("ROI window", f"{list(window)} is not an (x0, y0, x1, y1) box of at least 2 x 2 pixels")
        x0, y0, x1, y1 = w.astype(int)
        if x0 < 0 or y0 < 0 or x1 > self.shape[1] or y1 > self.shape[0]:
            raise InputError("ROI window", f"{list(window)} exceeds the {self.shape[1]} x {self.shape[0]} slice")
        return w

    def prompt_box(self) -> Optional[np.ndarray]:
        """P²SAM's box grown to include every positive click (slice pixels), or None."""
        box = None if self.box is None else self.box.copy()
        m = self.CLICK_MARGIN_PX
        for c in self.clicks:
            if not c.positive:
                continue
            around = np.array([c.x - m, c.y - m, c.x + m + 1, c.y + m + 1])
            box = around if box is None else _union_box(box, around)
        return None if box is None else _clip_box(box, self.shape)

    def _roi_for(self, box: np.ndarray) -> Tuple[int, int, int, int]:
        """The ROI to encode: the given window, or one grown to hold ``box`` and every click."""
        need = box.copy()
        for c in self.clicks:
            need = _union_box(need, np.array([c.x, c.y, c.x + 1, c.y + 1]))
        if self.window is not None:
            x0, y0, x1, y1 = self.window.astype(int)
            if need[0] >= x0 and need[1] >= y0 and need[2] <= x1 and need[3] <= y1:
                return x0, y0, x1, y1
        roi = roi_context(need, self.shape, context=0.5, minimum=64)
        self.window = roi
        x0, y0, x1, y1 = roi.astype(int)
        return x0, y0, x1, y1

    def embedding(self, roi: Tuple[int, int, int, int]) -> Embedding:
        """The model's embedding of the ROI crop (encoded once per ROI; the model's cache is shared)."""
        if self._embedding is None or self._embedding_window != roi:
            x0, y0, x1, y1 = roi
            crop = self.intensity.to_rgb(np.asarray(self.values[y0:y1, x0:x1]))
            self._embedding = self.model.encode([crop])[0]
            self._embedding_window = roi
        return self._embedding

    # -- prediction --------------------------------------------------------------------------
    def _decode(self, emb: Embedding, boxes: np.ndarray, offset: np.ndarray) -> np.ndarray:
        """One batched decoder call: each of ``boxes`` (``B x 4``, slice pixels) with every click,
        on the feature-grid region around all of them; bool ``B x h x w`` masks of the ROI."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        pts = labels = None
        if self.clicks and self.use_point_prompts:
            one = [[c.x - offset[0], c.y - offset[1]] for c in self.clicks]
            pts = np.array([one] * len(boxes), dtype=np.float64)
            labels = np.array([[1 if c.positive else 0 for c in self.clicks]] * len(boxes), dtype=np.int64)
        local = boxes - np.tile(offset, 2)[None]
        region = None
        if not self.use_point_prompts:  # box prompts act locally: decode on the region around them
            for b in local:
                r = box_region(emb, b)
                region = r if region is None else union_region(region, r)
        out = self.model.decode(emb, points=pts, point_labels=labels, boxes=local, region=region)
        self.last_iou = float(out.iou[0])
        return emb.frame.logits_to_original(out.low_res_logits)[:, 0].cpu().numpy() > 0

    def predict(self) -> np.ndarray:
        """The slice's mask from the current prompts: bool ``H x W`` (False outside the ROI).

        Without any prompt (no box, no positive click) the initial mask (or an empty one)
        is returned unchanged. One decoder call: the prompt box and, for each positive
        click, a box of the structure's size centred on it (used when the click falls
        outside the first mask: the component under the click is added).
        """
        if self.edit_current:
            return self._edit_current()
        box = self.prompt_box()
        if box is None:
            return np.zeros(self.shape, dtype=bool) if self.initial_mask is None else self.initial_mask.copy()
        roi = self._roi_for(box)
        x0, y0, x1, y1 = roi
        offset = np.array([x0, y0], dtype=np.float64)
        emb = self.embedding(roi)
        base_w = (self.box[2] - self.box[0]) if self.box is not None else 2 * self.CLICK_MARGIN_PX + 1
        base_h = (self.box[3] - self.box[1]) if self.box is not None else 2 * self.CLICK_MARGIN_PX + 1
        positives = [c for c in self.clicks if c.positive]
        masks = self._decode(emb, np.stack([box] + self._boxes_around(positives, base_w, base_h)), offset)
        local = masks[0].copy()
        for c, extra in zip(positives, masks[1:]):
            lx, ly = int(c.x - x0), int(c.y - y0)
            if local[ly, lx] or not extra[ly, lx]:
                continue
            local |= _component_at(extra, lx, ly)
        local = self._carve_negatives(local, box, offset)
        full = np.zeros(self.shape, dtype=bool)
        full[y0:y1, x0:x1] = local
        return full

    def _edit_current(self) -> np.ndarray:
        """``predict`` with ``edit_current``: the current contour plus what positive clicks outside it add,
        minus what negative clicks carve; unchanged without clicks."""
        current = self.initial_mask
        if not self.clicks:
            return current.copy()
        box = self.prompt_box()
        if box is None:
            box = mask_box(current)
        roi = self._roi_for(box)
        x0, y0, x1, y1 = roi
        offset = np.array([x0, y0], dtype=np.float64)
        local = current[y0:y1, x0:x1].copy()
        cb = mask_box(current)
        base_w, base_h = float(cb[2] - cb[0]), float(cb[3] - cb[1])
        outside = [c for c in self.clicks if c.positive and not local[int(c.y - y0), int(c.x - x0)]]
        if outside:
            masks = self._decode(self.embedding(roi), np.stack(self._boxes_around(outside, base_w, base_h)), offset)
            for c, extra in zip(outside, masks):
                lx, ly = int(c.x - x0), int(c.y - y0)
                if extra[ly, lx]:
                    local |= _component_at(extra, lx, ly)
        local = self._carve_negatives(local, box, offset)
        full = current.copy()
        full[y0:y1, x0:x1] = local
        return full

    def _boxes_around(self, clicks: Sequence[Click], w: float, h: float) -> List[np.ndarray]:
        """A ``w x h`` box (slice pixels, clipped to the slice) centred on each click."""
        return [_clip_box(np.array([c.x - w / 2.0, c.y - h / 2.0, c.x + w / 2.0, c.y + h / 2.0]), self.shape)
                for c in clicks]

    def _carve_negatives(self, local: np.ndarray, box: np.ndarray, offset: np.ndarray) -> np.ndarray:
        """Drop mask pixels closer to a negative click than to every positive cue (ROI frame)."""
        negatives = [(c.x - offset[0], c.y - offset[1]) for c in self.clicks if not c.positive]
        if not negatives or not local.any():
            return local
        positives = [(c.x - offset[0], c.y - offset[1]) for c in self.clicks if c.positive]
        if self.box is not None:
            positives.append(((self.box[0] + self.box[2]) / 2.0 - offset[0], (self.box[1] + self.box[3]) / 2.0 - offset[1]))
        rows, cols = np.nonzero(local)

        def nearest(points):
            p = np.asarray(points, dtype=np.float64)
            d = (cols[:, None] - p[None, :, 0]) ** 2 + (rows[:, None] - p[None, :, 1]) ** 2
            return d.min(axis=1)

        d_neg = nearest(negatives)
        d_pos = nearest(positives) if positives else np.full(d_neg.shape, np.inf)
        out = local.copy()
        drop = d_neg < d_pos
        out[rows[drop], cols[drop]] = False
        return out


def repropagate_neighbours(model: PromptableModel, volume: np.ndarray, intensity: WindowLike,
                           reference_index: int, reference_mask: np.ndarray, neighbours: int = 2,
                           spacing_xy: Sequence[float] = (1.0, 1.0), roi_margin_mm: float = 15.0,
                           min_roi_mm: float = 30.0, max_parts: int = 5, negative_parts: int = 1, seed: int = 0,
                           progress: Optional[Callable[[float, str], None]] = None,
                           cancel: Optional[Callable[[], bool]] = None) -> Dict[int, np.ndarray]:
    """Re-segment the slices next to a corrected slice, with that slice as P²SAM's reference.

    Args:
        model: a loaded promptable model.
        volume: float ``[k, j, i]`` scanner values of the follow-up.
        intensity: scanner values -> 8-bit window (as for :class:`SliceCorrector`).
        reference_index: ``k`` of the corrected slice.
        reference_mask: bool ``H x W`` corrected mask of that slice (non-empty).
        neighbours: slices re-run on each side (``k - n .. k + n``).
        spacing_xy: pixel size ``(column, row)`` in mm (sizes the ROI in mm, as propagation does).
        roi_margin_mm, min_roi_mm, max_parts, negative_parts, seed: as in
            :class:`P2SAMLogic.propagation.pipeline.PropagationConfig`.
        progress / cancel: ``(fraction, message)`` callback / polled stop request
            (:class:`CancelledError`).

    Returns:
        ``{k: bool H x W mask}`` for every neighbour processed. Each side walks outward and
        stops after the first empty result (the structure ended); each neighbour's "prior"
        box is the previous slice's result, its ROI the reference's ROI moved there.
    """
    from .segmenter import P2SAMConfig, P2SAMSegmenter

    vol = np.asarray(volume)
    if vol.ndim != 3:
        raise InputError("volume", f"expected a [k, j, i] array, got shape {vol.shape}")
    ref_mask = np.asarray(reference_mask).astype(bool)
    if ref_mask.shape != vol.shape[1:]:
        raise InputError("reference mask", f"shape {ref_mask.shape} differs from the slices' {vol.shape[1:]}")
    if not 0 <= reference_index < vol.shape[0]:
        raise InputError("reference slice", f"{reference_index} is outside 0..{vol.shape[0] - 1}")
    box = mask_box(ref_mask)
    if box is None:
        raise InputError("reference slice", f"slice {reference_index} is empty; correct it before re-propagating")
    window = as_intensity_window(intensity)
    roi = roi_mm(box, spacing_xy, roi_margin_mm, min_roi_mm, ref_mask.shape)
    x0, y0, x1, y1 = roi.astype(int)
    segmenter = P2SAMSegmenter(model, P2SAMConfig(method="p2sam", search_context=None, max_parts=max_parts,
                                                  negative_parts=negative_parts, seed=seed))
    ref = segmenter.prepare_reference(window.to_rgb(np.asarray(vol[reference_index, y0:y1, x0:x1])),
                                      np.ascontiguousarray(ref_mask[y0:y1, x0:x1]),
                                      source=f"corrected slice {reference_index}")
    side_w, side_h = x1 - x0, y1 - y0
    out: Dict[int, np.ndarray] = {}
    total = max(1, 2 * neighbours)
    done = 0
    for direction in (-1, 1):
        previous = box
        for step in range(1, neighbours + 1):
            k = reference_index + direction * step
            if not 0 <= k < vol.shape[0]:
                break
            if cancel is not None and cancel():
                raise CancelledError("cancelled by the caller; nothing was written")
            cx, cy = (previous[0] + previous[2]) / 2.0, (previous[1] + previous[3]) / 2.0
            wx0 = int(np.clip(round(cx - side_w / 2.0), 0, vol.shape[2] - side_w))
            wy0 = int(np.clip(round(cy - side_h / 2.0), 0, vol.shape[1] - side_h))
            crop = window.to_rgb(np.asarray(vol[k, wy0:wy0 + side_h, wx0:wx0 + side_w]))
            local_prior = previous - np.array([wx0, wy0, wx0, wy0], dtype=np.float64)
            res = segmenter.segment(ref, crop, prior_box=local_prior)
            mask = np.zeros(vol.shape[1:], dtype=bool)
            mask[wy0:wy0 + side_h, wx0:wx0 + side_w] = res.mask
            out[k] = mask
            done += 1
            if progress is not None:
                progress(done / total, f"slice {k}")
            found = mask_box(mask)
            if found is None:
                break
            previous = found
    return out
