"""An on-disk embedding cache for benchmarks (never used by the engine or the tests).

Benchmarks re-run the same crops through the encoder many times while prompting and decision
rules change; LiteMedSAM spends ~1 s per crop on 2 CPU cores. :class:`DiskEmbeddingCache` keeps
every embedding (float32 features exactly as the encoder returned them, and the crop's frame)
in a folder keyed by the engine's own cache key (SHA-256 of the model id and the image bytes),
so a second run of the same variant reproduces the first bit for bit without encoding.

Timings measured through this cache are NOT encoder timings: benchmarks that report speed
run without it (``--no-cache``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import torch

from P2SAMLogic.models.base import Embedding, EmbeddingCache
from P2SAMLogic.models.frames import ImageFrame

DEFAULT_DIR = Path(os.environ.get("P2SAM_BENCH_CACHE", Path.home() / ".cache" / "p2sam-bench-embeddings"))


class DiskEmbeddingCache(EmbeddingCache):
    """:class:`EmbeddingCache` that also reads and writes ``<folder>/<key[:2]>/<key>.pt``."""

    def __init__(self, folder: Optional[Path] = None, max_items: int = 4096,
                 device: Optional[torch.device] = None) -> None:
        super().__init__(max_items=max_items)
        self.device = device
        self.folder = Path(folder or DEFAULT_DIR)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.disk_hits = 0

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.pt"

    def get(self, key: str) -> Optional[Embedding]:
        item = super().get(key)
        if item is not None:
            return item
        path = self._path(key)
        if not path.exists():
            return None
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # a torn file from an interrupted run: encode again
            return None
        frame = ImageFrame(original_size=tuple(int(v) for v in blob["original_size"]),
                           input_size=int(blob["input_size"]))
        features = blob["features"] if self.device is None else blob["features"].to(self.device)
        item = Embedding(features=features, frame=frame, key=key)
        self.misses -= 1
        self.hits += 1
        self.disk_hits += 1
        super().put(item)
        return item

    def put(self, item: Embedding) -> None:
        super().put(item)
        path = self._path(item.key)
        if path.exists():
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save({"features": item.features.detach().to("cpu", torch.float32).contiguous(),
                    "original_size": list(item.frame.original_size), "input_size": item.frame.input_size}, tmp)
        os.replace(tmp, path)


def use_disk_cache(model, folder: Optional[Path] = None) -> DiskEmbeddingCache:
    """Give a loaded model a :class:`DiskEmbeddingCache` (features are moved to its device on read)."""
    model.cache = DiskEmbeddingCache(folder, device=model.device)
    return model.cache
