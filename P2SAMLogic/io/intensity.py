"""Map scanner intensities to the 8-bit RGB images the models take.

CT: a fixed Hounsfield window (default ``[-910, 590]`` HU, the lung window the P²SAM
authors used for 4D-Lung: level -160, width 1500), clipped and scaled to 0-255.
MR (or unknown units): the 0.5th-99.5th percentiles of the whole volume, so that the
same tissue maps to the same grey value on every slice of that volume.
The window used is recorded in every output's provenance.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import SimpleITK as sitk

#: default CT window in HU (level -160, width 1500)
CT_WINDOW: Tuple[float, float] = (-910.0, 590.0)
#: percentiles for MR and other non-calibrated modalities
MR_PERCENTILES: Tuple[float, float] = (0.5, 99.5)


@dataclass
class IntensityWindow:
    """A linear window ``[low, high]`` -> ``[0, 255]``, and how it was chosen."""

    low: float
    high: float
    rule: str  # "CT fixed window", "user window", "percentiles 0.5-99.5"

    def to_uint8(self, values: np.ndarray) -> np.ndarray:
        """Any-shape float array -> uint8 of the same shape."""
        scale = 255.0 / max(1e-6, self.high - self.low)
        out = (np.asarray(values, dtype=np.float32) - self.low) * scale
        return np.clip(out, 0, 255).astype(np.uint8)

    def to_rgb(self, slice2d: np.ndarray) -> np.ndarray:
        """``H x W`` float slice -> ``H x W x 3`` uint8 RGB (grey replicated)."""
        g = self.to_uint8(slice2d)
        return np.ascontiguousarray(np.repeat(g[:, :, None], 3, axis=2))

    def describe(self) -> dict:
        return {"low": round(float(self.low), 3), "high": round(float(self.high), 3), "rule": self.rule}


def choose_window(image: sitk.Image, modality: str, user: Optional[Tuple[float, float]] = None) -> IntensityWindow:
    """The window for ``image`` of ``modality`` (``"CT"``, ``"MR"``...); ``user`` overrides it."""
    if user is not None:
        lo, hi = float(user[0]), float(user[1])
        if not hi > lo:
            raise ValueError(f"intensity window {user}: high must exceed low")
        return IntensityWindow(lo, hi, "user window")
    if (modality or "").upper() == "CT":
        return IntensityWindow(CT_WINDOW[0], CT_WINDOW[1], "CT fixed window")
    arr = sitk.GetArrayViewFromImage(image)
    sample = arr[:: max(1, arr.shape[0] // 32)]
    lo, hi = np.percentile(sample, MR_PERCENTILES)
    if hi <= lo:
        hi = lo + 1.0
    return IntensityWindow(float(lo), float(hi), f"percentiles {MR_PERCENTILES[0]}-{MR_PERCENTILES[1]}")
