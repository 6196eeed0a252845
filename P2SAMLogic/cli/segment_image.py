"""``p2sam segment-image``: P²SAM in 2D, one reference image and mask onto target images."""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from pathlib import Path
from typing import List

from .. import __version__
from ..errors import P2SAMError
from .options import add_debug_option, add_model_options


SEGMENT_IMAGE_HELP = """\
Segment, in each TARGET image, the structure outlined by REFERENCE_MASK on
REFERENCE, with P²SAM: the reference is encoded once, its masked features are
clustered into parts (k-means++), the parts are matched on each target to
place prompts (points for SAM; boxes for box-trained LiteMedSAM), the decoder
runs a short cascade per candidate, and the candidate whose masked features
are closest to the reference's (exact Wasserstein distance) wins.

Many targets with one reference is how a video is segmented: one reference
encode, one clustering per part count, whatever the number of targets.

Inputs
  images   grey, RGB or RGBA; 8- or 16-bit (PNG, JPEG, TIFF, BMP...)
  masks    0/1 or 0/255 grey, palette (index > 0 is foreground) or RGB;
           same size as REFERENCE

Outputs (in OUTPUT_DIR, created if needed; nothing is written if an input is bad)
  <target stem>.png   0/255 mask, the target's size
  results.json        per target: method, chosen candidate (part count, box
                      scale), its score, the prompts (points x,y and box
                      x0,y0,x1,y1 in target pixels), every candidate's score,
                      stage timings; plus the model's name and SHA-256, the
                      parameters and the package version. Masks are
                      unreviewed proposals.

Exit status: 0 on success, 2 on a bad input or option (the message names it).

Examples
  p2sam segment-image --reference ref.png --reference-mask ref_mask.png \\
      --target visit2.png --output-dir out/
  p2sam segment-image --reference f1.jpg --reference-mask m1.png \\
      --target frames/*.jpg --output-dir video_masks/ --device cuda
  p2sam segment-image ... --model sam_vit_b_01ec64.pth --model-type vit_b
"""


def add_segment_image_parser(sub) -> argparse.ArgumentParser:
    """Add ``segment-image`` to the ``p2sam`` sub-commands ``sub``."""
    p = sub.add_parser("segment-image", help="segment 2D target images from one reference image and mask",
                       description=SEGMENT_IMAGE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    io = p.add_argument_group("inputs and outputs")
    io.add_argument("--reference", required=True, metavar="R", help="reference (prior) image file")
    io.add_argument("--reference-mask", required=True, metavar="RM", help="mask of the structure on R")
    io.add_argument("--target", required=True, nargs="+", metavar="T", help="one or more target images")
    io.add_argument("--output-dir", required=True, metavar="D", help="folder for the masks and results.json")
    io.add_argument("--overwrite", action="store_true",
                    help="replace existing masks / results.json in D (default: refuse)")
    add_model_options(p)
    m = p.add_argument_group("method")
    m.add_argument("--method", default="p2sam", choices=["p2sam", "persam", "no-retrieval"],
                   help="p2sam (default): retrieval over part counts 1..MAX_PARTS (and box sizes for box "
                        "models); persam: one prototype, one positive and one negative prompt; "
                        "no-retrieval: exactly MAX_PARTS parts, one candidate")
    m.add_argument("--max-parts", type=int, default=5, metavar="N", help="largest foreground part count (default 5)")
    m.add_argument("--negative-parts", type=int, default=1, metavar="M",
                   help="background parts, one negative prompt each (default 1)")
    m.add_argument("--search-context", type=float, default=2.0, metavar="C",
                   help="search each target in a window around the reference structure's position: the "
                        "structure's box grown by C times its size per side (default 2; for follow-ups and "
                        "videos, where the structure moves but stays near its prior place)")
    m.add_argument("--whole-image", action="store_true",
                   help="search the whole target instead of a window (objects that can be anywhere)")
    m.add_argument("--crop-pass", action="store_true",
                   help="add a second pass that re-encodes a crop around the first result (off by default: "
                        "it did not help on the development data, see README)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_debug_option(p)
    p.set_defaults(func=run_segment_image)
    return p


def _prepare_output_dir(out_dir: Path, names: List[str], overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise P2SAMError(f"{out_dir}: output path exists and is not a folder")
    clashes = [n for n in names if (out_dir / n).exists()]
    if clashes and not overwrite:
        raise P2SAMError(f"{out_dir}: already holds {', '.join(clashes[:3])}"
                         f"{'...' if len(clashes) > 3 else ''}; use --overwrite to replace")
    parent = out_dir if out_dir.exists() else out_dir.parent
    while not parent.exists():
        parent = parent.parent
    if not os.access(parent, os.W_OK):
        raise P2SAMError(f"{out_dir}: output folder is not writable")


def run_segment_image(args: argparse.Namespace) -> int:
    import numpy as np
    from tqdm import tqdm

    from ..errors import InputError
    from ..io.images2d import check_mask, read_image, read_mask, write_png_atomic, write_text_atomic
    from ..models import load_model
    from ..method.segmenter import P2SAMConfig, P2SAMSegmenter

    config = P2SAMConfig(method=args.method, max_parts=args.max_parts, negative_parts=args.negative_parts,
                         crop_pass=args.crop_pass,
                         search_context=None if args.whole_image else args.search_context).validate()
    # read and check every input before loading the model or writing anything
    ref_image = read_image(args.reference)
    ref_mask = check_mask(read_mask(args.reference_mask), ref_image.shape, args.reference_mask, args.reference)
    stems = [Path(t).stem for t in args.target]
    folded = [s.casefold() for s in stems]  # case-insensitive file systems
    dupes = sorted({s for s, f in zip(stems, folded) if folded.count(f) > 1})
    if dupes:
        raise InputError("--target", f"several targets share the file stem '{dupes[0]}'; their masks would "
                         "overwrite each other")
    targets = [read_image(t) for t in args.target]
    out_dir = Path(args.output_dir)
    _prepare_output_dir(out_dir, [s + ".png" for s in stems] + ["results.json"], args.overwrite)

    model = load_model(args.model, args.model_type, args.device)
    segmenter = P2SAMSegmenter(model, config)
    ref = segmenter.prepare_reference(ref_image, ref_mask, args.reference_mask)
    results = []
    masks = []
    for path, image in tqdm(list(zip(args.target, targets)), desc="segmenting", unit="image",
                            disable=args.quiet, file=sys.stderr):
        res = segmenter.segment(ref, image)
        masks.append(res.mask)
        entry = {"target": str(path), "mask": Path(path).stem + ".png", "method": config.method,
                 "size": [int(image.shape[1]), int(image.shape[0])]}
        entry.update(res.summary())
        results.append(entry)
    report = {
        "tool": "p2sam segment-image",
        "version": __version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "status": "unreviewed proposal",
        "model": model.describe(),
        "parameters": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(config).items()},
        "reference": {"image": str(args.reference), "mask": str(args.reference_mask),
                      "area_pixels": int(ref_mask.sum()), "feature_fallback": ref.foreground.fallback,
                      "clusterings": ref.clusterings,
                      "timings_s": {k: round(v, 4) for k, v in ref.timings.items()}},
        "encoder_calls": model.encode_calls,
        "targets": results,
    }
    # every mask and results.json: all replaced, or none (outputs.write_all)
    from ..io.outputs import write_all_into

    writers = [(out_dir / entry["mask"], lambda entry=entry, mask=mask: write_png_atomic(
        out_dir / entry["mask"], (mask.astype(np.uint8) * 255))) for entry, mask in zip(results, masks)]
    writers.append((out_dir / "results.json",
                    lambda: write_text_atomic(out_dir / "results.json", json.dumps(report, indent=2))))
    write_all_into(out_dir, writers)
    if not args.quiet:
        for entry in results:
            ch = entry["chosen"]
            print(f"{entry['target']}: {entry['area_pixels']} px, parts={ch['parts']} scale={ch['scale']}"
                  f"{' (transposed)' if ch['transposed'] else ''} score={entry['score']}")
        print(f"wrote {len(results)} mask(s) and results.json to {out_dir}")
    return 0
