"""Promptable segmentation models behind one small interface (encode once, decode many times)."""
from __future__ import annotations

import os
from typing import Optional

from ..errors import CheckpointError, InputError
from .base import DecodeOutput, Embedding, EmbeddingCache, PromptableModel, resolve_device
from .frames import ImageFrame
from .litemedsam import LiteMedSAM
from .sam import SAM_ARCHITECTURES, SegmentAnything, build_sam_network

__all__ = ["DecodeOutput", "Embedding", "EmbeddingCache", "ImageFrame", "LiteMedSAM", "PromptableModel",
           "SAM_ARCHITECTURES", "SegmentAnything", "build_sam_network", "load_model", "resolve_device"]


def load_model(model: str = "litemedsam", model_type: Optional[str] = None, device: str = "auto") -> PromptableModel:
    """Load the embedded LiteMedSAM (``"litemedsam"``) or a SAM checkpoint from a path.

    Args:
        model: ``"litemedsam"`` or the path of a segment-anything checkpoint / state dict.
        model_type: ``vit_b``, ``vit_l`` or ``vit_h`` for a SAM checkpoint (inferred when None).
        device: ``auto``, ``cpu``, ``cuda`` or ``mps``.
    """
    if model_type is not None and model_type not in SAM_ARCHITECTURES:
        raise InputError("--model-type", f"unknown model type '{model_type}'; expected one of "
                         + ", ".join(SAM_ARCHITECTURES))
    dev = resolve_device(device)
    if model.lower() == "litemedsam":
        if model_type is not None:
            raise InputError("--model-type", "applies to SAM checkpoints only, not to the embedded LiteMedSAM")
        return LiteMedSAM(dev)
    if not os.path.exists(model):
        raise CheckpointError(model, "checkpoint file does not exist (give 'litemedsam' or a SAM checkpoint path)")
    return SegmentAnything.from_checkpoint(model, model_type, dev)
