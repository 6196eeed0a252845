"""The small interface every promptable model implements: encode once, decode many times."""
from __future__ import annotations

import hashlib
import os
import time
import warnings
from abc import ABC, abstractmethod
from collections import OrderedDict
from contextlib import nullcontext
from dataclasses import dataclass
from typing import List, Literal, Optional, Sequence, Tuple

import numpy as np
import torch

from ..errors import InputError
from .frames import ImageFrame

PromptModality = Literal["points", "box"]


def resolve_device(device: str = "auto") -> torch.device:
    """Turn ``auto|cpu|cuda|cuda:N|mps`` into a ``torch.device``; error if it is not available here."""
    device = (device or "auto").lower()
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError("--device", f"'{device}' was asked for but this torch build sees no CUDA GPU; use --device cpu or auto")
        return torch.device(device)
    if device == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise InputError("--device", "'mps' was asked for but Apple's Metal backend is not available; use --device cpu or auto")
        return torch.device("mps")
    if device == "cpu":
        return torch.device("cpu")
    raise InputError("--device", f"unknown device '{device}'; expected auto, cpu, cuda or mps")


def file_sha256(path: str) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class Embedding:
    """One encoded image.

    Attributes:
        features: float32 tensor ``1 x C x g x g`` on the model's device: the image
            encoder's output (SAM and LiteMedSAM: ``C = 256``, ``g = 64``), in the
            feature-grid frame of ``frame`` (see :mod:`P2SAMLogic.models.frames`).
        frame: how the original image maps into the model input.
        key: cache key (content hash of the image + model id).
    """

    features: torch.Tensor
    frame: ImageFrame
    key: str

    @property
    def grid(self) -> int:
        return int(self.features.shape[-1])


@dataclass
class DecodeOutput:
    """Decoder result for a batch of ``B`` prompt sets on one embedding.

    Attributes:
        low_res_logits: float32 ``B x 1 x L x L`` logits in the low-res mask frame
            (``L = 4 g``), suitable as the next call's ``mask_input``.
        iou: float32 ``B`` predicted mask quality.
    """

    low_res_logits: torch.Tensor
    iou: torch.Tensor


class EmbeddingCache:
    """Least-recently-used store of :class:`Embedding` keyed by image content + model id."""

    def __init__(self, max_items: int = 64) -> None:
        self.max_items = max_items
        self._items: "OrderedDict[str, Embedding]" = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> Optional[Embedding]:
        item = self._items.get(key)
        if item is None:
            self.misses += 1
            return None
        self.hits += 1
        self._items.move_to_end(key)
        return item

    def put(self, item: Embedding) -> None:
        self._items[item.key] = item
        self._items.move_to_end(item.key)
        while len(self._items) > self.max_items:
            self._items.popitem(last=False)

    def reserve(self, n: int) -> None:
        """Hold at least ``n`` embeddings (e.g. every slice of a follow-up, so that each slice is encoded
        once for all structures). Memory: LiteMedSAM and SAM embeddings are 4 MB each (float32)."""
        self.max_items = max(self.max_items, int(n))

    def __len__(self) -> int:
        return len(self._items)


def as_rgb_uint8(image: np.ndarray, source: str = "image") -> np.ndarray:
    """Validate a model input image: ``H x W x 3`` uint8 RGB (original frame)."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InputError(source, f"expected an H x W x 3 uint8 RGB array, got shape {image.shape} dtype {image.dtype}")
    if min(image.shape[:2]) < 2:
        raise InputError(source, f"image of {image.shape[1]} x {image.shape[0]} pixels is too small to segment")
    return image


class PromptableModel(ABC):
    """A frozen Segment-Anything-family model.

    Subclasses set ``name``, ``sha256``, ``prompt_modality``, ``input_size`` and
    ``net`` (an ``nn.Module`` with ``image_encoder``, ``prompt_encoder`` and
    ``mask_decoder`` as in segment-anything), and implement :meth:`_preprocess`.
    """

    name: str
    sha256: str
    prompt_modality: PromptModality
    input_size: int
    batch_size: int = 4
    #: images per encoder call on the CPU: one at a time measured fastest on 2 cores
    #: (LiteMedSAM, eager, tuned allocator: 1.28 s per image alone, 1.65 s in batches of 4; README)
    cpu_batch_size: int = 1

    def __init__(self, net: torch.nn.Module, device: torch.device, cache: Optional[EmbeddingCache] = None) -> None:
        self.net = net.eval().to(device)
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.device = device
        self.cache = cache if cache is not None else EmbeddingCache()
        self.encode_calls = 0  # images actually run through the encoder
        self.encoder_seconds = 0.0  # wall time spent in the encoder (all calls)
        #: CPU, opt-in (``P2SAM_JIT=1`` or this attribute): run the image encoder as a TorchScript
        #: graph traced and frozen once per input shape (the model input is always ``3 x S x S``).
        #: Outputs equal eager within 1e-5, but over repeated runs on the development CPU it was
        #: no faster than eager (1.11 vs 1.14 s per LiteMedSAM image, within the machine's
        #: +-15 % noise) and its first call costs ~2 s more, so eager is the default
        #: (Testing/Benchmarks/encoder_options.py).
        self.jit_encoder = device.type == "cpu" and os.environ.get("P2SAM_JIT", "") in ("1", "true", "yes")
        self._traced: dict = {}
        #: CUDA: run the image encoder under bf16 autocast (features are returned as float32)
        self.autocast = True
        #: CPU: convolution weights and the encoder input in channels-last memory format
        #: (LiteMedSAM: 0.97 vs 1.11 s per image over 7 paired runs, features equal within 4e-6)
        self.channels_last = device.type == "cpu"
        if self.channels_last:
            self.net.image_encoder.to(memory_format=torch.channels_last)

    # -- identity -----------------------------------------------------------------
    @property
    def model_id(self) -> str:
        return f"{self.name}:{self.sha256[:16]}"

    def describe(self) -> dict:
        """Provenance record: name, weights checksum, prompt modality, input size."""
        return {"name": self.name, "sha256": self.sha256, "prompt_modality": self.prompt_modality,
                "input_size": self.input_size, "device": str(self.device)}

    # -- encoding -----------------------------------------------------------------
    @abstractmethod
    def _preprocess(self, image: np.ndarray, frame: ImageFrame) -> torch.Tensor:
        """``H x W x 3`` uint8 RGB → float32 ``3 x S x S`` normalised, padded model input (on CPU)."""

    def _autocast(self):
        if self.device.type == "cuda" and self.autocast:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def frame_for(self, image: np.ndarray) -> ImageFrame:
        return ImageFrame(original_size=(int(image.shape[0]), int(image.shape[1])), input_size=self.input_size)

    def cache_key(self, image: np.ndarray) -> str:
        digest = hashlib.sha256()
        digest.update(self.model_id.encode())
        digest.update(str(image.shape).encode())
        digest.update(np.ascontiguousarray(image).tobytes())
        return digest.hexdigest()

    @torch.no_grad()
    def encode(self, images: Sequence[np.ndarray]) -> List[Embedding]:
        """Encode images (each ``H x W x 3`` uint8 RGB), reusing cached embeddings.

        Images not in the cache run through the encoder in batches of
        ``encode_batch_size``. Returns one :class:`Embedding` per image, in order.
        """
        images = [as_rgb_uint8(im, f"image #{i}") for i, im in enumerate(images)]
        keys = [self.cache_key(im) for im in images]
        out: List[Optional[Embedding]] = [self.cache.get(k) for k in keys]
        todo = [i for i, e in enumerate(out) if e is None]
        # identical images inside one call are encoded once
        first_of: dict = {}
        for i in todo:
            first_of.setdefault(keys[i], i)
        unique = sorted(first_of.values())
        step = self.encode_batch_size
        for start in range(0, len(unique), step):
            chunk = unique[start:start + step]
            frames = [self.frame_for(images[i]) for i in chunk]
            batch = torch.stack([self._preprocess(images[i], f) for i, f in zip(chunk, frames)]).to(self.device)
            feats = self.run_encoder(batch)
            self.encode_calls += len(chunk)
            for j, i in enumerate(chunk):
                emb = Embedding(features=feats[j:j + 1].clone(), frame=frames[j], key=keys[i])
                self.cache.put(emb)
                out[i] = emb
        for i in todo:
            if out[i] is None:
                out[i] = self.cache.get(keys[i]) or out[first_of[keys[i]]]
        return out  # type: ignore[return-value]

    @property
    def encode_batch_size(self) -> int:
        """Images per encoder call: ``cpu_batch_size`` on the CPU, ``batch_size`` on a GPU."""
        return max(1, self.cpu_batch_size if self.device.type == "cpu" else self.batch_size)

    @torch.no_grad()
    def run_encoder(self, batch: torch.Tensor) -> torch.Tensor:
        """The image encoder alone: float32 ``B x 3 x S x S`` model input (on the model's device) →
        float32 ``B x C x g x g`` features. Traced when ``jit_encoder`` is set, autocast on CUDA.
        Adds its wall time to ``encoder_seconds``."""
        t = time.perf_counter()
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        fn = self._encoder_for(batch) if self.jit_encoder else self.net.image_encoder
        with self._autocast():
            feats = fn(batch)
        feats = feats.float().contiguous()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.encoder_seconds += time.perf_counter() - t
        return feats

    def _encoder_for(self, batch: torch.Tensor):
        key = tuple(batch.shape)
        fn = self._traced.get(key)
        if fn is None:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # TracerWarnings about shape-dependent Python code
                    traced = torch.jit.trace(self.net.image_encoder, batch, check_trace=False)
                    fn = torch.jit.freeze(traced.eval())
            except Exception as exc:  # pragma: no cover - an architecture TorchScript cannot trace
                warnings.warn(f"{self.name}: could not trace the image encoder ({exc}); running it eagerly")
                self.jit_encoder = False
                return self.net.image_encoder
            self._traced[key] = fn
        return fn

    # -- decoding -----------------------------------------------------------------
    @torch.no_grad()
    def decode(
        self,
        embedding: Embedding,
        points: Optional[np.ndarray] = None,
        point_labels: Optional[np.ndarray] = None,
        boxes: Optional[np.ndarray] = None,
        mask_input: Optional[torch.Tensor] = None,
        region: Optional[Tuple[int, int, int, int]] = None,
    ) -> DecodeOutput:
        """Run the prompt encoder and mask decoder for ``B`` prompt sets on one image.

        Args:
            embedding: from :meth:`encode`.
            points: float ``B x N x 2`` (x, y) in the *original* image's pixels, or None.
            point_labels: int ``B x N``; 1 = foreground, 0 = background.
            boxes: float ``B x 4`` (x0, y0, x1, y1) in original pixels, or None.
            mask_input: float ``B x 1 x L x L`` low-res logits of a previous call, or None.
            region: ``(row0, row1, col0, col1)`` feature-grid cells (half-open) to decode
                on, or None for the whole grid. The decoder then attends only to the
                image tokens of that region (same embeddings and positional encoding,
                sliced), which costs in proportion to its area; logits outside it are
                set to ``-20``. For prompts well inside the region.
        Returns:
            :class:`DecodeOutput` with ``B`` single-mask predictions
            (``multimask_output=False``, as the method prescribes for medical images).
        """
        frame = embedding.frame
        batch = None
        pts = None
        if points is not None:
            coords = torch.as_tensor(frame.to_model(points), dtype=torch.float32, device=self.device)
            labels = torch.as_tensor(point_labels, dtype=torch.int64, device=self.device)
            if coords.ndim != 3 or labels.shape != coords.shape[:2]:
                raise ValueError(f"points must be B x N x 2 and labels B x N, got {tuple(coords.shape)} and {tuple(labels.shape)}")
            pts = (coords, labels)
            batch = coords.shape[0]
        bx = None
        if boxes is not None:
            bx = torch.as_tensor(frame.to_model(boxes), dtype=torch.float32, device=self.device).reshape(-1, 1, 4)
            batch = bx.shape[0]
        if mask_input is not None:
            mask_input = mask_input.to(self.device, torch.float32)
            batch = mask_input.shape[0]
        if batch is None:
            raise ValueError("decode needs at least one of points, boxes or mask_input")
        with self._full_precision():
            return self._decode(embedding, pts, bx, mask_input, batch, region)

    def _full_precision(self):
        """Disable any autocast a caller may have opened: the decoder (and everything after the
        encoder) runs in float32 on every device; only the image encoder may run in bf16."""
        if self.device.type in ("cuda", "cpu"):
            return torch.autocast(self.device.type, enabled=False)
        return nullcontext()

    def _decode(self, embedding: Embedding, pts, bx, mask_input, batch: int,
                region: Optional[Tuple[int, int, int, int]]) -> DecodeOutput:
        pe = self.net.prompt_encoder
        sparse, dense = pe(points=pts, boxes=bx, masks=mask_input)
        if sparse.shape[0] != batch:
            sparse = sparse.expand(batch, -1, -1)
        feats, image_pe = embedding.features, pe.get_dense_pe()
        if region is not None:
            r0, r1, c0, c1 = region
            feats, image_pe = feats[..., r0:r1, c0:c1], image_pe[..., r0:r1, c0:c1]
            dense = dense[..., r0:r1, c0:c1]
        logits, iou = self.net.mask_decoder(
            image_embeddings=feats,
            image_pe=image_pe,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
        if region is not None:
            up = logits.shape[-1] // (c1 - c0)
            g = embedding.grid
            full = torch.full((batch, 1, g * up, g * up), -20.0, dtype=torch.float32, device=logits.device)
            full[..., r0 * up:r1 * up, c0 * up:c1 * up] = logits.float()
            logits = full
        return DecodeOutput(low_res_logits=logits.float(), iou=iou[:, 0].float())
