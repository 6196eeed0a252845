"""``p2sam propagate --followup F1 F2 ... --output-dir D``: one prior onto several follow-ups.

Called by :mod:`P2SAMLogic.cli` when several follow-ups or ``--output-dir`` are given. Every
input is read and every output path checked before the model loads; the model is loaded once
(:func:`P2SAMLogic.propagation.series.propagate_series`); the outputs are written only after every
follow-up succeeded, all or none (:func:`P2SAMLogic.io.outputs.write_all`).

In ``D``: ``<name><ext>`` (the segmentation, ``ext`` by ``--output-format``) and
``<name>.overlay.png`` per follow-up, and ``report.json`` (or ``--report``) for all of them.
``<name>`` is the follow-up's file name without its extensions, or its DICOM folder's name.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Dict

from ..errors import InputError
from .options import pick_series, progress_bar, propagation_config

#: the file each output kind is written to, in the output folder
EXTENSIONS: Dict[str, str] = {"seg.nrrd": ".seg.nrrd", "nifti": ".nii.gz", "dicom-seg": ".seg.dcm",
                              "rtstruct": ".rtstruct.dcm"}


def followup_name(path: str) -> str:
    """The name a follow-up's outputs are given: file name without image extensions, or folder name."""
    from ..io.files import _strip_volume_extension

    p = Path(path)
    if p.is_dir():
        return p.resolve().name
    return os.path.basename(_strip_volume_extension(str(p)))


def propagate_many_followups(args: argparse.Namespace) -> int:
    """Run ``p2sam propagate`` with ``args.followup`` a list (see the module docstring)."""

    from ..io.checksums import input_checksums
    from ..io.images2d import write_png_atomic
    from ..io import check_output_path, check_writable_file, read_segmentation, read_volume, write_segmentation
    from ..io.outputs import dumps_json, write_all_into, write_text_atomic
    from ..propagation.report import overlay_montage
    from ..propagation.series import propagate_series

    if args.output:
        raise InputError("--output", "with several follow-ups give --output-dir D (one output per follow-up)")
    if not args.output_dir:
        raise InputError("--followup", f"{len(args.followup)} follow-ups need --output-dir D (one output each)")
    if args.overlay:
        raise InputError("--overlay", "with --output-dir the overlays are written as D/<name>.overlay.png")
    config, names, window = propagation_config(args)
    kind = args.output_format or "seg.nrrd"
    out_dir = Path(args.output_dir)
    stems = [followup_name(f) for f in args.followup]
    folded = [s.casefold() for s in stems]
    dupes = sorted({f for f, c in zip(args.followup, folded) if folded.count(c) > 1})
    if dupes:
        raise InputError("--followup", f"{', '.join(dupes)} would get the same output name; give the follow-ups "
                                       "distinct file or folder names")
    inputs = {os.path.realpath(p) for p in (args.prior_image, args.prior_segmentation, *args.followup)}
    if os.path.realpath(args.prior_image) in {os.path.realpath(f) for f in args.followup}:
        raise InputError("--followup", "one of the follow-ups is the same file as --prior-image")
    # every input is read and every output checked before the model loads
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(out_dir, "exists and is not a folder")
    parent = out_dir if out_dir.exists() else out_dir.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise InputError(out_dir, f"cannot be created: {parent} is not a writable folder")
    prior, prior_src = read_volume(args.prior_image, pick_series(args.prior_image, args.series_uid))
    follows, sources = [], []
    for f in args.followup:
        image, source = read_volume(f, pick_series(f, args.series_uid))
        follows.append(image)
        sources.append(source)
    segments = read_segmentation(args.prior_segmentation, prior, prior_src, names)
    prior_sums = input_checksums((("prior_image", args.prior_image), ("prior_segmentation", args.prior_segmentation)))
    checksums = [{**prior_sums, **input_checksums((("followup", f),))} for f in args.followup]
    report_path = str(args.report or out_dir / "report.json")
    outputs = [(str(out_dir / (s + EXTENSIONS[kind])), str(out_dir / (s + ".overlay.png"))) for s in stems]
    planned = [report_path] + [p for pair in outputs for p in pair]
    for p in planned:
        if os.path.realpath(p) in inputs:
            raise InputError(p, "is one of the inputs; outputs never overwrite inputs")
    if args.report:
        check_writable_file(args.report, args.overwrite, f"--report {args.report}")
    if out_dir.is_dir():
        for (seg_path, overlay_path), source in zip(outputs, sources):
            check_output_path(seg_path, args.overwrite, source, kind)
            check_writable_file(overlay_path, args.overwrite, overlay_path)
        check_writable_file(report_path, args.overwrite, report_path)
    else:
        for source, seg_path in zip(sources, (o[0] for o in outputs)):  # the folder is made after the run
            if kind in ("dicom-seg", "rtstruct") and (source.kind != "dicom" or len(source.dicom_files) < 2):
                raise InputError(seg_path, f"{kind} output needs every follow-up as a DICOM series of single-frame "
                                           "slices; use --output-format seg.nrrd or nifti")

    bar, progress = progress_bar(args.quiet)

    try:
        series = propagate_series(prior, segments, follows, model=args.model, model_type=args.model_type,
                                  device=args.device, config=config, chain=args.chain, names=stems,
                                  prior_source=prior_src, followup_sources=sources, progress=progress)
    finally:
        bar.close()
    for sums, result in zip(checksums, series.results):
        result.provenance["inputs_sha256"] = sums  # what a later run compares
    overlays = [overlay_montage(f, r, window=window) for f, r in zip(follows, series.results)]
    report = series.report_dict()
    report["inputs"] = {"prior_image": args.prior_image, "prior_segmentation": args.prior_segmentation,
                        "followups": list(args.followup)}
    report["outputs"] = [{"followup": f, "segmentation": o[0], "overlay": o[1], "kind": kind}
                         for f, o in zip(args.followup, outputs)]
    # every segmentation, overlay and the report: all replaced, or none (outputs.write_all)
    writers = []
    for (seg_path, overlay_path), follow, source, result, overlay in zip(outputs, follows, sources, series.results,
                                                                        overlays):
        writers.append((seg_path, lambda seg_path=seg_path, follow=follow, source=source, result=result:
                        write_segmentation(seg_path, result.segments, follow, result.provenance, source,
                                           overwrite=args.overwrite, kind=kind)))
        writers.append((overlay_path, lambda overlay_path=overlay_path, overlay=overlay:
                        write_png_atomic(overlay_path, overlay)))
    writers.append((report_path, lambda: write_text_atomic(report_path, dumps_json(report, indent=2))))
    write_all_into(out_dir, writers)
    if not args.quiet:
        print(series.report_table())
        for w in series.warnings:
            print(f"warning: {w}", file=sys.stderr)
        print(f"wrote {len(series.results)} segmentation(s), overlay(s) and {report_path} to {out_dir}")
    return 0
