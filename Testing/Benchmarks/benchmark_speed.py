#!/usr/bin/env python
"""Speed and memory benchmark of P2SAM (a script that prints numbers; never a test).

Sections (each can be skipped):

pipeline    `p2sam propagate`'s work on the bundled demo case (the real CT crop in
            Testing/Data/lung1_crop and the SIMULATED follow-up simulate_followup.py makes
            with its defaults), in a child process so that its peak RSS is the pipeline's alone: wall
            seconds per stage (load, register, model load, references, encode, cluster,
            match, decode, retrieve, decide, clean-up, report, write, other), then the encoder alone
            on exactly the images the run encoded (fresh cache, same process, warm), the
            ratio end-to-end / encoder-only, follow-up slices per second, peak RSS and the
            Dice of the result against the simulation's truth (so that a speed-up that
            changes results shows).
correction  one Segment Editor correction (a click, decoder only, on the cached ROI
            embedding of one GTV slice of the pipeline run): median and 90th-percentile
            milliseconds over 20 clicks.
cardiac     the real cardiac case: ACDC cine MR of ../shared/data/acdc_ed_es_dev (read there, never
            copied), prior = end-diastole image + its RV / myocardium / LV labels, follow-up =
            end-systole image, truth = end-systole labels; per patient (--cardiac-patients, default
            008) the stage table, the share of cluster + match + retrieve in end to end (the CPU goal
            is <= 15 %), Dice per structure; model load first and again in the same process.
retrieval   the 2D benchmark sets (Testing/Benchmarks/benchmark_2d.py's data: 4D-Lung pair, CVC-612
            ref 1 -> 2-20, PerSeg) with box and point prompts, each run with exact EMD (POT) and with
            the batched Sinkhorn: mean Dice of each, and how many selection decisions (every
            retrieval ranking: stage one and the final pick) the Sinkhorn run makes like exact EMD
            on the same candidates (scored both ways; goal >= 95 %, Dice within 0.005).
parts       k-means on real reference feature sets (those the cardiac and retrieval sections
            clustered, else the 2D references): the batched torch k-means (on --device; with the
            subsample cap and on every cell) against scikit-learn (one thread, and its default
            threads on every 4th set): seconds per reference, inertia / scikit-learn's.
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
gpu         only with a CUDA device: model load after CUDA is initialised (first and again);
            LiteMedSAM and a randomly initialised SAM ViT-B encoder, images per second and peak GPU
            memory, fp32 vs bf16 autocast; bf16 parity on the 2D sets (same candidate for >= 95 %
            of targets, Dice within 0.005); Sinkhorn against exact EMD on the device (decisions,
            retrieval ms per target, Dice); the demo case end to end with and without autocast
            (stages, slices per second, peak GPU memory, Dice). docs/speed.md has the one command
            a GPU session runs (and which wheels to carry to the device machine).

    python Testing/Benchmarks/benchmark_speed.py [--device auto|cpu|cuda|mps] [--json OUT]
        [--skip SECTIONS | --only SECTIONS] [--lung1 DIR] [--cardiac-patients 008,045|all]
        [--cluster-cap N|none|default]

JSON keys (top level, from the pipeline section): encoder_seconds, total_seconds, ratio,
slices, slices_per_second, peak_rss_mb, dice, stages; then correction, cardiac, retrieval, parts,
reference, large, gpu.
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
from typing import Dict, List, Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "Testing" / "Tools"))

CROP = ROOT / "Testing" / "Data" / "lung1_crop"
#: the development data: $P2SAM_DATA, else ../shared/data beside the repository (or beside a folder of
#: worktrees); read where it lies, never copied into the repository
SHARED = (Path(os.environ["P2SAM_DATA"]) if os.environ.get("P2SAM_DATA") else
          next((p / "shared" / "data" for p in ROOT.parents if (p / "shared" / "data").is_dir()),
               ROOT.parent / "shared" / "data"))
CVC = SHARED / "cvc612_fine3_sequence"
LUNG1 = SHARED / "pyradiomics_testcases"
ACDC = SHARED / "acdc_ed_es_dev"
SECTIONS = ("pipeline", "correction", "cardiac", "retrieval", "parts", "reference", "large", "gpu")


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
    cmd = [sys.executable, __file__, "--_child", section, "--_folder", str(folder), "--device", args.device,
           "--cardiac-patients", args.cardiac_patients, "--cluster-cap", args.cluster_cap]
    if args.lung1:
        cmd += ["--lung1", str(args.lung1)]
    subprocess.run(cmd, check=True)
    return json.loads((folder / f"{section}.json").read_text())


# --------------------------------------------------------------------------------------
# pipeline + correction (one child: the correction reuses the run's model and embeddings)


def make_demo_case(folder: Path) -> Path:
    """The "demo case": simulate_followup.py's follow-up of the lung crop (its defaults, seed 0) in ``folder/sim``."""
    subprocess.run([sys.executable, str(ROOT / "Testing" / "Tools" / "simulate_followup.py"),
                    "--prior", str(CROP / "prior_ct.nrrd"), "--labels", str(CROP / "prior_labels.nrrd"),
                    "--output", str(folder / "sim")], check=True, stdout=subprocess.DEVNULL)
    return folder / "sim"


def pipeline_child(folder: Path, device: str) -> None:
    t_start = time.perf_counter()
    from P2SAMLogic.runtime import peak_rss_mb, tune_process

    tuned = tune_process()  # as the CLI does
    import SimpleITK as sitk

    from P2SAMLogic.io import read_segmentation, read_volume, write_segmentation
    from P2SAMLogic.models import EmbeddingCache, load_model
    from P2SAMLogic.propagation.pipeline import propagate
    from P2SAMLogic.propagation.report import write_report

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
              "decide": tm.get("decide", 0.0), "cleanup": tm.get("cleanup", 0.0), "report": tm.get("report", 0.0),
              "write": t_write, "other": tm["other"]}
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

    from P2SAMLogic.method.interactive import SliceCorrector

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
    from P2SAMLogic.io.images2d import read_image, read_mask

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
    from P2SAMLogic.method.segmenter import P2SAMConfig, P2SAMSegmenter

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
    from P2SAMLogic.propagation.pipeline import propagate
    from P2SAMLogic.io.volume import Segment

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
# the real cardiac case (ACDC end-diastole -> end-systole, 3 structures, read by path)

CARDIAC_LABELS = {"RV": 1, "Myocardium": 2, "LV": 3}
CARDIAC_COLOURS = {"RV": (0.2, 0.4, 1.0), "Myocardium": (1.0, 0.8, 0.2), "LV": (1.0, 0.2, 0.2)}
#: the stages that the issue's CPU goal sums (cluster + match + retrieve <= 15 % of end to end)
PART_STAGES = ("cluster", "match", "retrieval")


def _record_reference_sets(name: str, store: list) -> None:
    """Record every foreground feature set that gets clustered into several parts (for the ``parts`` section)."""
    import P2SAMLogic.method.reference as segmod  # where the reference is clustered

    plain = segmod.part_prototype_sets

    def recording(pooled, counts, *args, **kwargs):
        if any(int(k) > 1 for k in counts) and not getattr(pooled, "_recorded", False):
            pooled._recorded = True
            store.append({"case": name, "features": pooled.features.detach().cpu(),
                          "weights": pooled.weights.detach().cpu()})
        return plain(pooled, counts, *args, **kwargs)

    segmod.part_prototype_sets = recording


def cardiac_child(folder: Path, device: str, patients: List[str], cluster_cap) -> None:
    from P2SAMLogic.runtime import peak_rss_mb, tune_process

    tuned = tune_process()
    import SimpleITK as sitk
    import torch

    import P2SAMLogic.method.parts as parts
    from P2SAMLogic.models import load_model
    from P2SAMLogic.propagation.pipeline import propagate
    from P2SAMLogic.io.volume import Segment

    parts.MAX_CLUSTER_POINTS = cluster_cap
    recorded: list = []
    _record_reference_sets("cardiac", recorded)
    t = time.perf_counter()
    net = load_model("litemedsam", device=device)
    first_load = time.perf_counter() - t
    t = time.perf_counter()
    load_model("litemedsam", device=device)
    second_load = time.perf_counter() - t
    runs = []
    for pid in patients:
        base = ACDC / f"patient{pid}"
        t = time.perf_counter()
        prior = sitk.ReadImage(f"{base}_ED_image.nrrd", sitk.sitkFloat32)
        labels = sitk.ReadImage(f"{base}_ED_label.nrrd")
        follow = sitk.ReadImage(f"{base}_ES_image.nrrd", sitk.sitkFloat32)
        truth = sitk.GetArrayFromImage(sitk.ReadImage(f"{base}_ES_label.nrrd"))
        segments = [Segment(n, CARDIAC_COLOURS[n], sitk.Cast(labels == v, sitk.sitkUInt8)) for n, v in CARDIAC_LABELS.items()]
        t_load = time.perf_counter() - t
        encoder_before = net.encoder_seconds
        res = propagate(prior, segments, follow, model=net)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        tm = dict(res.timings)
        stages = {"load": t_load, **{k: float(v) for k, v in tm.items() if k != "total"}}
        total = t_load + tm["total"]
        parts_s = sum(tm.get(k, 0.0) for k in PART_STAGES)
        runs.append({"patient": pid, "slices": sum(r.slices_processed for r in res.reports), "total_seconds": total,
                     "encoder_seconds": net.encoder_seconds - encoder_before, "stages": stages,
                     "cluster_match_retrieve_seconds": parts_s, "cluster_match_retrieve_share": parts_s / total,
                     "dice": {s.name: _dice(s.array(), truth == CARDIAC_LABELS[s.name]) for s in res.segments}})
    out = {"case": "ACDC end-diastole -> end-systole (real), 3 structures", "machine": _machine(str(net.device)),
           "process": tuned, "cluster_cap": cluster_cap, "model_load_first_seconds": first_load,
           "model_load_again_seconds": second_load, "patients": runs, "peak_rss_mb": peak_rss_mb()}
    for key in ("total_seconds", "encoder_seconds", "cluster_match_retrieve_seconds"):
        out[key] = sum(r[key] for r in runs)
    out["cluster_match_retrieve_share"] = out["cluster_match_retrieve_seconds"] / max(out["total_seconds"], 1e-9)
    out["mean_dice"] = float(np.mean([d for r in runs for d in r["dice"].values()]))
    (folder / "cardiac.json").write_text(json.dumps(out, indent=2))
    torch.save(recorded, folder / "refsets-cardiac.pt")


def _print_cardiac(c: dict) -> None:
    for r in c["patients"]:
        print(f"cardiac patient {r['patient']} ({c['machine']['device']}, {r['slices']} follow-up slices, "
              f"3 structures, cluster cap {c['cluster_cap']}):")
        print("  stages (s): " + ", ".join(f"{k} {v:.2f}" for k, v in r["stages"].items()))
        print(f"  end-to-end {r['total_seconds']:.1f} s, encoder {r['encoder_seconds']:.1f} s; cluster + match + "
              f"retrieve {r['cluster_match_retrieve_seconds']:.2f} s = {100 * r['cluster_match_retrieve_share']:.1f} % "
              "of end to end (goal <= 15 %); Dice " + ", ".join(f"{k} {v:.3f}" for k, v in r["dice"].items()))
    print(f"cardiac: model load {c['model_load_first_seconds']:.2f} s first, {c['model_load_again_seconds']:.3f} s "
          f"again in the same process; all patients: cluster + match + retrieve "
          f"{100 * c['cluster_match_retrieve_share']:.1f} % of {c['total_seconds']:.1f} s, mean Dice {c['mean_dice']:.3f}")


# --------------------------------------------------------------------------------------
# parts: batched torch k-means against scikit-learn on real reference feature sets


def _reference_sets_2d(net) -> list:
    """Foreground feature sets of the 2D benchmark's references (LiteMedSAM, the default config)."""
    from P2SAMLogic.io.images2d import read_image, read_mask
    from P2SAMLogic.method.segmenter import P2SAMConfig, P2SAMSegmenter

    from benchmark_2d import dev_sets

    seg = P2SAMSegmenter(net, P2SAMConfig())
    out = []
    refs = {(str(r), str(rm)) for groups in dev_sets(SHARED).values() for r, rm, _ in groups}
    refs |= {(str(CVC / "images" / f"fine_3_{i}_fram.jpg"), str(CVC / "masks" / f"fine_3_{i}_mask.jpg"))
             for i in (5, 10, 15, 20)}
    for r, rm in sorted(refs):
        ref = seg.prepare_reference(read_image(r), read_mask(rm))
        out.append({"case": Path(r).name, "features": ref.foreground.features.cpu(),
                    "weights": ref.foreground.weights.cpu()})
    return out


def parts_child(folder: Path, device: str) -> None:
    import torch
    from threadpoolctl import threadpool_limits

    from P2SAMLogic.models import load_model
    from P2SAMLogic.method.parts import MAX_CLUSTER_POINTS, kmeans_batched, kmeans_sklearn

    dev = torch.device(device)
    sets = []
    for f in sorted(folder.glob("refsets-*.pt")):
        sets += torch.load(f)
    if not any(s["case"] != "cardiac" for s in sets):
        sets += _reference_sets_2d(load_model("litemedsam", device="cpu"))
    counts = [2, 3, 4, 5]

    def timed(fn):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        r = fn()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return r, time.perf_counter() - t

    kmeans_batched(sets[0]["features"].to(dev), sets[0]["weights"].to(dev), counts)  # warm-up
    rows = []
    threads = torch.get_num_threads()
    one = 1 if dev.type == "cpu" else threads
    for s in sets:
        x, w = s["features"], s["weights"]
        torch.set_num_threads(one)  # as part_prototype_sets runs it on the CPU
        capped, t_cap = timed(lambda: kmeans_batched(x.to(dev), w.to(dev), counts, max_points=MAX_CLUSTER_POINTS))
        full, t_full = timed(lambda: kmeans_batched(x.to(dev), w.to(dev), counts, max_points=None))
        torch.set_num_threads(threads)
        with threadpool_limits(1):
            t = time.perf_counter()
            sk = {k: kmeans_sklearn(x, w, k) for k in counts}
            t_sk1 = time.perf_counter() - t
        t_sk = None
        if len(rows) % 4 == 0:  # scikit-learn with its default threads (slow when cores are shared): every 4th set
            t = time.perf_counter()
            for k in counts:
                kmeans_sklearn(x, w, k)
            t_sk = time.perf_counter() - t
        rows.append({"case": s["case"], "cells": len(x), "torch_capped_s": t_cap, "torch_full_s": t_full,
                     "sklearn_s": t_sk, "sklearn_1thread_s": t_sk1,
                     "inertia_full_over_sklearn": [full[k].inertia / sk[k].inertia for k in counts],
                     "inertia_capped_over_sklearn": [capped[k].inertia / sk[k].inertia for k in counts]})
    ratio_full = np.array([r["inertia_full_over_sklearn"] for r in rows])
    ratio_cap = np.array([r["inertia_capped_over_sklearn"] for r in rows])
    out = {"device": device, "cap": MAX_CLUSTER_POINTS, "references": len(rows), "part_counts": counts,
           "cells_median": float(np.median([r["cells"] for r in rows])), "cells_max": int(max(r["cells"] for r in rows)),
           "seconds_per_reference": {k: float(np.mean([r[k] for r in rows if r[k] is not None])) for k in
                                     ("torch_capped_s", "torch_full_s", "sklearn_s", "sklearn_1thread_s")},
           "inertia_full_over_sklearn": {"mean": float(ratio_full.mean()), "max": float(ratio_full.max()),
                                         "over_1_percent": int((ratio_full > 1.01).sum())},
           "inertia_capped_over_sklearn": {"mean": float(ratio_cap.mean()), "max": float(ratio_cap.max()),
                                           "over_1_percent": int((ratio_cap > 1.01).sum())},
           "fits": int(ratio_full.size), "rows": rows}
    (folder / "parts.json").write_text(json.dumps(out, indent=2))


def _print_parts(p: dict) -> None:
    s = p["seconds_per_reference"]
    print(f"parts ({p['device']}): {p['references']} real reference sets ({p['cells_median']:.0f} cells median, "
          f"{p['cells_max']} max), part counts {p['part_counts']} x 10 restarts; seconds per reference: torch "
          f"batched {s['torch_capped_s'] * 1000:.0f} ms (cap {p['cap']}), {s['torch_full_s'] * 1000:.0f} ms (every "
          f"cell); scikit-learn {s['sklearn_1thread_s'] * 1000:.0f} ms (one thread), {s['sklearn_s'] * 1000:.0f} ms "
          "(its default threads, every 4th set)")
    for key, label in (("inertia_full_over_sklearn", "every cell"), ("inertia_capped_over_sklearn", f"cap {p['cap']}")):
        r = p[key]
        print(f"  inertia / scikit-learn's ({label}): mean {r['mean']:.4f}, max {r['max']:.4f}, "
              f"{r['over_1_percent']} of {p['fits']} fits more than 1 % above")


# --------------------------------------------------------------------------------------
# retrieval: batched Sinkhorn against exact EMD on the 2D benchmark sets; bf16 parity on CUDA


def _candidate_key(cd) -> tuple:
    """What identifies a candidate across runs whose features differ slightly (not its exact box)."""
    return (cd.parts, cd.locator, round(cd.scale, 3), cd.transposed)


def _shadow_scoring(seg, other: str, decisions: list, spent: list) -> None:
    """Score every candidate batch also with the ``other`` solver and compare each selection (in place);
    the seconds the shadow scoring took are appended to ``spent``."""
    import copy

    import torch

    from P2SAMLogic.method.parts import foreground_cells
    from P2SAMLogic.method.retrieval import gather_sets, wasserstein_scores

    alt: Dict[int, tuple] = {}
    plain_score, plain_select = seg._score, seg._select

    def score(ref, emb, cands, logits, iou):
        plain_score(ref, emb, cands, logits, iou)
        t = time.perf_counter()
        g = emb.grid
        cover = (torch.nn.functional.adaptive_avg_pool2d((logits > 0).float(), g)[:, 0]
                 * emb.frame.grid_valid(g).to(logits.device))
        cells, weights = foreground_cells(cover)
        sizes = np.array([cells[i].sum().item() if cd.area_cells > 0 else 0 for i, cd in enumerate(cands)])
        sets = gather_sets(emb.features[0], cells, weights, sizes, seed=0)
        fg, bg = wasserstein_scores(sets, [ref.prepared("foreground"), ref.prepared("background")], other)
        for i, cd in enumerate(cands):
            alt[id(cd)] = (float(fg[i]), float(bg[i]))
        spent.append(time.perf_counter() - t)

    last = [None]

    def select(cands):
        best = plain_select(cands)
        key = (id(cands), len(cands))
        if key != last[0]:  # the final pick is asked for twice (box search, then the caller)
            last[0] = key
            copies = copy.deepcopy(cands)
            for c, cd in zip(copies, cands):
                c.score, c.background_distance = alt.get(id(cd), (cd.score, cd.background_distance))
            decisions.append(best == plain_select(copies))
        return best

    seg._score, seg._select = score, select


def _run_2d(net, config, transport: Optional[str] = None, shadow: Optional[str] = None, record=None) -> dict:
    """The 2D benchmark's sets with one configuration: per set mean Dice, chosen candidates, decisions."""
    from P2SAMLogic.io.images2d import read_image, read_mask
    from P2SAMLogic.method.segmenter import P2SAMSegmenter

    from benchmark_2d import dev_sets

    seg = P2SAMSegmenter(net, config)
    if transport:
        seg.config.transport = transport  # the switch segmenter._score reads
    decisions: list = []
    spent: List[float] = []
    if shadow:
        _shadow_scoring(seg, shadow, decisions, spent)
    out: dict = {"sets": {}, "chosen": [], "decisions_agree": None}
    retrieval_s: List[float] = []
    t0 = time.perf_counter()
    for set_name, groups in dev_sets(SHARED).items():
        dices = []
        for r, rm, targets in groups:
            ref = seg.prepare_reference(read_image(str(r)), read_mask(str(rm)))
            if record is not None:
                record.append({"case": Path(r).name, "features": ref.foreground.features.cpu(),
                               "weights": ref.foreground.weights.cpu()})
            for t, tm in targets:
                res = seg.segment(ref, read_image(str(t)))
                dices.append(_dice(res.mask, read_mask(str(tm))))
                out["chosen"].append(_candidate_key(res.chosen))
                retrieval_s.append(res.timings.get("retrieval", 0.0))
        out["sets"][set_name] = float(np.mean(dices))
    out["seconds"] = time.perf_counter() - t0
    # the retrieval stage of the solver under test (the shadow scoring's time taken out)
    out["retrieval_seconds_per_target"] = float((np.sum(retrieval_s) - np.sum(spent)) / max(1, len(retrieval_s)))
    if shadow:
        out["decisions"] = len(decisions)
        out["decisions_agree"] = int(sum(decisions))
    return out


def retrieval_child(folder: Path, device: str) -> None:
    import torch

    from P2SAMLogic.models import load_model
    from P2SAMLogic.runtime import tune_process
    from P2SAMLogic.method.segmenter import P2SAMConfig

    tune_process()
    net = load_model("litemedsam", device=device)
    out: dict = {"device": str(net.device)}
    recorded: list = []
    for prompts in ("box", "points"):
        cfg = P2SAMConfig(prompts=prompts)
        exact = _run_2d(net, cfg, "exact", record=recorded if prompts == "box" else None)
        sink = _run_2d(net, cfg, "sinkhorn", shadow="exact")
        same_final = sum(a == b for a, b in zip(exact["chosen"], sink["chosen"]))
        out[prompts] = {"exact": exact, "sinkhorn": sink, "same_final_choice": same_final,
                        "targets": len(exact["chosen"]),
                        "dice_change": {k: sink["sets"][k] - exact["sets"][k] for k in exact["sets"]}}
    (folder / "retrieval.json").write_text(json.dumps(out, indent=2, default=str))
    torch.save(recorded, folder / "refsets-2d.pt")


def _print_retrieval(r: dict) -> None:
    for prompts in ("box", "points"):
        x = r[prompts]
        e, s = x["exact"], x["sinkhorn"]
        print(f"retrieval ({r['device']}, {prompts} prompts, 2D benchmark sets): batched Sinkhorn selects like "
              f"exact EMD in {s['decisions_agree']} of {s['decisions']} decisions "
              f"({100 * s['decisions_agree'] / max(1, s['decisions']):.1f} %, goal >= 95 %); same final candidate "
              f"for {x['same_final_choice']} of {x['targets']} targets; retrieval stage per target "
              f"{1000 * e['retrieval_seconds_per_target']:.0f} ms exact, {1000 * s['retrieval_seconds_per_target']:.0f} ms "
              "Sinkhorn")
        print("  mean Dice exact / Sinkhorn: " + ", ".join(
            f"{k} {e['sets'][k]:.3f} / {s['sets'][k]:.3f}" for k in e["sets"]) + " (goal: within 0.005)")


# --------------------------------------------------------------------------------------
# GPU (only when a CUDA device is present)


def gpu_child(folder: Path, device: str) -> None:
    import torch

    from P2SAMLogic.models import EmbeddingCache, SegmentAnything, build_sam_network, load_model
    from P2SAMLogic.models.sam import SAM_ARCHITECTURES
    from P2SAMLogic.method.segmenter import P2SAMConfig

    dev = torch.device(device if device.startswith("cuda") else "cuda")
    torch.zeros(1, device=dev)  # CUDA initialised before the model load is timed
    torch.cuda.synchronize(dev)
    out: Dict[str, object] = {"gpu": torch.cuda.get_device_name(dev), "torch": torch.__version__}
    t = time.perf_counter()
    lite = load_model("litemedsam", device=str(dev))
    out["model_load_first_seconds"] = time.perf_counter() - t
    t = time.perf_counter()
    load_model("litemedsam", device=str(dev))
    out["model_load_again_seconds"] = time.perf_counter() - t  # goal <= 0.5 s
    nets = [("LiteMedSAM", lite, 16)]
    try:
        nets.append(("SAM ViT-B (random weights)", SegmentAnything(
            build_sam_network(SAM_ARCHITECTURES["vit_b"]), dev, "SAM vit_b (random weights)", "random-init"), 4))
    except ImportError as exc:  # segment-anything not carried to this machine
        out["SAM ViT-B"] = f"skipped: {exc}"
    for name, net, batch in nets:
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
    # bf16 parity on the 2D benchmark sets (box prompts, the default): same candidate, Dice within 0.005
    runs = {}
    for autocast in (False, True):
        lite.autocast = autocast
        lite.cache = EmbeddingCache()
        runs[autocast] = _run_2d(lite, P2SAMConfig())
    same = sum(a == b for a, b in zip(runs[False]["chosen"], runs[True]["chosen"]))
    out["bf16 parity 2D"] = {"same_candidate": same, "targets": len(runs[False]["chosen"]),
                             "dice_fp32": runs[False]["sets"], "dice_bf16": runs[True]["sets"],
                             "seconds_fp32": runs[False]["seconds"], "seconds_bf16": runs[True]["seconds"]}
    # retrieval on the device: batched Sinkhorn (the CUDA default) against exact EMD, decisions and time
    lite.autocast = True
    try:
        import ot  # noqa: F401  (POT: the exact solver)
    except ImportError as exc:
        sink = _run_2d(lite, P2SAMConfig(), "sinkhorn")
        out["retrieval 2D"] = {"exact": f"skipped: {exc}", "dice_sinkhorn": sink["sets"],
                               "retrieval_ms_per_target_sinkhorn": 1000 * sink["retrieval_seconds_per_target"]}
    else:
        sink = _run_2d(lite, P2SAMConfig(), "sinkhorn", shadow="exact")
        exact = _run_2d(lite, P2SAMConfig(), "exact")
        out["retrieval 2D"] = {"decisions": sink["decisions"], "decisions_agree": sink["decisions_agree"],
                               "dice_sinkhorn": sink["sets"], "dice_exact": exact["sets"],
                               "retrieval_ms_per_target_sinkhorn": 1000 * sink["retrieval_seconds_per_target"],
                               "retrieval_ms_per_target_exact": 1000 * exact["retrieval_seconds_per_target"]}
    # the demo case end to end with and without autocast: slices per second, stages and Dice
    try:
        import SimpleITK as sitk
    except ImportError as exc:
        out["demo pipeline"] = f"skipped: {exc}"
    else:  # (the demo case was made by the parent, which had SimpleITK too)
        from P2SAMLogic.io import read_segmentation, read_volume
        from P2SAMLogic.propagation.pipeline import propagate

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
                "stages": {k: float(v) for k, v in res.timings.items()},
                "peak_memory_mb": torch.cuda.max_memory_allocated(dev) / 2 ** 20,
                "dice": {s.name: _dice(s.array(), truth == labels[s.name]) for s in res.segments}}
    (folder / "gpu.json").write_text(json.dumps(out, indent=2, default=str))


def _print_gpu(g: dict) -> None:
    name = g["gpu"]
    print(f"gpu {name}: model load {g['model_load_first_seconds']:.2f} s first (CUDA initialised), "
          f"{g['model_load_again_seconds']:.3f} s again (goal <= 0.5 s)")
    for k, v in g.items():
        if isinstance(v, dict) and "images_per_second" in v:
            print(f"gpu {name}: {k} encoder: {v['images_per_second']:.1f} images/s at batch {v['batch']}, "
                  f"peak {v['peak_memory_mb']:.0f} MB")
        elif isinstance(v, dict) and k.startswith("demo pipeline"):
            print(f"gpu {name}: {k}: {v['total_seconds']:.1f} s, {v['slices_per_second']:.2f} slices/s, peak "
                  f"{v['peak_memory_mb']:.0f} MB, Dice " + ", ".join(f"{n} {d:.3f}" for n, d in v["dice"].items()))
            print("  stages (s): " + ", ".join(f"{s} {t:.2f}" for s, t in v["stages"].items()))
        elif isinstance(v, str):
            print(f"gpu {name}: {k}: {v}")
    p = g["bf16 parity 2D"]
    print(f"gpu {name}: bf16 parity (2D sets, box prompts): same candidate for {p['same_candidate']} of "
          f"{p['targets']} targets (goal >= 95 %); Dice fp32 / bf16: " + ", ".join(
              f"{k} {p['dice_fp32'][k]:.3f} / {p['dice_bf16'][k]:.3f}" for k in p["dice_fp32"]) + " (goal within 0.005)")
    r = g["retrieval 2D"]
    if "decisions" not in r:
        print(f"gpu {name}: Sinkhorn retrieval per target {r['retrieval_ms_per_target_sinkhorn']:.1f} ms; exact EMD "
              f"{r['exact']}")
        return
    print(f"gpu {name}: Sinkhorn vs exact EMD (2D sets): {r['decisions_agree']} of {r['decisions']} decisions the "
          f"same; retrieval per target {r['retrieval_ms_per_target_sinkhorn']:.1f} ms Sinkhorn, "
          f"{r['retrieval_ms_per_target_exact']:.1f} ms exact; Dice Sinkhorn / exact: " + ", ".join(
              f"{k} {r['dice_sinkhorn'][k]:.3f} / {r['dice_exact'][k]:.3f}" for k in r["dice_sinkhorn"]))


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
    ap.add_argument("--only", default="", help="comma-separated sections to run (the others are skipped)")
    ap.add_argument("--cardiac-patients", default="008",
                    help="ACDC patients of the cardiac section (comma-separated ids of ../shared/data/acdc_ed_es_dev, "
                         "or 'all'; default 008)")
    ap.add_argument("--cluster-cap", default="default",
                    help="k-means subsample bound for the pipeline and cardiac sections: a number of feature cells, "
                         "'none' (every cell) or 'default' (P2SAMLogic.method.parts.MAX_CLUSTER_POINTS)")
    ap.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_folder", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    import P2SAMLogic.method.parts as parts

    cap = {"default": parts.MAX_CLUSTER_POINTS, "none": None}.get(args.cluster_cap.lower(), None)
    if args.cluster_cap.lower() not in ("default", "none"):
        cap = int(args.cluster_cap)
    if args.cardiac_patients == "all":
        patients = sorted({p.name[len("patient"):len("patient") + 3] for p in ACDC.glob("patient*_ED_image.nrrd")})
    else:
        patients = [p.strip() for p in args.cardiac_patients.split(",") if p.strip()]
    if args._child:
        folder = Path(args._folder)
        parts.MAX_CLUSTER_POINTS = cap
        if args._child == "pipeline":
            pipeline_child(folder, args.device)
        elif args._child == "cardiac":
            cardiac_child(folder, args.device, patients, cap)
        elif args._child == "retrieval":
            retrieval_child(folder, args.device)
        elif args._child == "parts":
            parts_child(folder, args.device)
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
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    unknown = (skip | only) - set(SECTIONS)
    if unknown:
        ap.error(f"unknown section(s) in --skip/--only: {', '.join(sorted(unknown))}")
    if only:
        skip |= set(SECTIONS) - only
    report: dict = {"machine": _machine(device)}
    with tempfile.TemporaryDirectory(prefix="p2sam-bench-") as tmp:
        folder = Path(tmp)
        try:
            import SimpleITK  # noqa: F401
        except ImportError:  # a machine without it (a GPU machine given only some wheels) runs the 2D sections
            missing = sorted({"pipeline", "correction", "cardiac", "large"} - skip)
            if missing:
                print(f"{', '.join(missing)}: skipped (SimpleITK is not installed)")
            skip |= {"pipeline", "correction", "cardiac", "large"}
        else:
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
        if "cardiac" not in skip:
            if not ACDC.is_dir():
                print(f"cardiac: skipped ({ACDC} not found)")
            else:
                report["cardiac"] = _child("cardiac", folder, args)
                _print_cardiac(report["cardiac"])
        if "retrieval" not in skip:
            report["retrieval"] = _child("retrieval", folder, args)
            _print_retrieval(report["retrieval"])
        if "parts" not in skip:
            report["parts"] = _child("parts", folder, args)
            _print_parts(report["parts"])
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
                report["gpu"] = _child("gpu", folder, args)
                _print_gpu(report["gpu"])
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
