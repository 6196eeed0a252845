"""Step 1, reference preparation: encode the reference once, pool its masked features, cluster them into parts."""
from __future__ import annotations

import time
from typing import List, Optional

import numpy as np
import torch

from ..errors import InputError
from ..models.frames import coverage_on_grid
from .boxes import mask_box
from .parts import background_features, foreground_features, part_prototype_sets
from .results import ReferenceState
from .roi import roi_context


class ReferencePreparation:
    """The reference's encoding, pooled features and part prototypes (k-means++), computed once.

    A part of :class:`~P2SAMLogic.method.segmenter.P2SAMSegmenter` (which inherits it): it reads
    ``self.model`` (a :class:`~P2SAMLogic.models.base.PromptableModel`) and ``self.config`` (a
    :class:`~P2SAMLogic.method.config.P2SAMConfig`) and calls the other steps through ``self``.
    """

    def prepare_reference(self, image: np.ndarray, mask: np.ndarray, source: str = "reference") -> ReferenceState:
        """Encode the reference image and pool its features (once per reference).

        Args:
            image: ``H x W x 3`` uint8 RGB.
            mask: ``H x W`` bool, non-empty.
            source: name used in error messages (e.g. the mask's file path).

        With ``config.search_context`` set, the reference is cropped to a square
        window around the structure (see :class:`P2SAMConfig`) before encoding.
        """
        mask = np.asarray(mask).astype(bool)
        if mask.shape != image.shape[:2]:
            raise InputError(source, f"mask shape {mask.shape} differs from image shape {image.shape[:2]}")
        if not mask.any():
            raise InputError(source, "mask is empty")
        full_shape = mask.shape
        full_box = mask_box(mask)
        window = None
        context = self.config.search_context
        if context is not None:
            window = roi_context(full_box, full_shape, context, clip=True)
            x0, y0, x1, y1 = window.astype(int)
            image, mask = np.ascontiguousarray(image[y0:y1, x0:x1]), mask[y0:y1, x0:x1]
        t0 = time.perf_counter()
        emb = self.model.encode([image])[0]
        t1 = time.perf_counter()
        feats = emb.features[0]
        g = emb.grid
        coverage = coverage_on_grid(emb.frame.mask_to_input(mask), g).to(feats.device)
        fg = foreground_features(feats, coverage)
        bg = background_features(feats, coverage, emb.frame.grid_valid(g), self.config.background_context)
        box = mask_box(mask)
        longest = float(max(mask.shape))
        ref = ReferenceState(
            embedding=emb, mask=mask, coverage=coverage, foreground=fg, background=bg, box=box,
            relative_size=((box[2] - box[0]) / longest, (box[3] - box[1]) / longest),
            window=window, full_shape=full_shape, full_box=full_box,
        )
        ref.timings["reference_encode"] = t1 - t0
        ref.timings["pooling"] = time.perf_counter() - t1
        # cluster now, every part count in one batched k-means, so that no target pays for it
        t = time.perf_counter()
        counts = [n for n in self.part_counts() if n not in ref.prototypes]
        ref.prototypes.update(part_prototype_sets(ref.foreground, counts, self.config.seed, self.config.kmeans_init,
                                                  backend=getattr(self.config, "kmeans_backend", "torch")))
        ref.clusterings += len(counts)
        ref.timings["cluster"] = ref.timings.get("cluster", 0.0) + time.perf_counter() - t
        if self.config.method != "persam":
            self._negatives(ref, self.config.negative_parts)
        return ref

    def _prototypes(self, ref: ReferenceState, n: int) -> torch.Tensor:
        return self._clustered(ref, ref.prototypes, ref.foreground, n)

    def _negatives(self, ref: ReferenceState, m: int) -> Optional[torch.Tensor]:
        if m <= 0 or ref.background is None:
            return None
        return self._clustered(ref, ref.negatives, ref.background, m)

    def _clustered(self, ref: ReferenceState, cache: dict, features: torch.Tensor, n: int) -> torch.Tensor:
        """``n`` part prototypes of ``features`` (k-means), computed once per reference and count into ``cache``."""
        if n not in cache:
            t = time.perf_counter()
            cache[n] = part_prototype_sets(features, [n], self.config.seed, self.config.kmeans_init,
                                           backend=getattr(self.config, "kmeans_backend", "torch"))[n]
            ref.clusterings += 1
            ref.timings["cluster"] = ref.timings.get("cluster", 0.0) + time.perf_counter() - t
        return cache[n]

    @property
    def prompt_modality(self) -> str:
        """``points`` or ``box``: the config's choice, else the model's own."""
        return self.model.prompt_modality if self.config.prompts == "auto" else self.config.prompts

    def part_counts(self) -> List[int]:
        c = self.config
        if c.method == "persam":
            return [1]
        if c.method == "no-retrieval":
            return [c.max_parts]
        return list(range(1, c.max_parts + 1))
