"""The ``p2sam`` command line: the parser of every sub-command and :func:`main` (exit statuses).

``p2sam propagate`` (:mod:`.propagate_cmd`): carry a prior CT's segmentation onto a follow-up CT (3D, the main job).
``p2sam segment-image`` (:mod:`.segment_image`): carry a reference image's mask onto target images (2D).
``p2sam propagate-many`` (:mod:`.cohort`): ``propagate`` on every case of a manifest, on Dask.
"""
from __future__ import annotations

import argparse
import sys
import traceback
import warnings
from typing import List, Optional

from .. import __version__
from ..errors import P2SAMError
from .cohort import add_parser as add_propagate_many_parser  # argparse only; Dask is imported when it runs
from .propagate_cmd import add_propagate_parser
from .segment_image import add_segment_image_parser


def build_parser() -> argparse.ArgumentParser:
    """The ``p2sam`` parser: ``propagate``, ``segment-image`` and ``propagate-many``."""
    parser = argparse.ArgumentParser(
        prog="p2sam",
        description="P²SAM: carry a prior segmentation onto a new image with a frozen Segment-Anything "
                    "model (one-shot, training-free).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run 'p2sam COMMAND --help' for a command's manual.\n\n"
               "Environment: P2SAM_NO_MALLOPT=1 leaves glibc's allocator settings alone (they make\n"
               "CPU encoding ~1.7x faster; same results); P2SAM_JIT=1 runs the image encoder as a\n"
               "traced TorchScript graph on the CPU (same results; no faster here). See\n"
               "docs/speed.md.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="print the traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_propagate_parser(sub)
    add_segment_image_parser(sub)
    add_propagate_many_parser(sub)
    return parser


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def main(argv: Optional[List[str]] = None) -> int:
    """Run ``p2sam``. Exit status: 0 done; 2 bad input or option (the message names it); 1 an output
    could not be written or an unexpected error (one line; ``--debug`` adds the traceback); 130
    interrupted. On 1, 2 and 130 no output file was replaced."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    from ..errors import OutputError
    from ..runtime import tune_process

    debug = bool(getattr(args, "debug", False))
    tune_process()  # glibc allocator settings for fast CPU inference (see runtime.py)
    try:
        with warnings.catch_warnings():  # warnings for people: "p2sam: warning: <file>: <what>"
            warnings.showwarning = lambda message, *a, **k: print(f"p2sam: warning: {message}", file=sys.stderr)
            return int(args.func(args) or 0)
    except OutputError as exc:
        if debug:
            traceback.print_exc()
        print(f"p2sam: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except P2SAMError as exc:
        if debug:
            traceback.print_exc()
        print(f"p2sam: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("p2sam: interrupted; nothing more was written", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - a bug or an environment problem: one line, the trace on request
        if debug:
            raise
        print(f"p2sam: error: {exc.__class__.__name__}: {_one_line(exc)} (no output was replaced; run again with "
              "--debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
