"""How much of a slice the model sees: the encoding window around a structure.

A Segment-Anything-family model encodes a square image of ``input_size`` pixels (LiteMedSAM:
256). LiteMedSAM was trained on whole slices resized to that size, so a structure looks to it as
large as it is in the slice. Cropping a small region around a structure and zooming it 3-5x
(the former default) shows the model something it never saw in training and costs Dice before
any prompt is chosen (Testing/Benchmarks/benchmark_scale.py; docs/ablation.md, "Scale").

An :class:`EncodingScale` turns a structure's box on a slice into the window that is encoded:

* ``auto`` (the default) — by modality, as measured on the development sets: the whole slice for
  MR (and anything that is not CT), where every cardiac structure, small apical ones included, was
  segmented best on the whole slice and all structures then share one encoding per slice; a
  ``ctx`` window of ``context`` (4) times the structure's box for CT, where the tumours and the
  vertebral body were segmented best enlarged (:meth:`EncodingScale.resolve`);
* ``whole`` — the whole slice;
* ``ctx C`` — a square of ``C`` times the box's larger side, centred on the box, kept inside
  the slice; with ``zoom_cap`` Z the square is at least ``input_size / Z`` pixels, so the slice
  is never enlarged more than Z times;
* ``crop`` — the former ROI: the box's larger side plus ``margin_mm`` per side, at least
  ``min_mm`` (kept for comparisons).

Windows are ``(x0, y0, x1, y1)`` float64 in slice pixels (x = column, y = row, half-open).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np

from ..errors import InputError
from ..method.roi import place_square, roi_mm


@dataclass(frozen=True)
class EncodingScale:
    """An encoding-window rule (see the module docstring).

    Attributes:
        kind: ``whole``, ``context`` or ``crop``.
        context: ``context`` windows: the window side over the box's larger side.
        zoom_cap: ``context`` windows: the largest enlargement of the slice (None: no cap).
        margin_mm, min_mm: ``crop`` windows: margin per side and smallest side, millimetres.
    """

    kind: str = "auto"
    context: float = 4.0
    zoom_cap: Optional[float] = None
    margin_mm: float = 15.0
    min_mm: float = 30.0

    @property
    def whole(self) -> bool:
        """Every window is the whole slice."""
        return self.kind == "whole"

    @property
    def shares_slices(self) -> bool:
        """Windows can be whole slices, shared by every structure on a slice (worth caching per slice)."""
        return self.kind in ("whole", "auto")

    def resolve(self, modality: str) -> "EncodingScale":
        """The rule for one image of ``modality`` (``CT``, ``MR``, ...): ``auto`` becomes ``whole`` or
        ``ctx``; any other rule is returned as it is."""
        if self.kind != "auto":
            return self
        if (modality or "").upper() == "CT":
            return EncodingScale("context", context=self.context, zoom_cap=self.zoom_cap)
        return EncodingScale("whole")

    @classmethod
    def parse(cls, text: str, margin_mm: float = 15.0, min_mm: float = 30.0) -> "EncodingScale":
        """``whole``, ``crop``, ``ctx4`` or ``ctx4:zoom1.5`` (the CLI's ``--scale``)."""
        t = (text or "").strip().lower()
        if t == "auto":
            return cls("auto")
        if t == "whole":
            return cls("whole")
        if t == "crop":
            return cls("crop", margin_mm=margin_mm, min_mm=min_mm)
        m = re.fullmatch(r"ctx([0-9]*\.?[0-9]+)(?::zoom([0-9]*\.?[0-9]+))?", t)
        if m:
            context = float(m.group(1))
            cap = float(m.group(2)) if m.group(2) else None
            if context < 1.0 or (cap is not None and cap <= 0):
                raise InputError("--scale", f"'{text}': the context must be at least 1 and the zoom cap positive")
            return cls("context", context=context, zoom_cap=cap)
        raise InputError("--scale", f"unknown encoding scale '{text}'; expected auto, whole, crop, ctxC or "
                                    "ctxC:zoomZ (e.g. ctx4:zoom1.5)")

    def describe(self) -> str:
        if self.kind == "auto":
            return f"auto (whole slice for MR, ctx{self.context:g} for CT)"
        if self.kind == "whole":
            return "whole"
        if self.kind == "crop":
            return f"crop (box + {self.margin_mm:g} mm per side, at least {self.min_mm:g} mm)"
        cap = "" if self.zoom_cap is None else f":zoom{self.zoom_cap:g}"
        return f"ctx{self.context:g}{cap}"

    def window(self, box: Sequence[float], shape: Tuple[int, int], spacing_xy: Sequence[float] = (1.0, 1.0),
               input_size: int = 256) -> np.ndarray:
        """The window to encode for a structure whose box on this slice is ``box`` ``(x0, y0, x1, y1)``.

        Args:
            shape: the slice's ``(H, W)`` in pixels.
            spacing_xy: pixel size ``(column, row)`` in mm (``crop`` windows only).
            input_size: the model's square input side (for the zoom cap).
        """
        if self.kind == "auto":
            raise ValueError("resolve() an 'auto' encoding scale for the image's modality first")
        h, w = int(shape[0]), int(shape[1])
        side_px = max(float(box[2]) - float(box[0]), float(box[3]) - float(box[1]))
        if self.kind == "whole":
            return np.array([0.0, 0.0, float(w), float(h)])
        if self.kind == "crop":
            return roi_mm(box, spacing_xy, self.margin_mm, self.min_mm, shape)
        side = self.context * side_px
        if self.zoom_cap is not None:
            side = max(side, input_size / self.zoom_cap)
        side = int(math.ceil(max(side, 32.0)))
        return place_square(((box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0), (side, side), shape)
