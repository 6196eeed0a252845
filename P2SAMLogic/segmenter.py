"""P²SAM in 2D: part-aware positive prompts, negative background prompts, retrieval.

Usage::

    model = load_model("litemedsam")
    seg = P2SAMSegmenter(model, P2SAMConfig())
    ref = seg.prepare_reference(ref_rgb, ref_mask)      # encode + cluster once
    for target in targets:
        result = seg.segment(ref, target)               # encode target, prompt, decode, retrieve

Frames: images are ``H x W x 3`` uint8 RGB and masks ``H x W`` bool, both in
the original pixel frame; points ``(x, y)`` and boxes ``(x0, y0, x1, y1)`` are in
original-image pixels (see :mod:`P2SAMLogic.models.frames`).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .errors import InputError
from .matching import peak_points, similarity_maps
from .models.base import Embedding, PromptableModel
from .models.frames import coverage_on_grid
from .parts import PooledFeatures, background_features, foreground_features, part_prototypes
from .retrieval import wasserstein_distance

METHODS = ("p2sam", "persam", "no-retrieval")


@dataclass
class P2SAMConfig:
    """Parameters of the method (all recorded in every result's provenance).

    Attributes:
        method: ``p2sam`` (retrieval over part counts and, for box models, box
            sizes), ``persam`` (one prototype, one positive and one negative
            prompt), or ``no-retrieval`` (fixed ``max_parts`` parts, one candidate).
        max_parts: largest number of foreground parts ``n`` (candidates ``1..n``).
        negative_parts: number of background parts ``m`` (negative prompts).
        background_context: background region = structure box grown by this
            fraction of its size on each side (feature grid).
        box_scales: box-model candidates: reference box size times these.
        transposed_boxes: box-model candidates also with width and height swapped.
        refine: box models: a second decoder call with the box of the first
            mask and its logits as ``mask_input``.
        crop_pass: re-encode a crop around the chosen mask and decode again at
            the higher resolution (for small structures).
        crop_context: crop = chosen box grown by this fraction of its size per side.
        negative_filter: drop predicted cells whose features match a background
            part better than every foreground part.
        kmeans_init: k-means++ restarts; seed: their random seed.
    """

    method: str = "p2sam"
    max_parts: int = 5
    negative_parts: int = 1
    background_context: float = 1.0
    box_scales: Tuple[float, ...] = (0.8, 1.0, 1.25)
    transposed_boxes: bool = True
    refine: bool = True
    crop_pass: bool = True
    crop_context: float = 1.0
    negative_filter: bool = False
    kmeans_init: int = 10
    seed: int = 0

    def validate(self) -> "P2SAMConfig":
        if self.method not in METHODS:
            raise InputError("--method", f"unknown method '{self.method}'; expected one of {', '.join(METHODS)}")
        if not 1 <= int(self.max_parts) <= 16:
            raise InputError("--max-parts", f"must be between 1 and 16, got {self.max_parts}")
        if not 0 <= int(self.negative_parts) <= 16:
            raise InputError("--negative-parts", f"must be between 0 and 16, got {self.negative_parts}")
        if not self.box_scales or min(self.box_scales) <= 0:
            raise InputError("box_scales", f"must be positive numbers, got {self.box_scales}")
        return self


@dataclass
class ReferenceState:
    """Everything derived from the reference image and mask, computed once and reused per target.

    Attributes:
        embedding: the reference image's encoding.
        mask: ``H x W`` bool reference mask (original frame).
        coverage: float ``g x g`` mask coverage of each feature cell.
        foreground / background: pooled features inside the mask / around it.
        box: ``(x0, y0, x1, y1)`` of the mask, original pixels (inclusive extent + 1).
        relative_size: ``(w, h)`` of the box divided by the image's longest side.
        prototypes / negatives: part prototypes per part count, filled lazily.
        clusterings: how many k-means runs were made (one per part count, ever).
    """

    embedding: Embedding
    mask: np.ndarray
    coverage: torch.Tensor
    foreground: PooledFeatures
    background: Optional[PooledFeatures]
    box: np.ndarray
    relative_size: Tuple[float, float]
    prototypes: Dict[int, torch.Tensor] = field(default_factory=dict)
    negatives: Dict[int, torch.Tensor] = field(default_factory=dict)
    clusterings: int = 0
    timings: Dict[str, float] = field(default_factory=dict)


@dataclass
class Candidate:
    """One prompt set tried on a target, and how it scored."""

    parts: int
    scale: float = 1.0
    transposed: bool = False
    positive_points: List[List[float]] = field(default_factory=list)
    negative_points: List[List[float]] = field(default_factory=list)
    box: Optional[List[float]] = None
    score: float = math.inf
    predicted_iou: float = 0.0
    area_cells: float = 0.0

    def summary(self) -> dict:
        d = asdict(self)
        d["score"] = None if not math.isfinite(self.score) else round(self.score, 4)
        d["predicted_iou"] = round(self.predicted_iou, 4)
        for k in ("positive_points", "negative_points"):
            d[k] = [[round(v, 1) for v in p] for p in d[k]]
        if d["box"] is not None:
            d["box"] = [round(v, 1) for v in d["box"]]
        return d


@dataclass
class SegmentationResult:
    """The outcome for one target image.

    Attributes:
        mask: ``H x W`` bool in the target's original frame.
        chosen: the winning :class:`Candidate` (its prompts are what to draw).
        candidates: every candidate tried, with its score.
        score: the winner's Wasserstein distance (lower is better; ``inf`` = empty).
        crop_box: ``(x0, y0, x1, y1)`` of the second-pass crop, or None.
        timings: seconds per stage.
    """

    mask: np.ndarray
    chosen: Candidate
    candidates: List[Candidate]
    score: float
    crop_box: Optional[List[float]]
    timings: Dict[str, float]

    def summary(self) -> dict:
        return {
            "chosen": self.chosen.summary(),
            "score": None if not math.isfinite(self.score) else round(self.score, 4),
            "area_pixels": int(self.mask.sum()),
            "crop_box": None if self.crop_box is None else [round(v, 1) for v in self.crop_box],
            "candidates": [c.summary() for c in self.candidates],
            "timings_s": {k: round(v, 4) for k, v in self.timings.items()},
        }


def mask_box(mask: np.ndarray) -> Optional[np.ndarray]:
    """``(x0, y0, x1, y1)`` float box of a bool ``H x W`` mask (x1 = last column + 1), None if empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=np.float64)


def _box_around(centre: np.ndarray, size: Tuple[float, float], shape: Tuple[int, int]) -> np.ndarray:
    w, h = size
    x0 = np.clip(centre[0] - w / 2.0, 0, shape[1] - 1)
    y0 = np.clip(centre[1] - h / 2.0, 0, shape[0] - 1)
    x1 = np.clip(centre[0] + w / 2.0, x0 + 1, shape[1])
    y1 = np.clip(centre[1] + h / 2.0, y0 + 1, shape[0])
    return np.array([x0, y0, x1, y1])


class P2SAMSegmenter:
    """P²SAM on one promptable model; see the module docstring for usage."""

    def __init__(self, model: PromptableModel, config: Optional[P2SAMConfig] = None) -> None:
        self.model = model
        self.config = (config or P2SAMConfig()).validate()

    # -- reference ---------------------------------------------------------------
    def prepare_reference(self, image: np.ndarray, mask: np.ndarray, source: str = "reference") -> ReferenceState:
        """Encode the reference image and pool its features (once per reference).

        Args:
            image: ``H x W x 3`` uint8 RGB.
            mask: ``H x W`` bool, non-empty.
            source: name used in error messages (e.g. the mask's file path).
        """
        mask = np.asarray(mask).astype(bool)
        if mask.shape != image.shape[:2]:
            raise InputError(source, f"mask shape {mask.shape} differs from image shape {image.shape[:2]}")
        if not mask.any():
            raise InputError(source, "mask is empty")
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
        )
        ref.timings["reference_encode"] = t1 - t0
        ref.timings["pooling"] = time.perf_counter() - t1
        return ref

    def _prototypes(self, ref: ReferenceState, n: int) -> torch.Tensor:
        if n not in ref.prototypes:
            t = time.perf_counter()
            ref.prototypes[n] = part_prototypes(ref.foreground, n, self.config.seed, self.config.kmeans_init)
            ref.clusterings += 1
            ref.timings["cluster"] = ref.timings.get("cluster", 0.0) + time.perf_counter() - t
        return ref.prototypes[n]

    def _negatives(self, ref: ReferenceState, m: int) -> Optional[torch.Tensor]:
        if m <= 0 or ref.background is None:
            return None
        if m not in ref.negatives:
            t = time.perf_counter()
            ref.negatives[m] = part_prototypes(ref.background, m, self.config.seed, self.config.kmeans_init)
            ref.clusterings += 1
            ref.timings["cluster"] = ref.timings.get("cluster", 0.0) + time.perf_counter() - t
        return ref.negatives[m]

    def part_counts(self) -> List[int]:
        c = self.config
        if c.method == "persam":
            return [1]
        if c.method == "no-retrieval":
            return [c.max_parts]
        return list(range(1, c.max_parts + 1))

    # -- target ------------------------------------------------------------------
    def segment(self, ref: ReferenceState, image: np.ndarray) -> SegmentationResult:
        """Segment the reference's structure in one target image (``H x W x 3`` uint8 RGB)."""
        timings: Dict[str, float] = {}
        t = time.perf_counter()
        emb = self.model.encode([image])[0]
        timings["encode"] = time.perf_counter() - t
        t = time.perf_counter()
        candidates = self._candidates(ref, emb, image.shape[:2])
        timings["match"] = time.perf_counter() - t
        t = time.perf_counter()
        logits, iou = self._cascade(emb, candidates)
        timings["decode"] = time.perf_counter() - t
        t = time.perf_counter()
        best = self._retrieve(ref, emb, candidates, logits, iou)
        timings["retrieval"] = time.perf_counter() - t
        chosen = candidates[best]
        mask = emb.frame.logits_to_original(logits[best:best + 1])[0, 0].cpu().numpy() > 0
        if self.config.negative_filter:
            mask &= self._negative_keep(ref, emb, chosen.parts)
        crop_box = None
        if self.config.crop_pass and mask.any():
            t = time.perf_counter()
            mask, crop_box = self._crop_pass(image, mask, timings)
            timings["crop_total"] = time.perf_counter() - t
        timings["total"] = sum(v for k, v in timings.items() if k in ("encode", "match", "decode", "retrieval", "crop_total"))
        return SegmentationResult(mask=mask, chosen=chosen, candidates=candidates, score=chosen.score,
                                  crop_box=None if crop_box is None else crop_box.tolist(), timings=timings)

    def segment_with_box(self, image: np.ndarray, box: Sequence[float]) -> SegmentationResult:
        """Decode one given box (``x0, y0, x1, y1`` original pixels) with the same cascade and crop pass.

        The oracle-box ceiling of the benchmark, and a user-drawn box in Slicer.
        """
        timings: Dict[str, float] = {}
        emb = self.model.encode([image])[0]
        cand = Candidate(parts=0, box=[float(v) for v in box])
        logits, iou = self._cascade(emb, [cand], force_box=True)
        mask = emb.frame.logits_to_original(logits[:1])[0, 0].cpu().numpy() > 0
        crop_box = None
        if self.config.crop_pass and mask.any():
            mask, crop_box = self._crop_pass(image, mask, timings)
        cand.predicted_iou = float(iou[0])
        return SegmentationResult(mask, cand, [cand], math.nan, None if crop_box is None else crop_box.tolist(), timings)

    # -- steps -------------------------------------------------------------------
    def _candidates(self, ref: ReferenceState, emb: Embedding, shape: Tuple[int, int]) -> List[Candidate]:
        c = self.config
        feats = emb.features[0]
        frame = emb.frame
        negatives: np.ndarray = np.zeros((0, 2))
        if c.method == "persam":
            mean_map = similarity_maps(self._prototypes(ref, 1), feats)
            negatives = peak_points(mean_map, frame, lowest=True)
        else:
            neg_protos = self._negatives(ref, c.negative_parts)
            if neg_protos is not None:
                negatives = peak_points(similarity_maps(neg_protos, feats), frame)
        out: List[Candidate] = []
        longest = float(max(shape))
        ref_w, ref_h = ref.relative_size[0] * longest, ref.relative_size[1] * longest
        for n in self.part_counts():
            protos = self._prototypes(ref, n)
            pos = peak_points(similarity_maps(protos, feats), frame)
            if self.model.prompt_modality == "points":
                out.append(Candidate(parts=len(protos), positive_points=pos.tolist(), negative_points=negatives.tolist()))
                continue
            centre = np.median(pos, axis=0)
            variants = [(1.0, False)]
            if c.method == "p2sam":
                variants = [(s, False) for s in c.box_scales]
                if c.transposed_boxes and abs(ref_w - ref_h) > 0.1 * max(ref_w, ref_h):
                    variants += [(s, True) for s in c.box_scales]
            for s, tr in variants:
                size = (ref_h * s, ref_w * s) if tr else (ref_w * s, ref_h * s)
                box = _box_around(centre, size, shape)
                out.append(Candidate(parts=len(protos), scale=s, transposed=tr, positive_points=pos.tolist(),
                                     negative_points=negatives.tolist(), box=box.tolist()))
        return out

    def _boxes_of(self, emb: Embedding, logits: torch.Tensor) -> List[Optional[np.ndarray]]:
        masks = emb.frame.logits_to_original(logits)[:, 0] > 0
        return [mask_box(m) for m in masks.cpu().numpy()]

    def _cascade(self, emb: Embedding, cands: List[Candidate], force_box: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
        """Decode every candidate in one batch per cascade step; returns final ``B x 1 x L x L`` logits and ``B`` IoUs."""
        model = self.model
        if model.prompt_modality == "box" or force_box:
            boxes = np.array([cd.box for cd in cands], dtype=np.float64)
            out = model.decode(emb, boxes=boxes)
            if self.config.refine:
                nxt = self._boxes_of(emb, out.low_res_logits)
                keep = [i for i, b in enumerate(nxt) if b is not None]
                if keep:
                    ref_out = model.decode(emb, boxes=np.stack([nxt[i] for i in keep]),
                                           mask_input=out.low_res_logits[keep])
                    out.low_res_logits[keep] = ref_out.low_res_logits
                    out.iou[keep] = ref_out.iou
            return out.low_res_logits, out.iou
        # point prompts: the reference method's three-call cascade, padded to a common length
        n_max = max(len(cd.positive_points) + len(cd.negative_points) for cd in cands)
        pts = np.zeros((len(cands), n_max, 2))
        lab = -np.ones((len(cands), n_max), dtype=np.int64)
        for i, cd in enumerate(cands):
            p = cd.positive_points + cd.negative_points
            pts[i, :len(p)] = p
            lab[i, :len(cd.positive_points)] = 1
            lab[i, len(cd.positive_points):len(p)] = 0
        a = model.decode(emb, points=pts, point_labels=lab)
        b = model.decode(emb, points=pts, point_labels=lab, mask_input=a.low_res_logits)
        boxes = self._boxes_of(emb, b.low_res_logits)
        logits, iou = b.low_res_logits.clone(), b.iou.clone()
        keep = [i for i, bx in enumerate(boxes) if bx is not None]
        if keep:
            c = model.decode(emb, points=pts[keep], point_labels=lab[keep], boxes=np.stack([boxes[i] for i in keep]),
                             mask_input=b.low_res_logits[keep])
            logits[keep] = c.low_res_logits
            iou[keep] = c.iou
            for j, i in enumerate(keep):
                cands[i].box = boxes[i].tolist()
        return logits, iou

    def _retrieve(self, ref: ReferenceState, emb: Embedding, cands: List[Candidate],
                  logits: torch.Tensor, iou: torch.Tensor) -> int:
        g = emb.grid
        valid = emb.frame.grid_valid(g).to(logits.device)
        cover = torch.nn.functional.adaptive_avg_pool2d((logits > 0).float(), g)[:, 0] * valid
        feats = emb.features[0]
        single = len(cands) == 1
        for i, cd in enumerate(cands):
            cd.predicted_iou = float(iou[i])
            cd.area_cells = float(cover[i].sum())
            if cd.area_cells <= 0:
                cd.score = math.inf
                continue
            if single:
                cd.score = 0.0
                continue
            pooled = foreground_features(feats, cover[i])
            cd.score = wasserstein_distance(pooled.features, ref.foreground.features, pooled.weights, ref.foreground.weights)
        scores = [cd.score for cd in cands]
        return int(np.argmin(scores))

    def _negative_keep(self, ref: ReferenceState, emb: Embedding, parts: int) -> np.ndarray:
        neg = self._negatives(ref, max(1, self.config.negative_parts))
        if neg is None:
            return np.ones(emb.frame.original_size, dtype=bool)
        feats = emb.features[0]
        fg = similarity_maps(self._prototypes(ref, parts), feats).max(0).values
        bg = similarity_maps(neg, feats).max(0).values
        keep = (fg >= bg).float()[None, None]
        up = emb.frame.logits_to_original(torch.nn.functional.interpolate(keep, scale_factor=4) - 0.5)
        return up[0, 0].cpu().numpy() > 0

    def _crop_pass(self, image: np.ndarray, mask: np.ndarray, timings: Dict[str, float]) -> Tuple[np.ndarray, np.ndarray]:
        """Re-encode a crop around ``mask`` and decode its box there; returns the new mask and the crop box."""
        box = mask_box(mask)
        h, w = mask.shape
        bw, bh = box[2] - box[0], box[3] - box[1]
        side = max(bw, bh) * (1.0 + 2.0 * self.config.crop_context)
        side = max(side, 32.0)
        cx, cy = (box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0
        x0, x1 = int(max(0, np.floor(cx - side / 2))), int(min(w, np.ceil(cx + side / 2)))
        y0, y1 = int(max(0, np.floor(cy - side / 2))), int(min(h, np.ceil(cy + side / 2)))
        crop_box = np.array([x0, y0, x1, y1], dtype=np.float64)
        # no gain when the crop is (almost) the whole image
        if (x1 - x0) * (y1 - y0) > 0.7 * h * w:
            return mask, None
        t = time.perf_counter()
        crop = np.ascontiguousarray(image[y0:y1, x0:x1])
        emb = self.model.encode([crop])[0]
        timings["crop_encode"] = time.perf_counter() - t
        t = time.perf_counter()
        local = box - np.array([x0, y0, x0, y0])
        out = self.model.decode(emb, boxes=local[None])
        if self.config.refine:
            nb = self._boxes_of(emb, out.low_res_logits)[0]
            if nb is not None:
                out = self.model.decode(emb, boxes=nb[None], mask_input=out.low_res_logits)
        local_mask = emb.frame.logits_to_original(out.low_res_logits)[0, 0].cpu().numpy() > 0
        timings["crop_decode"] = time.perf_counter() - t
        if not local_mask.any():
            return mask, None
        full = np.zeros_like(mask)
        full[y0:y1, x0:x1] = local_mask
        return full, crop_box
