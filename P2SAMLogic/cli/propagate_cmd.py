"""``p2sam propagate``: its manual, its options and the run (read, propagate, write all or nothing).

:func:`run_propagate` is the one code path of a propagation from the command line; ``propagate-many``
(:mod:`.cohort`) runs it once per case, parsing each case's options with :func:`propagate_parser`.
"""
from __future__ import annotations

import argparse
import os
import sys

from .options import add_debug_option, add_model_options, pick_series, progress_bar, propagation_config


PROPAGATE_HELP = """\
Carry the segments of a prior-visit scan onto a follow-up scan of the same patient.

  1. registration, per structure: rigid (mutual information, weighted to a
     region around it), then deformable on a box around it (demons for the
     same modality, a B-spline across modalities). The prior carried by it is
     the REGISTERED PRIOR: the localiser, the shape prior and the floor;
  2. a ring (a wall, the myocardium, a PTV ring) is propagated as its filled
     outer region and its cavity; a structure of several pieces piece by piece;
  3. every native prior slice holding a part is one reference, resampled on
     the follow-up's slice grid and cropped to a region of interest (ROI);
     P²SAM on each follow-up slice (default model: the embedded LiteMedSAM):
     parts of the reference structure place prompts, the decoder proposes
     masks, Wasserstein retrieval picks one;
  4. per slice, the model's proposal (fused with the registered prior) where
     the evidence trusts it (predicted IoU, overlap with the registered prior,
     features at least as close to the reference's as the registered prior's);
     elsewhere the registered prior stays and the slice is FLAGGED. Beyond the
     registered extent a slice is added only where the structure grew at that
     end and the proposal looks like the structure;
  5. 3D clean-up (connected components consistent with the prior, holes
     filled in blobs), rings recomposed (outer minus cavity);
  6. report: volumes, change, per slice where the contour came from (model or
     registration), QA score, flags; the share of slices from the model.

Inputs
  P, F  a volume file (.nrrd .nhdr .nii .nii.gz .mha .mhd) or a DICOM series
        folder (the CT series; if the folder holds several, the error lists
        them: choose with --series-uid)
  S     a Slicer .seg.nrrd (segment names and colours kept), a labelmap
        volume (each label a segment), a DICOM RTSTRUCT (rasterised on P) or
        a DICOM SEG

Output O, by extension (or --output-format)
  .seg.nrrd  Slicer segmentation on F's voxel grid: names, colours, provenance
             tags (model, SHA-256, parameters, version, date, status)
  .nii.gz    labelmap (label i = i-th segment) + a label table beside it
             (week3.nii.gz -> week3.labels.json: names, colours, provenance)
  .dcm       DICOM SEG referencing F's series (F must be a DICOM folder); with
             --output-format rtstruct a DICOM RTSTRUCT instead: one ROI per
             segment (name, colour), its outline on every slice as closed
             planar contours in F's frame of reference (holes as inner
             contours), approval status UNAPPROVED
Every output is marked as an UNREVIEWED PROPOSAL. Outputs are written only
after the whole run succeeded, all or none: every file goes to a temporary
beside it and the old files are replaced only when all were written; inputs
are never modified.

Refused before anything runs (exit 2, the message names the file): truncated
or corrupt files (a .nii/.nii.gz shorter than its header says, a broken gzip
stream), voxel axes that are not perpendicular (sheared), NaN or infinite
voxels. After the rigid registration each structure is checked:
  * plausibility: the follow-up must correlate with the prior around it, and
    better than with the alignment moved by 15 mm (docs/method.md); a failed
    check stops the run ("registration failed for segment ...") unless
    --allow-poor-registration (then every slice of it is flagged and its
    change is "n/a (registration failed)");
  * field of view: a structure cut by the follow-up's (or the prior image's)
    field of view keeps its contour, its cut slices are flagged and its change
    is reported as "n/a (cut by FOV)" (report: change_percent null and
    change_not_measurable saying where).

Several follow-ups (e.g. the weekly scans of a treatment course)
  --followup F1 F2 F3 --output-dir D   one run, the model loaded once: D gets
             <name>.seg.nrrd (or the --output-format's extension) and
             <name>.overlay.png per follow-up (name: file stem or DICOM folder
             name) and one report.json for all of them, with the volume course.
  --chain    each follow-up is propagated from the previous one's image and
             proposal (F2 from F1's result...) instead of from P.

Speed: on a CPU each follow-up crop costs one encode (~1 s with LiteMedSAM on
2 cores) plus the decoding of ~8 candidate boxes and their retrieval; the
prior's reference slices are encoded and clustered once. --device cuda runs the
encoder in batches under bf16 autocast. Numbers: Testing/Benchmarks/benchmark_speed.py.

Exit status: 0 on success, 2 on a bad input or option (the message names
it), 1 when an output could not be written (disk full...) or on an unexpected
error (one line; --debug prints the traceback), 130 when interrupted. On any
failure the old output files are left as they were.

Examples
  p2sam propagate --prior-image plan_ct.nrrd --prior-segmentation plan.seg.nrrd \\
      --followup week3_ct/ --output week3.seg.nrrd --report week3.json --overlay week3.png
  p2sam propagate --prior-image plan/ --prior-segmentation plan/RS.dcm \\
      --followup fu/ --series-uid 1.2.3.4 --output fu_seg.dcm --segments GTV,Lung_L
  p2sam propagate --prior-image plan/ --prior-segmentation plan/RS.dcm \\
      --followup fu/ --output fu_rs.dcm --output-format rtstruct
  p2sam propagate --prior-image plan_ct.nrrd --prior-segmentation plan.seg.nrrd \\
      --followup cbct_w1/ cbct_w2/ cbct_w3/ --output-dir course/ [--chain]
"""


def add_propagate_parser(sub) -> argparse.ArgumentParser:
    """Add ``propagate`` to the ``p2sam`` sub-commands ``sub`` (an ``argparse`` sub-parsers action)."""
    q = sub.add_parser("propagate", help="carry a prior scan's segments onto a follow-up scan (3D, main job)",
                       description=PROPAGATE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    io = q.add_argument_group("inputs and outputs")
    io.add_argument("--prior-image", required=True, metavar="P", help="prior (planning) scan: file or DICOM folder")
    io.add_argument("--prior-segmentation", required=True, metavar="S",
                    help="segments on P: .seg.nrrd, labelmap, RTSTRUCT or DICOM SEG")
    io.add_argument("--followup", required=True, nargs="+", metavar="F",
                    help="follow-up scan: file or DICOM folder; several (in visit order) need --output-dir")
    io.add_argument("--output", default=None, metavar="O", help="output segmentation (.seg.nrrd, .nii.gz or .dcm)")
    io.add_argument("--output-dir", default=None, metavar="D",
                    help="folder for one segmentation and overlay per follow-up and report.json (instead of --output)")
    io.add_argument("--output-format", default=None, choices=["seg.nrrd", "nifti", "dicom-seg", "rtstruct"],
                    help="what to write (default: by --output's extension; seg.nrrd with --output-dir)")
    io.add_argument("--chain", action="store_true",
                    help="propagate each follow-up from the previous one's result instead of from P")
    io.add_argument("--segments", default=None, metavar="NAME,...",
                    help="comma-separated names of the segments to propagate (default: all)")
    io.add_argument("--series-uid", action="append", default=None, metavar="UID",
                    help="DICOM series to read where a folder holds several (may be given twice: one for P, "
                         "one for F)")
    io.add_argument("--report", default=None, metavar="R.json", help="write the QA report as JSON")
    io.add_argument("--overlay", default=None, metavar="R.png",
                    help="write a PNG montage of follow-up slices with the proposed and registered prior contours")
    io.add_argument("--overwrite", action="store_true", help="replace existing output files (default: refuse)")
    add_model_options(q)
    m = q.add_argument_group("method")
    m.add_argument("--method", default="p2sam", choices=["p2sam", "registered-box", "deformable", "rigid"],
                   help="p2sam (default); baselines: registered-box (the model prompted with the registered "
                        "prior's box on each slice), deformable (rigid + deformable registration only, no model), "
                        "rigid (rigid registration only)")
    m.add_argument("--deformable", default="auto", choices=["auto", "demons", "bspline", "none"],
                   help="the deformable registration stage (default auto: demons when prior and follow-up are "
                        "the same modality, B-spline with mutual information otherwise; none: rigid only)")
    m.add_argument("--decision", default="evidence", choices=["evidence", "model"],
                   help="evidence (default): per slice, the model's contour only where the evidence trusts it, "
                        "else the registered contour (flagged); model: every non-empty proposal (no fallback)")
    m.add_argument("--no-decompose", action="store_true",
                   help="propagate rings and several-piece structures as one blob each (for comparisons)")
    m.add_argument("--max-parts", type=int, default=5, metavar="N", help="largest foreground part count (default 5)")
    m.add_argument("--negative-parts", type=int, default=1, metavar="M", help="background parts (default 1)")
    m.add_argument("--scale", default="auto", metavar="RULE",
                   help="what the model sees of each follow-up slice: auto (default: the whole slice for MR and "
                        "other non-CT images, a square window 4x the structure's box side on CT), whole, "
                        "ctxC[:zoomZ] (a window C x the box side, zoom capped at Z), crop (the former ROI: box + "
                        "--roi-margin per side); see docs/ablation.md for the measurements behind auto")
    m.add_argument("--roi-margin", type=float, default=15.0, metavar="MM",
                   help="with --scale crop: ROI = structure box grown by MM per side (default 15)")
    m.add_argument("--slice-margin", type=float, default=5.0, metavar="MM",
                   help="also examine slices up to MM beyond the registered prior's extent (default 5)")
    m.add_argument("--prior-weight", type=float, default=None, metavar="W",
                   help="on slices where the model is trusted, the output contour is the zero level of (1-W) x "
                        "the proposal's signed distance + W x the registered prior's (default 0, chosen on the development data; 0 = the model's "
                        "proposal alone, 1 = the registered prior's shape on those slices)")
    m.add_argument("--window", default=None, metavar="LOW,HIGH",
                   help="intensity window for the model (default: CT -910,590 HU; MR 0.5-99.5 percentiles)")
    m.add_argument("--allow-poor-registration", action="store_true",
                   help="go on when a structure's rigid registration fails the plausibility check (default: "
                        "stop with exit status 2); its every slice is then flagged and its change reported as "
                        "not measurable")
    q.add_argument("--quiet", action="store_true", help="no progress bar and no table")
    add_debug_option(q)
    q.set_defaults(func=run_propagate)
    return q


def propagate_parser() -> argparse.ArgumentParser:
    """A ``p2sam`` parser with the ``propagate`` sub-command alone (what ``propagate-many`` checks a case's
    command line with)."""
    parser = argparse.ArgumentParser(prog="p2sam")
    parser.add_argument("--debug", action="store_true", help="print the traceback of an error")
    add_propagate_parser(parser.add_subparsers(dest="command", metavar="COMMAND"))
    return parser


def run_propagate(args: argparse.Namespace, model=None) -> int:
    """``p2sam propagate``; ``model``: an already loaded model to use instead of loading ``args.model``
    (``propagate-many`` workers load theirs once)."""

    from ..errors import InputError
    from ..io import check_output_path, check_writable_file, read_segmentation, read_volume, write_segmentation
    from ..propagation.pipeline import needs_model, propagate
    from ..io.checksums import input_checksums
    from ..io.images2d import write_png_atomic
    from ..io.outputs import write_all
    from ..propagation.report import overlay_montage, write_report

    if args.output_dir or len(args.followup) > 1:
        from .series import propagate_many_followups

        return propagate_many_followups(args)
    if not args.output:
        raise InputError("--output", "give the output file (or --output-dir D for one output per follow-up)")
    if args.chain:
        raise InputError("--chain", "chains several follow-ups; give them all to --followup with --output-dir")
    args.followup = args.followup[0]
    config, names, window = propagation_config(args)
    # every input and output path is checked before anything heavy runs (symbolic links resolved)
    outs = [os.path.realpath(p) for p in (args.output, args.report, args.overlay) if p]
    if len(set(outs)) != len(outs):
        raise InputError("--output", "--output, --report and --overlay must be different files")
    inputs = {os.path.realpath(p) for p in (args.prior_image, args.prior_segmentation, args.followup)}
    for o in outs:
        if o in inputs:
            raise InputError(o, "is one of the inputs; outputs never overwrite inputs")
    if os.path.realpath(args.prior_image) == os.path.realpath(args.followup):
        raise InputError("--followup", "is the same file as --prior-image")
    prior, prior_src = read_volume(args.prior_image, pick_series(args.prior_image, args.series_uid))
    follow, follow_src = read_volume(args.followup, pick_series(args.followup, args.series_uid))
    kind = check_output_path(args.output, args.overwrite, follow_src, args.output_format)
    for option, path in (("--report", args.report), ("--overlay", args.overlay)):
        if path:
            check_writable_file(path, args.overwrite, f"{option} {path}")
    segments = read_segmentation(args.prior_segmentation, prior, prior_src, names)
    checksums = input_checksums((("prior_image", args.prior_image), ("prior_segmentation", args.prior_segmentation),
                                 ("followup", args.followup)))

    bar, progress = progress_bar(args.quiet)

    net = model
    if net is None and needs_model(config.method):
        from ..models import load_model
        net = load_model(args.model, args.model_type, args.device)
    try:
        result = propagate(prior, segments, follow, model=net, device=args.device, config=config, prior_source=prior_src,
                           followup_source=follow_src, progress=progress)
    finally:
        bar.close()
    result.provenance["inputs_sha256"] = checksums  # what a later run compares (propagate-many resume)
    overlay = overlay_montage(follow, result, window=window) if args.overlay else None
    # write: segmentation (+ its label table), report, overlay, all or none (outputs.write_all)
    writers = [(args.output, lambda: write_segmentation(args.output, result.segments, follow, result.provenance,
                                                        follow_src, overwrite=args.overwrite, kind=kind))]
    if args.report:
        writers.append((args.report, lambda: write_report(args.report, result, {"inputs": {
            "prior_image": args.prior_image, "prior_segmentation": args.prior_segmentation,
            "followup": args.followup}, "output": {"path": args.output, "kind": kind}})))
    if overlay is not None:
        writers.append((args.overlay, lambda: write_png_atomic(args.overlay, overlay)))
    written = write_all(writers)
    if not args.quiet:
        print(result.report_table())
        for w in result.warnings:
            print(f"warning: {w}", file=sys.stderr)
        print("wrote " + ", ".join(written))
    return 0
