"""Step 3, candidate decoding: the decoder on each candidate's prompts (boxes, batched per grid region;
the point cascade), refinements, the registered contour's own prompts and the optional crop pass."""
from __future__ import annotations

import time
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from ..models.base import DecodeOutput, Embedding
from .boxes import _area, _box_around, box_region, mask_box, union_region
from .results import Candidate
from .roi import roi_context


class CandidateDecoding:
    """Masks (decoder logits) for candidates' prompts.

    A part of :class:`~P2SAMLogic.method.segmenter.P2SAMSegmenter` (which inherits it): it reads
    ``self.model`` (a :class:`~P2SAMLogic.models.base.PromptableModel`) and ``self.config`` (a
    :class:`~P2SAMLogic.method.config.P2SAMConfig`) and calls the other steps through ``self``.
    """

    def _decode_boxes(self, emb: Embedding, cands: List[Candidate]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Decode each candidate's box; ``B x 1 x L x L`` logits and ``B`` IoUs.

        One batched call on the whole grid, or (``local_decode``) on grid regions around the
        boxes: candidates with equal regions (or, with ``batch_region_slack``, nearly equal ones,
        on the union) share one batched call.
        """
        boxes = np.array([cd.box for cd in cands], dtype=np.float64)
        points = labels = None
        negatives = cands[0].negative_points if cands and self.config.box_negatives else []
        if negatives:
            points = np.array([cd.negative_points for cd in cands], dtype=np.float64)
            labels = np.zeros(points.shape[:2], dtype=np.int64)
        if not self.config.local_decode:
            out = self.model.decode(emb, points=points, point_labels=labels, boxes=boxes)
            return out.low_res_logits, out.iou
        regions = [box_region(emb, b, self.config.decode_context) for b in boxes]
        slack = self.config.batch_region_slack
        groups: List[Tuple[Tuple[int, int, int, int], List[int]]] = []
        for i, reg in enumerate(regions):
            for gi, (greg, members) in enumerate(groups):
                union = union_region(greg, reg)
                if reg == greg or (slack is not None and
                                   _area(union) <= (1.0 + slack) * max(_area(regions[j]) for j in members + [i])):
                    groups[gi] = (union, members + [i])
                    break
            else:
                groups.append((reg, [i]))
        logits: List[Optional[torch.Tensor]] = [None] * len(cands)
        ious: List[Optional[torch.Tensor]] = [None] * len(cands)
        for reg, members in groups:
            out = self.model.decode(emb, boxes=boxes[members], region=reg,
                                    points=None if points is None else points[members],
                                    point_labels=None if labels is None else labels[members])
            for j, i in enumerate(members):
                logits[i], ious[i] = out.low_res_logits[j:j + 1], out.iou[j:j + 1]
        return torch.cat(logits), torch.cat(ious)  # type: ignore[arg-type]

    def _cascade(self, emb: Embedding, cands: List[Candidate]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Point prompts: the three-call cascade, every candidate batched per call.

        (a) points; (b) points + (a)'s logits as ``mask_input``; (c) points +
        the box of (b)'s mask + (b)'s logits. Returns ``B x 1 x L x L`` logits and ``B`` IoUs.
        """
        model = self.model
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

    def _refine(self, emb: Embedding, logits: torch.Tensor) -> Optional[DecodeOutput]:
        """One refinement of a ``1 x 1 x L x L`` prediction: its mask's box plus its logits as
        ``mask_input``. None when the prediction is empty (no box to give)."""
        box = self._boxes_of(emb, logits)[0]
        if box is None:
            return None
        region = (box_region(emb, box, self.config.decode_context)
                  if self.config.local_decode and self.config.local_refine else None)
        return self.model.decode(emb, boxes=box[None], mask_input=logits, region=region)

    def _boxes_of(self, emb: Embedding, logits: torch.Tensor) -> List[Optional[np.ndarray]]:
        masks = emb.frame.logits_to_original(logits)[:, 0] > 0
        return [mask_box(m) for m in masks.cpu().numpy()]

    def _registered_candidates(self, emb: Embedding, centre: np.ndarray, size: Tuple[float, float],
                               prior_low: torch.Tensor, negatives: List[List[float]]
                               ) -> Tuple[List[Candidate], torch.Tensor, torch.Tensor]:
        """Candidates prompted by the registered contour itself (``config.registered_prompts``):

        * ``box``: its tight box (``centre``, ``size``: original pixels), decoded once;
        * ``box refined``: that decode refined (its own mask's box + its logits as ``mask_input``), as
          often as ``refine_steps``: the box follows the model where the registered box was too large;
        * ``box+mask``: the box with the registered mask itself as ``mask_input`` (``prior_low``:
          bool ``L x L`` on the low-res mask grid).

        Returns the candidates and their ``B x 1 x L x L`` logits and ``B`` IoUs.
        """
        kinds = self.config.registered_prompts
        shape = emb.frame.original_size
        box = _box_around(centre, size, shape)
        out: List[Candidate] = []
        logits: List[torch.Tensor] = []
        ious: List[torch.Tensor] = []

        def add(kind: str, lg: torch.Tensor, iou: torch.Tensor, bx: np.ndarray) -> None:
            out.append(Candidate(parts=0, locator=f"registered {kind}", box=[float(v) for v in bx],
                                 negative_points=negatives))
            logits.append(lg)
            ious.append(iou)

        def region(bx: np.ndarray) -> Optional[Tuple[int, int, int, int]]:
            return box_region(emb, bx, self.config.decode_context) if self.config.local_decode else None

        if "box" in kinds or "box refined" in kinds:
            first = self.model.decode(emb, boxes=box[None], region=region(box))
            if "box" in kinds:
                add("box", first.low_res_logits, first.iou, box)
            if "box refined" in kinds:
                lg, iou, bx = first.low_res_logits, first.iou, box
                for _ in range(max(1, self.config.refine_steps)):
                    nb = self._boxes_of(emb, lg)[0]
                    if nb is None:
                        break
                    step = self.model.decode(emb, boxes=nb[None], mask_input=lg, region=region(nb))
                    if not bool((step.low_res_logits > 0).any()):
                        break
                    lg, iou, bx = step.low_res_logits, step.iou, nb
                add("box refined", lg, iou, bx)
        if "box+mask" in kinds:
            mask_logits = (prior_low.float() * 2.0 - 1.0)[None, None] * self.config.mask_prompt_logit
            res = self.model.decode(emb, boxes=box[None], mask_input=mask_logits, region=region(box))
            add("box+mask", res.low_res_logits, res.iou, box)
        if not out:
            return [], torch.zeros(0), torch.zeros(0)
        return out, torch.cat(logits), torch.cat(ious)

    def _crop_pass(self, image: np.ndarray, mask: np.ndarray, timings: Dict[str, float]) -> Tuple[np.ndarray, np.ndarray]:
        """Re-encode a crop around ``mask`` and decode its box there; returns the new mask and the crop box."""
        box = mask_box(mask)
        h, w = mask.shape
        crop_box = roi_context(box, (h, w), self.config.crop_context, clip=True)
        x0, y0, x1, y1 = crop_box.astype(int)
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
            out = self._refine(emb, out.low_res_logits) or out
        local_mask = emb.frame.logits_to_original(out.low_res_logits)[0, 0].cpu().numpy() > 0
        timings["crop_decode"] = time.perf_counter() - t
        if not local_mask.any():
            return mask, None
        full = np.zeros_like(mask)
        full[y0:y1, x0:x1] = local_mask
        return full, crop_box
