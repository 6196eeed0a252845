"""The speed paths give the same answers as the plain ones (issue: speed and memory).

Speed itself is measured by Testing/Benchmarks/benchmark_speed.py, never asserted here.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import ot
import pytest
import torch

from P2SAMLogic import runtime
from P2SAMLogic.models.sam import SegmentAnything
from P2SAMLogic.method.retrieval import prepare_set, wasserstein_distance, wasserstein_prepared
from P2SAMLogic.method.segmenter import P2SAMConfig, P2SAMSegmenter, box_region

ROOT = Path(__file__).resolve().parents[2]


def test_traced_encoder_equals_eager(litemedsam, make_disc):
    img, _ = make_disc(90, 60, shape=(120, 200))
    assert not litemedsam.jit_encoder and litemedsam.channels_last and litemedsam.encode_batch_size == 1
    x = litemedsam._preprocess(img, litemedsam.frame_for(img))[None]
    eager = litemedsam.run_encoder(x)  # channels-last on the CPU
    with torch.no_grad():
        plain = litemedsam.net.image_encoder(x)  # contiguous input
    torch.testing.assert_close(eager, plain, atol=1e-4, rtol=1e-4)
    litemedsam.jit_encoder = True
    try:
        traced = litemedsam.run_encoder(x)
    finally:
        litemedsam.jit_encoder = False
    assert litemedsam._traced
    assert traced.shape == eager.shape == (1, 256, 64, 64)
    torch.testing.assert_close(traced, eager, atol=1e-4, rtol=1e-4)


def test_traced_sam_encoder_equals_eager(tiny_sam_net, make_disc):
    img, _ = make_disc(90, 60, shape=(120, 200))
    traced = SegmentAnything(tiny_sam_net, torch.device("cpu"), name="t", sha256="0" * 64)
    eager = SegmentAnything(tiny_sam_net, torch.device("cpu"), name="t", sha256="0" * 64)
    traced.jit_encoder = True
    a, b = traced.encode([img])[0], eager.encode([img])[0]
    assert traced._traced and not eager._traced
    torch.testing.assert_close(a.features, b.features, atol=1e-5, rtol=1e-5)
    assert traced.encoder_seconds > 0 and eager.encoder_seconds > 0


def test_jit_on_by_environment(tiny_sam_net, monkeypatch):
    assert SegmentAnything(tiny_sam_net, torch.device("cpu"), name="t", sha256="0" * 64).jit_encoder is False
    monkeypatch.setenv("P2SAM_JIT", "1")
    assert SegmentAnything(tiny_sam_net, torch.device("cpu"), name="t", sha256="0" * 64).jit_encoder is True


_HEAP_PROBE = """
import ctypes, ctypes.util, json, sys
sys.path.insert(0, {root!r})
from P2SAMLogic import runtime
applied = runtime.tune_process()
libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
address = libc.malloc(64 << 20)  # above glibc's default mmap threshold (at most 32 MiB)
heap = [tuple(int(v, 16) for v in line.split()[0].split("-")) for line in open("/proc/self/maps")
        if line.rstrip().endswith("[heap]")]
print(json.dumps({{"applied": applied, "again": runtime.tune_process(),
                   "in_heap": any(a <= address < b for a, b in heap)}}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator settings are Linux-only")
def test_allocator_tuning_moves_large_blocks_onto_the_heap():
    """With the tuning, a 64 MiB block comes from the reusable heap; without it, from a fresh mmap."""
    import json

    code = _HEAP_PROBE.format(root=str(ROOT))
    env = {k: v for k, v in os.environ.items() if k != "P2SAM_NO_MALLOPT"}
    tuned = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                                      timeout=120, check=True).stdout)
    plain = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                                      env={**env, "P2SAM_NO_MALLOPT": "1"}, check=True).stdout)
    assert tuned == {"applied": {"glibc_malloc_tuned": True}, "again": {"glibc_malloc_tuned": True}, "in_heap": True}
    assert plain == {"applied": {"glibc_malloc_tuned": False}, "again": {"glibc_malloc_tuned": False},
                     "in_heap": False}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the reference (/proc/self/statm) is Linux-only")
def test_peak_rss_follows_a_known_allocation():
    """peak_rss_mb, in MiB, is at least the resident size after touching a 256 MiB block, and no more
    than the larger of that and the peak before (a child process starts with its parent's peak on Linux)."""
    code = ("import os, sys, numpy as np; sys.path.insert(0, %r); from P2SAMLogic.runtime import peak_rss_mb\n"
            "rss = lambda: int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20\n"
            "peak0, rss0 = peak_rss_mb(), rss(); block = np.ones(256 << 17); rss1 = rss()\n"
            "print(peak0, rss0, rss1, peak_rss_mb())" % str(ROOT))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    peak0, rss0, rss1, peak1 = (float(v) for v in out.stdout.split())
    assert rss1 - rss0 >= 240.0, (rss0, rss1)  # the block is resident
    assert rss1 - 1.0 <= peak1 <= max(peak0, rss1) + 16.0, (peak0, rss1, peak1)


def test_prepared_sets_match_pot_exactly():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(60, 16, generator=g), torch.randn(45, 16, generator=g) + 0.5
    wb = torch.rand(45, generator=g)
    wb = wb / wb.sum()
    expected = ot.emd2(np.full(60, 1 / 60), wb.double().numpy(), ot.dist(a.double().numpy(), b.double().numpy()))
    got = wasserstein_prepared(prepare_set(a), prepare_set(b, wb))
    assert got == pytest.approx(expected, rel=1e-9)
    assert wasserstein_distance(a, b, None, wb) == pytest.approx(expected, rel=1e-9)
    # above the cap both sides are subsampled the same way, whichever entry point is used
    big_a, big_b = torch.randn(300, 8, generator=g), torch.randn(250, 8, generator=g)
    assert wasserstein_distance(big_a, big_b, max_cells=50) == pytest.approx(
        wasserstein_prepared(prepare_set(big_a, max_cells=50, seed=0), prepare_set(big_b, max_cells=50, seed=1)))


def test_batched_region_decoding(litemedsam, make_disc):
    img, _ = make_disc(100, 60, r=20, shape=(120, 200))
    emb = litemedsam.encode([img])[0]
    seg = P2SAMSegmenter(litemedsam, P2SAMConfig(batch_region_slack=0.25))
    boxes = [[78.0, 38.0, 122.0, 82.0], [80.0, 40.0, 120.0, 80.0], [5.0, 5.0, 30.0, 30.0]]
    regions = [box_region(emb, b) for b in boxes]
    assert regions[0] != regions[2]

    class C:  # the candidate fields _decode_boxes reads
        def __init__(self, box):
            self.box = box

    logits, iou = seg._decode_boxes(emb, [C(b) for b in boxes])
    assert logits.shape == (3, 1, 256, 256) and iou.shape == (3,)
    # the far box is decoded alone on its own region: identical to a call of its own
    alone = litemedsam.decode(emb, boxes=np.array([boxes[2]]), region=regions[2])
    torch.testing.assert_close(logits[2:3], alone.low_res_logits, atol=1e-4, rtol=1e-4)
    # the two near boxes share a call on the union of their regions: same masks as separate calls there
    union = tuple(f(a, b) for f, a, b in zip((min, max, min, max), regions[0], regions[1]))
    for i in (0, 1):
        own = litemedsam.decode(emb, boxes=np.array([boxes[i]]), region=union)
        torch.testing.assert_close(logits[i:i + 1], own.low_res_logits, atol=1e-3, rtol=1e-3)
        m = (logits[i, 0] > 0).numpy()
        assert m.any() and ((own.low_res_logits[0, 0] > 0).numpy() == m).mean() > 0.999


def test_speed_benchmark_manual_and_bad_section():
    script = ROOT / "Testing" / "Benchmarks" / "benchmark_speed.py"
    out = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    for key in ("encoder_seconds", "total_seconds", "peak_rss_mb", "dice", "reference-style"):
        assert key in out.stdout
    bad = subprocess.run([sys.executable, str(script), "--skip", "pipeline,warp-drive"], capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and "warp-drive" in bad.stderr


def test_default_batching_only_shares_equal_regions(litemedsam, make_disc):
    img, _ = make_disc(100, 60, r=20, shape=(120, 200))
    emb = litemedsam.encode([img])[0]
    seg = P2SAMSegmenter(litemedsam, P2SAMConfig())  # 2D default: batch_region_slack None

    class C:
        def __init__(self, box):
            self.box = box

    boxes = [[80.0, 40.0, 120.0, 80.0], [80.0, 40.0, 120.0, 80.0], [70.0, 30.0, 130.0, 90.0]]
    calls = []
    plain = litemedsam.decode

    def counting(*a, **k):
        calls.append(k.get("region"))
        return plain(*a, **k)

    litemedsam.decode = counting
    try:
        logits, _ = seg._decode_boxes(emb, [C(b) for b in boxes])
    finally:
        litemedsam.decode = plain
    assert len(calls) == 2  # the two equal boxes in one call, the larger one alone
    for i, b in enumerate(boxes):
        own = litemedsam.decode(emb, boxes=np.array([b]), region=box_region(emb, b))
        torch.testing.assert_close(logits[i:i + 1], own.low_res_logits, atol=1e-3, rtol=1e-3)
