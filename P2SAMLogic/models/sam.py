"""Segment Anything (ViT-B/L/H) checkpoints and fine-tuned full state dicts, from a user's file.

The architecture comes from the ``segment-anything`` package's modelling
classes, loaded without its package ``__init__`` (which imports torchvision).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Dict, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ._vendored_imports import segment_anything_modeling
from ..errors import CheckpointError, InputError
from .base import EmbeddingCache, PromptableModel
from .checkpoint import cached_network, load_strict, no_weight_init, read_state_dict
from .frames import ImageFrame


@dataclass(frozen=True)
class SamArchitecture:
    """Image-encoder hyper-parameters of one SAM variant."""

    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: Sequence[int]
    image_size: int = 1024
    patch_size: int = 16


SAM_ARCHITECTURES: Dict[str, SamArchitecture] = {
    "vit_b": SamArchitecture(768, 12, 12, (2, 5, 8, 11)),
    "vit_l": SamArchitecture(1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": SamArchitecture(1280, 32, 16, (7, 15, 23, 31)),
}

_PIXEL_MEAN = (123.675, 116.28, 103.53)
_PIXEL_STD = (58.395, 57.12, 57.375)


def build_sam_network(arch: SamArchitecture) -> torch.nn.Module:
    """A randomly initialised ``segment_anything.modeling.Sam`` of the given architecture.

    Features are ``256 x (image_size/patch_size)^2``; low-res masks ``4x`` that grid.
    """
    m = segment_anything_modeling()
    grid = arch.image_size // arch.patch_size
    return m.Sam(
        image_encoder=m.ImageEncoderViT(
            depth=arch.depth, embed_dim=arch.embed_dim, img_size=arch.image_size, mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=arch.num_heads,
            patch_size=arch.patch_size, qkv_bias=True, use_rel_pos=True,
            global_attn_indexes=tuple(arch.global_attn_indexes), window_size=14, out_chans=256,
        ),
        prompt_encoder=m.PromptEncoder(embed_dim=256, image_embedding_size=(grid, grid),
                                       input_image_size=(arch.image_size, arch.image_size), mask_in_chans=16),
        mask_decoder=m.MaskDecoder(
            num_multimask_outputs=3,
            transformer=m.TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
            transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256,
        ),
        pixel_mean=list(_PIXEL_MEAN), pixel_std=list(_PIXEL_STD),
    )


def infer_model_type(state: Dict[str, torch.Tensor]) -> Optional[str]:
    """Guess vit_b/l/h from the patch-embedding width and block count of a state dict."""
    w = state.get("image_encoder.patch_embed.proj.weight")
    if w is None:
        return None
    depth = len({k.split(".")[2] for k in state if k.startswith("image_encoder.blocks.")})
    for name, arch in SAM_ARCHITECTURES.items():
        if arch.embed_dim == w.shape[0] and arch.depth == depth:
            return name
    return None


class SegmentAnything(PromptableModel):
    """A SAM network behind :class:`PromptableModel` (point prompts; boxes work too).

    Pre-processing as segment-anything's predictor: resize the longest side to
    ``image_size`` (bilinear, antialiased), normalise with ImageNet pixel
    mean/std on 0-255 values, zero-pad bottom/right.
    """

    prompt_modality = "points"
    batch_size = 2

    def __init__(self, net: torch.nn.Module, device: torch.device, name: str, sha256: str,
                 cache: Optional[EmbeddingCache] = None) -> None:
        self.name = name
        self.sha256 = sha256
        self.input_size = int(net.image_encoder.img_size)
        super().__init__(net, device, cache)

    @classmethod
    def from_checkpoint(cls, path: str, model_type: Optional[str], device: torch.device,
                        cache: Optional[EmbeddingCache] = None) -> "SegmentAnything":
        """Load a SAM checkpoint (official or fine-tuned full state dict) strictly."""
        if model_type is not None and model_type not in SAM_ARCHITECTURES:
            raise InputError("--model-type", f"unknown model type '{model_type}'; expected one of "
                             + ", ".join(SAM_ARCHITECTURES))

        def build():
            state = read_state_dict(path)
            found = infer_model_type(state)
            if found is None:
                raise CheckpointError(path, "is not a Segment Anything checkpoint (no ViT image encoder of "
                                      "vit_b/vit_l/vit_h shape found)")
            if model_type is not None and found != model_type:
                raise CheckpointError(path, f"holds a {found} network, but --model-type {model_type} was given")
            with no_weight_init():
                net = build_sam_network(SAM_ARCHITECTURES[found])
            load_strict(net, state, path, f"the SAM {found} architecture")
            return net, {"model_type": found}

        # built once per process, weights file and device (models/checkpoint.py: cached_network)
        net, sha, info = cached_network("sam", path, device, build)
        found = info["model_type"]
        if model_type is not None and found != model_type:
            raise CheckpointError(path, f"holds a {found} network, but --model-type {model_type} was given")
        return cls(net, device, name=f"SAM-{found}", sha256=sha, cache=cache)

    def _preprocess(self, image: np.ndarray, frame: ImageFrame) -> torch.Tensor:
        h, w = frame.resized_size
        x = torch.from_numpy(image).permute(2, 0, 1)[None].float()
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)[0]
        mean = torch.tensor(_PIXEL_MEAN).view(3, 1, 1)
        std = torch.tensor(_PIXEL_STD).view(3, 1, 1)
        x = (x.clamp(0, 255) - mean) / std
        out = torch.zeros((3, self.input_size, self.input_size), dtype=torch.float32)
        out[:, :h, :w] = x
        return out
