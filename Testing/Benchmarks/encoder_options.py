#!/usr/bin/env python
"""What the PyTorch ecosystem offers for LiteMedSAM's image encoder on a CPU (a script that prints numbers).

Each option runs in its own fresh interpreter (allocator state and thread pools are per
process): the encoder on one 3 x 256 x 256 input, a warm-up call, then ``--runs`` timed
calls; the median seconds per image, the first call's seconds (tracing / compilation
included), and the largest difference to the eager fp32 features relative to their
largest magnitude. Options whose features differ by more than 1e-3 also get the Dice of
their masks (the true box of each of 8 CVC-612 frames, decoded by the same fp32 decoder)
against the eager fp32 masks, so that a speed-up that changes results shows.

Options (default: all but ``compile``, which compiles for minutes):

  eager-default-malloc  eager fp32, glibc's default allocator (what a plain script gets)
  eager                 eager fp32, allocator tuned (P2SAMLogic.runtime.tune_process)
  inference-mode        eager under torch.inference_mode() instead of no_grad
  channels-last         eager, weights and input in channels-last memory format
  threads-1             eager, torch.set_num_threads(1)
  batch-4               eager, 4 images per call (seconds per image)
  jit                   torch.jit.trace + torch.jit.freeze (what the engine uses on CPU)
  jit-optimize          torch.jit.trace + torch.jit.optimize_for_inference (oneDNN fusion)
  int8-dynamic          torch.ao dynamic int8 quantisation of the Linear layers
  gelu-tanh             GELU's tanh approximation instead of erf
  onnxruntime           exported to ONNX, run by ONNX Runtime (only if onnxruntime is installed)
  compile               torch.compile (inductor)

    python Testing/Benchmarks/encoder_options.py [--options a,b,...] [--runs 5] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
CVC = ROOT.parent / "shared" / "data" / "cvc612_fine3_sequence"
OPTIONS = ["eager-default-malloc", "eager", "inference-mode", "channels-last", "threads-1", "batch-4", "jit",
           "jit-optimize", "int8-dynamic", "gelu-tanh", "onnxruntime", "compile"]
DEFAULT = [o for o in OPTIONS if o != "compile"]


def _child(option: str, runs: int, out: Path) -> None:
    if option != "eager-default-malloc":
        from P2SAMLogic.runtime import tune_process
        tune_process()
    import numpy as np
    import torch

    from P2SAMLogic.models import load_model

    model = load_model("litemedsam", device="cpu")
    enc = model.net.image_encoder
    batch = 4 if option == "batch-4" else 1
    x = torch.rand(batch, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = enc(x)
    fn = enc
    ctx = torch.no_grad
    if option == "inference-mode":
        ctx = torch.inference_mode
    elif option == "channels-last":
        enc = enc.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
        fn = enc
    elif option == "threads-1":
        torch.set_num_threads(1)
    elif option == "gelu-tanh":
        for m in enc.modules():
            if isinstance(m, torch.nn.GELU):
                m.approximate = "tanh"
    elif option == "int8-dynamic":
        fn = torch.ao.quantization.quantize_dynamic(enc, {torch.nn.Linear}, dtype=torch.qint8)
    t0 = time.perf_counter()
    if option in ("jit", "jit-optimize"):
        with torch.no_grad():
            traced = torch.jit.trace(enc, x, check_trace=False).eval()
            fn = torch.jit.freeze(traced) if option == "jit" else torch.jit.optimize_for_inference(traced)
    elif option == "compile":
        fn = torch.compile(enc)
    elif option == "onnxruntime":
        import onnxruntime as ort

        path = out.parent / "encoder.onnx"
        torch.onnx.export(enc, (x,), str(path), dynamo=False, input_names=["x"], output_names=["y"], opset_version=17)
        so = ort.SessionOptions()
        so.intra_op_num_threads = torch.get_num_threads()
        session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        fn = lambda t: torch.from_numpy(session.run(None, {"x": t.numpy()})[0])  # noqa: E731
    with ctx():
        y = fn(x)
    first = time.perf_counter() - t0
    times = []
    with ctx():
        fn(x)
        for _ in range(runs):
            t = time.perf_counter()
            y = fn(x)
            times.append((time.perf_counter() - t) / batch)
    err = float((y.float() - reference).abs().max() / reference.abs().max())
    result = {"option": option, "seconds_per_image": float(np.median(times)), "min_seconds_per_image": min(times),
              "first_call_seconds": first, "relative_max_error": err, "threads": torch.get_num_threads()}
    if err > 1e-3 and (CVC / "images").is_dir():
        result["mask_dice_vs_fp32"] = _mask_agreement(model, fn, ctx)
    out.write_text(json.dumps(result))


def _mask_agreement(model, fn, ctx) -> float:
    """Mean Dice between masks decoded from this option's features and from eager fp32 features."""
    import numpy as np
    import torch

    from P2SAMLogic.io.images2d import read_image, read_mask
    from P2SAMLogic.models.base import Embedding
    from P2SAMLogic.method.segmenter import mask_box

    dices = []
    for i in range(1, 21, 3):  # 7 frames
        img = read_image(str(CVC / "images" / f"fine_3_{i}_fram.jpg"))
        box = mask_box(read_mask(str(CVC / "masks" / f"fine_3_{i}_mask.jpg")))
        frame = model.frame_for(img)
        x = model._preprocess(img, frame)[None]
        with torch.no_grad():
            plain = model.net.image_encoder(x)
        with ctx():
            other = fn(x).float()
        masks = []
        for feats in (plain, other):
            out = model.decode(Embedding(feats, frame, "k"), boxes=box[None])
            masks.append(frame.logits_to_original(out.low_res_logits)[0, 0].numpy() > 0)
        a, b = masks
        dices.append(2 * (a & b).sum() / max(1, a.sum() + b.sum()))
    return float(np.mean(dices))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--options", default=",".join(DEFAULT), help="comma-separated options (see above)")
    ap.add_argument("--runs", type=int, default=5, help="timed calls per option (default 5)")
    ap.add_argument("--json", default=None, help="write the table as JSON")
    ap.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:
        _child(args._child, args.runs, Path(args._out))
        return 0
    options = [o.strip() for o in args.options.split(",") if o.strip()]
    bad = [o for o in options if o not in OPTIONS]
    if bad:
        ap.error(f"unknown option(s): {', '.join(bad)}; choose from {', '.join(OPTIONS)}")
    import tempfile

    rows = []
    print("| option | s / image (median) | first call s | max rel. error | mask Dice vs fp32 |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for o in options:
            out = Path(tmp) / f"{o}.json"
            proc = subprocess.run([sys.executable, __file__, "--_child", o, "--_out", str(out), "--runs",
                                   str(args.runs)], capture_output=True, text=True)
            if proc.returncode != 0 or not out.exists():
                why = (proc.stderr.strip().splitlines() or ["failed"])[-1][:100]
                print(f"| {o} | failed: {why} | | | |", flush=True)
                rows.append({"option": o, "error": why})
                continue
            r = json.loads(out.read_text())
            rows.append(r)
            dice = r.get("mask_dice_vs_fp32")
            print(f"| {o} | {r['seconds_per_image']:.3f} | {r['first_call_seconds']:.1f} | "
                  f"{r['relative_max_error']:.1e} | {'' if dice is None else f'{dice:.3f}'} |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
