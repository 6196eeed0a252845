#!/usr/bin/env python
"""Speed and memory benchmark of P2SAM (a script that prints numbers; never a test).

Sections (each can be skipped):

pipeline    `p2sam propagate`'s work on the bundled demo case (the real CT crop in
            Testing/Data/lung1_crop and the SIMULATED follow-up that scripts/run_demo.sh
            makes), in a child process so that its peak RSS is the pipeline's alone: wall
            seconds per stage (load, register, model load, references, encode, cluster,
            match, decode, retrieve, post-process, write, other), then the encoder alone
            on exactly the images the run encoded (fresh cache, same process, warm), the
            ratio end-to-end / encoder-only, follow-up slices per second, peak RSS and the
            Dice of the result against the simulation's truth (so that a speed-up that
            changes results shows).
correction  one Segment Editor correction (a click, decoder only, on the cached ROI
            embedding of one GTV slice of the pipeline run): median and 90th-percentile
            milliseconds over 20 clicks.
reference   the reference implementation's way of running P²SAM against ours, same model
            (LiteMedSAM), same algorithm and parameters, same machine: the CVC-ClinicDB
            sequence in ../shared/data (frame 1 is the reference; the 20 targets are frames
            1-20, frame 1 included as a sanity target).
            (a) "reference-style": for every target the reference image is encoded again,
            k-means (10 restarts) runs again for every part count, every candidate is decoded
            in its own call with the logits copied to the host and back after each decoder
            step, eager PyTorch, default allocator (what the reference code does);
            (b) ours: reference encoded and clustered once, traced encoder, tuned allocator,
            batched work. Each in its own child process. Dice against the ground-truth masks
            for both (they must be equal: same algorithm). Run twice: with our box adaptation
            (LiteMedSAM's default) and with the paper's point prompts and three-call cascade.
large       a 512 x 512 x 150 follow-up simulated from the full lung1 CT (needs --lung1), in a
            child process: end-to-end and encoder seconds, peak RSS.
gpu         only with a CUDA device: LiteMedSAM and a randomly initialised SAM ViT-B encoder,
            images per second and peak GPU memory, fp32 vs bf16 autocast; and the demo case
            end to end with and without autocast (slices per second, peak GPU memory, Dice).

    python Testing/Benchmarks/benchmark_speed.py [--device auto|cpu|cuda|mps] [--json OUT]
        [--skip pipeline,correction,reference,large,gpu] [--lung1 DIR]

JSON keys (top level, from the pipeline section): encoder_seconds, total_seconds, ratio,
slices, slices_per_second, peak_rss_mb, dice, stages; then correction, reference, large, gpu.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "Testing" / "Tools"))

CROP = ROOT / "Testing" / "Data" / "lung1_crop"
SHARED = ROOT.parent / "shared" / "data"
CVC = SHARED / "cvc612_fine3_sequence"
LUNG1 = SHARED / "pyradiomics_testcases"
SECTIONS = ("pipeline", "correction", "reference", "large", "gpu")


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int((a & b).sum()) / s


def _machine(device: str) -> dict:
    import torch

    out = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
           "cpu_threads": torch.get_num_threads(), "cpus": os.cpu_count(), "device": device}
    if device.startswith("cuda") and torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(0)
    return out


def _child(section: str, folder: Path, args: argparse.Namespace) -> dict:
    """Run one section in a fresh interpreter; return its JSON."""
    cmd = [sys.executable, __file__, "--_child", section, "--_folder", str(folder), "--device", args.device]
    if args.lung1:
        cmd += ["--lung1", str(args.lung1)]
    subprocess.run(cmd, check=True)
    return json.loads((folder / f"{section}.json").read_text())


# --------------------------------------------------------------------------------------
# pipeline + correction (one child: the correction reuses the run's model and embeddings)


def make_demo_case(folder: Path) -> Path:
    """The demo's simulated follow-up (same defaults as scripts/run_demo.sh) in ``folder/sim``."""
    subprocess.run([sys.executable, str(ROOT / "Testing" / "Tools" / "simulate_followup.py"),
                    "--prior", str(CROP / "prior_ct.nrrd"), "--labels", str(CROP / "prior_labels.nrrd"),
                    "--output", str(folder / "sim")], check=True, stdout=subprocess.DEVNULL)
    return folder / "sim"


def pipeline_child(folder: Path, device: str) -> None:
    t_start = time.perf_counter()
    from P2SAMLogic.runtime import peak_rss_mb, tune_process

    tuned = tune_process()  # as the CLI does
    import SimpleITK as sitk

    from P2SAMLogic.io3d import read_segmentation, read_volume, write_segmentation
    from P2SAMLogic.models import EmbeddingCache, load_model
    from P2SAMLogic.propagate import propagate
    from P2SAMLogic.report import write_report

    sim = folder / "sim"
    t = time.perf_counter()
    prior, prior_src = read_volume(str(CROP / "prior_ct.nrrd"))
    follow, follow_src = read_volume(str(sim / "followup_ct.nrrd"))
    segments = read_segmentation(str(CROP / "prior.seg.nrrd"), prior, prior_src)
    t_load = time.perf_counter() - t
    t = time.perf_counter()
    net = load_model("litemedsam", device=device)
    t_model = time.perf_counter() - t
    encoded: List[np.ndarray] = []
    plain_encode = net.encode

    def recording_encode(images):
        for im in images:  # the images that miss the cache are the ones the encoder sees
            if net.cache.get(net.cache_key(im)) is None:
                encoded.append(np.array(im))
        return plain_encode(images)

    net.encode = recording_encode
    result = propagate(prior, segments, follow, model=net, prior_source=prior_src, followup_source=follow_src)
    t = time.perf_counter()
    write_segmentation(str(folder / "proposal.seg.nrrd"), result.segments, follow, result.provenance, follow_src)
    write_report(str(folder / "report.json"), result)
    t_write = time.perf_counter() - t
    total = t_load + t_model + result.timings["total"] + t_write
    peak = peak_rss_mb()
    # encoder alone on the same images: fresh cache, same (warm) process
    net.encode = plain_encode
    net.cache = EmbeddingCache(max_items=len(encoded) + 1)
    t = time.perf_counter()
    net.encode(encoded)
    encoder_only = time.perf_counter() - t
    # Dice against the simulation's truth
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(sim / "followup_labels.nrrd")))
    labels = {v: int(k) for k, v in json.loads((sim / "simulation.json").read_text())["labels"].items()}
    dice = {s.name: _dice(s.array(), truth == labels[s.name]) for s in result.segments}
    slices = sum(r.slices_processed for r in result.reports)
    tm = result.timings
    stages = {"load": t_load, "register": tm["registration"], "model_load": t_model + tm.get("model_load", 0.0),
              "references": tm["references"], "encode": tm["encode"], "cluster": tm["cluster"],
              "match": tm["match"], "decode": tm["decode"], "retrieve": tm["retrieval"],
              "postprocess": tm["postprocess"], "write": t_write, "other": tm["other"]}
    out = {"case": "demo (lung1 crop, simulated follow-up)", "machine": _machine(str(net.device)),
           "process": tuned, "jit_encoder": bool(net.jit_encoder),
           "encoder_seconds": encoder_only, "total_seconds": total, "ratio": total / max(encoder_only, 1e-9),
           "images_encoded": len(encoded), "slices": slices, "slices_per_second": slices / total,
           "peak_rss_mb": peak, "dice": float(np.mean(list(dice.values()))), "dice_per_segment": dice,
           "stages": stages, "process_seconds": time.perf_counter() - t_start,
           "correction": correction_latency(net, follow, result)}
    (folder / "pipeline.json").write_text(json.dumps(out, indent=2))


def correction_latency(net, follow, result, clicks: int = 20) -> dict:
    """Milliseconds per correction click on one GTV slice (decoder only: the ROI embedding is cached)."""
    import SimpleITK as sitk

    from P2SAMLogic.interactive import SliceCorrector

    rep = next(r for r in result.reports if r.name == "GTV")
    sl = max((s for s in rep.slices if s.status == "accepted" and s.box), key=lambda s: s.area_mm2)
    values = sitk.GetArrayViewFromImage(follow)[sl.index]
    mask = next(s for s in result.segments if s.name == "GTV").array()[sl.index]
    corr = SliceCorrector(net, values, result.provenance["intensity"]["followup"], window=sl.window, box=sl.box,
                          initial_mask=mask)
    corr.predict()  # encodes the ROI once (cache hit: the propagation encoded this crop)
    rng = np.random.default_rng(0)
    x0, y0, x1, y1 = sl.box
    times = []
    for i in range(clicks):
        corr.clear_clicks()
        # alternate a positive click just outside the box and a negative one inside it
        if i % 2 == 0:
            x, y = x1 + rng.uniform(1, 4), rng.uniform(y0, y1)
            corr.add_click(min(x, values.shape[1] - 1), y, positive=True)
        else:
            corr.add_click(rng.uniform(x0, x1), rng.uniform(y0, y1), positive=False)
        t = time.perf_counter()
        corr.predict()
        times.append(1000.0 * (time.perf_counter() - t))
    return {"slice": int(sl.index), "clicks": clicks, "median_ms": float(np.median(times)),
            "p90_ms": float(np.percentile(times, 90)), "max_ms": float(np.max(times))}


# --------------------------------------------------------------------------------------
# the reference implementation's way vs ours


def _cvc_sequence():
    """Frames 1-20 of the CVC-612 sequence: names, ``H x W x 3`` uint8 images, ``H x W`` bool masks."""
    from P2SAMLogic.io2d import read_image, read_mask

    names = [f"fine_3_{i}" for i in range(1, 21)]
    images = [read_image(str(CVC / "images" / f"{n}_fram.jpg")) for n in names]
    masks = [read_mask(str(CVC / "masks" / f"{n}_mask.jpg")) for n in names]
    return names, images, masks


def reference_child(folder: Path, device: str, style: str, prompts: str) -> None:
    import torch

    if style == "ours":
        from P2SAMLogic.runtime import tune_process
        tune_process()
    from P2SAMLogic.models import EmbeddingCache, load_model
    from P2SAMLogic.segmenter import P2SAMConfig, P2SAMSegmenter

    names, images, masks = _cvc_sequence()
    ref_image, ref_mask = images[0], masks[0]
    net = load_model("litemedsam", device=device)
    if style == "reference-style":  # plain eager PyTorch, as the reference code runs it
        net.jit_encoder = False
        net.channels_last = False
        net.net.image_encoder.to(memory_format=torch.contiguous_format)
        net.cpu_batch_size = net.batch_size
    seg = P2SAMSegmenter(net, P2SAMConfig(prompts=prompts))
    if style == "reference-style":
        plain_cascade = seg._cascade

        def cascade_one_at_a_time(emb, cands):
            logits, ious = [], []
            for cd in cands:  # the three-call cascade per candidate, host round trip after each
                lg, io = plain_cascade(emb, [cd])
                logits.append(lg.cpu().to(net.device))
                ious.append(io.cpu().to(net.device))
            return torch.cat(logits), torch.cat(ious)

        seg._cascade = cascade_one_at_a_time
        plain_decode_boxes = seg._decode_boxes

        def decode_one_at_a_time(emb, cands):
            logits, ious = [], []
            for cd in cands:  # one decoder call per candidate, host round trip after each
                lg, io = plain_decode_boxes(emb, [cd])
                logits.append(lg.cpu().to(net.device))
                ious.append(io.cpu().to(net.device))
            return torch.cat(logits), torch.cat(ious)

        seg._decode_boxes = decode_one_at_a_time
    t0 = time.perf_counter()
    state = None if style == "reference-style" else seg.prepare_reference(ref_image, ref_mask)
    dices, per_target = [], []
    for image, mask in zip(images, masks):
        t = time.perf_counter()
        if style == "reference-style":
            net.cache = EmbeddingCache()  # nothing reused between targets
            state = seg.prepare_reference(ref_image, ref_mask)  # encode + k-means (10 restarts) again
        res = seg.segment(state, image)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        per_target.append(time.perf_counter() - t)
        dices.append(_dice(res.mask, mask))
    total = time.perf_counter() - t0
    out = {"style": style, "prompts": prompts, "targets": len(images), "total_seconds": total,
           "seconds_per_target": total / len(images), "median_target_seconds": float(np.median(per_target)),
           "encoder_calls": net.encode_calls, "dice_mean": float(np.mean(dices)), "dice": dices,
           "frames": names}
    (folder / f"reference-{style}-{prompts}.json").write_text(json.dumps(out, indent=2))


# --------------------------------------------------------------------------------------
# 512 x 512 x 150 follow-up (memory)


def large_child(folder: Path, device: str, lung1: Path) -> None:
    from P2SAMLogic.runtime import peak_rss_mb, tune_process

    tune_process()
    import SimpleITK as sitk

    from simulate_followup import simulate_followup
    from P2SAMLogic.models import load_model
    from P2SAMLogic.propagate import propagate
    from P2SAMLogic.volume import Segment

    prior = sitk.ReadImage(str(lung1 / "lung1_image.nrrd"), sitk.sitkFloat32)
    gtv = sitk.Cast(sitk.ReadImage(str(lung1 / "lung1_label.nrrd")) > 0, sitk.sitkUInt8)
    fu, truth, _ = simulate_followup(prior, {"GTV": gtv}, seed=0, spacing=(0.6, 0.6, 1.5), size=(512, 512, 150))
    sitk.WriteImage(fu, str(folder / "large_followup.nrrd"))
    t_arr = sitk.GetArrayFromImage(truth["GTV"]).astype(bool)
    del fu, truth
    # a fresh start for the measured part: read the follow-up as the CLI would
    fu = sitk.ReadImage(str(folder / "large_followup.nrrd"), sitk.sitkFloat32)
    net = load_model("litemedsam", device=device)
    before = peak_rss_mb()
    res = propagate(prior, [Segment("GTV", (1.0, 0.0, 0.0), gtv)], fu, model=net)
    out = {"followup_size": list(fu.GetSize()), "slices": res.reports[0].slices_processed,
           "total_seconds": res.timings["total"], "encode_seconds": res.timings["encode"],
           "dice": _dice(res.segments[0].array(), t_arr), "peak_rss_mb": peak_rss_mb(),
           "peak_rss_before_propagation_mb": before,
           "note": "peak RSS of the process includes simulating the follow-up (before the measured run)"}
    (folder / "large.json").write_text(json.dumps(out, indent=2))


# --------------------------------------------------------------------------------------
# GPU (only when a CUDA device is present)


def gpu_child(folder: Path, device: str) -> None:
    import torch

    from P2SAMLogic.models import SegmentAnything, build_sam_network, load_model
    from P2SAMLogic.models.sam import SAM_ARCHITECTURES

    dev = torch.device(device if device.startswith("cuda") else "cuda")
    out: Dict[str, dict] = {"gpu": torch.cuda.get_device_name(dev)}
    lite = load_model("litemedsam", device=str(dev))
    sam_b = SegmentAnything(build_sam_network(SAM_ARCHITECTURES["vit_b"]), dev, "SAM vit_b (random weights)", "random-init")
    for name, net, batch in (("LiteMedSAM", lite, 16), ("SAM ViT-B (random weights)", sam_b, 4)):
        for autocast in (False, True):
            x = torch.rand(batch, 3, net.input_size, net.input_size, device=dev)
            ctx = torch.autocast("cuda", dtype=torch.bfloat16) if autocast else torch.autocast("cuda", enabled=False)
            torch.cuda.reset_peak_memory_stats(dev)
            with torch.no_grad(), ctx:
                net.net.image_encoder(x)
                torch.cuda.synchronize(dev)
                t = time.perf_counter()
                reps = 5
                for _ in range(reps):
                    net.net.image_encoder(x)
                torch.cuda.synchronize(dev)
            dt = (time.perf_counter() - t) / reps
            out[f"{name} {'bf16 autocast' if autocast else 'fp32'}"] = {
                "batch": batch, "images_per_second": batch / dt,
                "peak_memory_mb": torch.cuda.max_memory_allocated(dev) / 2 ** 20}
    # the demo case end to end with and without autocast: slices per second and Dice
    import SimpleITK as sitk

    from P2SAMLogic.io3d import read_segmentation, read_volume
    from P2SAMLogic.models import EmbeddingCache
    from P2SAMLogic.propagate import propagate

    sim = folder / "sim"
    prior, prior_src = read_volume(str(CROP / "prior_ct.nrrd"))
    follow, follow_src = read_volume(str(sim / "followup_ct.nrrd"))
    segments = read_segmentation(str(CROP / "prior.seg.nrrd"), prior, prior_src)
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(sim / "followup_labels.nrrd")))
    labels = {v: int(k) for k, v in json.loads((sim / "simulation.json").read_text())["labels"].items()}
    for autocast in (False, True):
        lite.autocast = autocast
        lite.cache = EmbeddingCache()
        torch.cuda.reset_peak_memory_stats(dev)
        res = propagate(prior, segments, follow, model=lite)
        slices = sum(r.slices_processed for r in res.reports)
        out[f"demo pipeline {'bf16 autocast' if autocast else 'fp32'}"] = {
            "total_seconds": res.timings["total"], "encode_seconds": res.timings["encode"],
            "slices_per_second": slices / res.timings["total"],
            "peak_memory_mb": torch.cuda.max_memory_allocated(dev) / 2 ** 20,
            "dice": {s.name: _dice(s.array(), truth == labels[s.name]) for s in res.segments}}
    (folder / "gpu.json").write_text(json.dumps(out, indent=2))


# --------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default auto)")
    ap.add_argument("--json", default=None, help="write every number to this JSON file")
    ap.add_argument("--skip", default="", help="comma-separated sections to skip: " + ",".join(SECTIONS))
    ap.add_argument("--lung1", type=Path, default=LUNG1 if (LUNG1 / "lung1_image.nrrd").exists() else None,
                    help="folder with lung1_image.nrrd and lung1_label.nrrd for the 512 x 512 x 150 case "
                         "(default ../shared/data/pyradiomics_testcases when present)")
    ap.add_argument("--reference-prompts", default="box,points",
                    help="prompt types of the reference comparison: box (our box adaptation, the default for "
                         "LiteMedSAM), points (the paper's point prompts and three-call cascade); default both")
    ap.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_folder", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:
        folder = Path(args._folder)
        if args._child == "pipeline":
            pipeline_child(folder, args.device)
        elif args._child.startswith("reference-"):
            style, prompts = args._child[len("reference-"):].rsplit("-", 1)
            reference_child(folder, args.device, style, prompts)
        elif args._child == "large":
            large_child(folder, args.device, args.lung1)
        elif args._child == "gpu":
            gpu_child(folder, args.device)
        return 0
    from P2SAMLogic.models import resolve_device

    device = str(resolve_device(args.device))
    args.device = device
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    unknown = skip - set(SECTIONS)
    if unknown:
        ap.error(f"unknown section(s) in --skip: {', '.join(sorted(unknown))}")
    report: dict = {"machine": _machine(device)}
    with tempfile.TemporaryDirectory(prefix="p2sam-bench-") as tmp:
        folder = Path(tmp)
        if {"pipeline", "correction", "gpu"} - skip:
            make_demo_case(folder)
        if "pipeline" not in skip or "correction" not in skip:
            p = _child("pipeline", folder, args)
            corr = p.pop("correction")
            if "pipeline" not in skip:
                report.update(p)
                s = p["stages"]
                print(f"pipeline (demo case, {p['machine']['device']}, {p['slices']} follow-up slices, "
                      f"{p['images_encoded']} images encoded):")
                print("  stages (s): " + ", ".join(f"{k} {v:.2f}" for k, v in s.items()))
                print(f"  end-to-end {p['total_seconds']:.1f} s, encoder-only {p['encoder_seconds']:.1f} s "
                      f"(same images, fresh cache): ratio {p['ratio']:.2f}; {p['slices_per_second']:.2f} slices/s; "
                      f"peak RSS {p['peak_rss_mb']:.0f} MB; Dice " +
                      ", ".join(f"{k} {v:.3f}" for k, v in p["dice_per_segment"].items()))
            if "correction" not in skip:
                report["correction"] = corr
                print(f"correction (one click, slice {corr['slice']}, {corr['clicks']} clicks): median "
                      f"{corr['median_ms']:.0f} ms, p90 {corr['p90_ms']:.0f} ms, max {corr['max_ms']:.0f} ms")
        if "reference" not in skip:
            if not (CVC / "images").is_dir():
                print(f"reference: skipped ({CVC} not found)")
            else:
                report["reference"] = {}
                for prompts in args.reference_prompts.split(","):
                    runs = {s: _child(f"reference-{s}-{prompts}", folder, args) for s in ("reference-style", "ours")}
                    a, b = runs["reference-style"], runs["ours"]
                    report["reference"][prompts] = {"reference_style": a, "ours": b,
                                                    "speedup": a["total_seconds"] / max(b["total_seconds"], 1e-9)}
                    print(f"reference algorithm ({prompts} prompts), CVC-612 sequence, {a['targets']} targets, one "
                          f"reference: reference-style {a['total_seconds']:.1f} s ({a['seconds_per_target']:.2f} "
                          f"s/target, {a['encoder_calls']} encodes, Dice {a['dice_mean']:.3f}); ours "
                          f"{b['total_seconds']:.1f} s ({b['seconds_per_target']:.2f} s/target, {b['encoder_calls']} "
                          f"encodes, Dice {b['dice_mean']:.3f}): "
                          f"{report['reference'][prompts]['speedup']:.2f}x", flush=True)
        if "large" not in skip:
            if args.lung1 is None:
                print("large: skipped (no --lung1 folder)")
            else:
                g = _child("large", folder, args)
                report["large"] = g
                print(f"large ({'x'.join(str(v) for v in g['followup_size'])} follow-up, {g['slices']} slices): "
                      f"{g['total_seconds']:.1f} s (encoder {g['encode_seconds']:.1f} s), Dice {g['dice']:.3f}, "
                      f"peak RSS {g['peak_rss_mb']:.0f} MB")
        if "gpu" not in skip:
            if not device.startswith("cuda"):
                print("gpu: skipped (no CUDA device)")
            else:
                g = _child("gpu", folder, args)
                report["gpu"] = g
                for k, v in g.items():
                    if isinstance(v, dict) and "images_per_second" in v:
                        print(f"gpu {g['gpu']}: {k} encoder: {v['images_per_second']:.1f} images/s at batch "
                              f"{v['batch']}, peak {v['peak_memory_mb']:.0f} MB")
                    elif isinstance(v, dict):
                        print(f"gpu {g['gpu']}: {k}: {v['total_seconds']:.1f} s, {v['slices_per_second']:.2f} "
                              f"slices/s, peak {v['peak_memory_mb']:.0f} MB, Dice " +
                              ", ".join(f"{n} {d:.3f}" for n, d in v["dice"].items()))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
