"""Tests of the ``p2sam`` command line (``P2SAMLogic.cli``).

The CLI is called in-process through :func:`P2SAMLogic.cli.main` (it returns
the exit code and prints errors as ``p2sam: error: <message>`` on stderr); one
test runs the installed console script in a subprocess.

Successful runs use the real embedded LiteMedSAM on CPU (about 2 s per encode
on a small machine), so inputs are small and runs are shared by module-scoped
fixtures where several tests look at the same output.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Dict, List, Optional, Sequence

import numpy as np
import pytest
from PIL import Image

import P2SAMLogic
from baselines import best_box_baseline, dice
from P2SAMLogic import cli

REPO = Path(__file__).resolve().parents[2]
LUNG = REPO / "Testing" / "Data" / "4dlung_visit_pair"
LUNG_PAIR_DICE = 0.635  # measured: `p2sam segment-image --method p2sam` on the bundled 4D-Lung pair
LITEMEDSAM_SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"

# synthetic scene: W x H = 200 x 160, a bright ellipse on a textured grey background
SIZE_WH = (200, 160)
AXES = (36.0, 26.0)  # semi-axes; large enough that the crop pass is skipped (crop > 70 % of the image)
REF_CENTRE = (80.0, 70.0)
TARGET_CENTRES = [(110.0, 85.0), (95.0, 62.0), (118.0, 95.0)]
#: measured IoU of LiteMedSAM's mask to the moved ellipse: the default method on t0, t1, t2, and
#: ``--method no-retrieval --max-parts 2`` on t0 (the format tests); the reference mask left in place
#: (the no-model baseline) has 0.253, 0.511, 0.123
SYNTH_IOU = (0.898, 0.692, 0.818)
SYNTH_IOU_NO_RETRIEVAL = 0.496


# -- helpers ----------------------------------------------------------------------------------------------
def run_cli(argv: Sequence[object], capsys) -> SimpleNamespace:
    """Run ``p2sam argv`` in-process; an argparse ``SystemExit`` counts as its exit code."""
    capsys.readouterr()  # drop anything printed before
    try:
        rc = cli.main([str(a) for a in argv])
    except SystemExit as exc:
        rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out, err = capsys.readouterr()
    return SimpleNamespace(rc=rc, out=out, err=err)


def segment_argv(ref, ref_mask, targets, out_dir, *extra) -> List[str]:
    return ["segment-image", "--reference", str(ref), "--reference-mask", str(ref_mask),
            "--target", *[str(t) for t in targets], "--output-dir", str(out_dir), *[str(e) for e in extra]]


def ellipse_mask(centre, axes=AXES, size_wh=SIZE_WH) -> np.ndarray:
    w, h = size_wh
    yy, xx = np.mgrid[:h, :w]
    return ((xx - centre[0]) / axes[0]) ** 2 + ((yy - centre[1]) / axes[1]) ** 2 <= 1.0


def scene(centre, seed: int, axes=AXES, size_wh=SIZE_WH) -> np.ndarray:
    """uint8 ``H x W`` grey: smooth gradient + mild noise, a bright ellipse with a darker core."""
    w, h = size_wh
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    img = 40.0 + 30.0 * xx / w + 15.0 * yy / h + rng.normal(0.0, 4.0, (h, w))
    m = ellipse_mask(centre, axes, size_wh)
    img[m] = 200.0 + rng.normal(0.0, 4.0, int(m.sum()))
    core = ellipse_mask(centre, (axes[0] / 3, axes[1] / 3), size_wh)
    img[core] = 150.0
    return np.clip(img, 0, 255).astype(np.uint8)


def save(path: Path, array: np.ndarray) -> Path:
    """Save with Pillow's mode for the array: uint8 2D -> L, H x W x 3 -> RGB, x 4 -> RGBA, uint16 -> I;16."""
    Image.fromarray(np.ascontiguousarray(array)).save(path)
    return path


def snapshot(folder: Path) -> Optional[Dict[str, bytes]]:
    """Every file under ``folder`` (hidden ones included) with its bytes; None if the folder does not exist."""
    if not folder.exists():
        return None
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()} | {
        str(p.relative_to(folder)) + "/": b"" for p in folder.rglob("*") if p.is_dir()}


def assert_untouched(folder: Path, before: Optional[Dict[str, bytes]]) -> None:
    if before is None:
        assert not folder.exists() or not any(folder.iterdir()), f"{folder} was created and written to"
    else:
        after = snapshot(folder)
        assert after is not None, f"{folder} was removed"
        assert sorted(after) == sorted(before), f"{folder}: files changed from {sorted(before)} to {sorted(after)}"
        for name, data in before.items():
            assert after[name] == data, f"{folder / name} changed"


def read_mask_png(path: Path) -> np.ndarray:
    im = Image.open(path)
    a = np.array(im)
    assert a.ndim == 2, f"{path}: expected a single-channel mask, mode {im.mode}"
    values = set(np.unique(a).tolist())
    assert values <= {0, 255}, f"{path}: values {sorted(values)} are not 0/255"
    return a == 255


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def encodes_excluding_crops(report: dict) -> int:
    """``encoder_calls`` minus the second-pass crop encodes (one per target whose ``crop_box`` is set)."""
    crops = sum(1 for t in report["targets"] if t["crop_box"] is not None)
    return report["encoder_calls"] - crops


def check_report_common(report: dict, n_targets: int) -> None:
    assert report["status"] == "unreviewed proposal"
    assert report["version"] == P2SAMLogic.__version__
    assert report["model"]["name"] == "LiteMedSAM"
    assert report["model"]["sha256"] == LITEMEDSAM_SHA256
    params = report["parameters"]
    assert isinstance(params, dict) and {"method", "max_parts", "negative_parts", "crop_pass"} <= set(params)
    assert len(report["targets"]) == n_targets
    for entry in report["targets"]:
        for key in ("target", "mask", "method", "size", "chosen", "score", "candidates", "timings_s", "area_pixels"):
            assert key in entry, f"results.json target entry lacks {key!r}: {sorted(entry)}"
        assert entry["method"] == params["method"]
        chosen = entry["chosen"]
        assert isinstance(chosen["parts"], int) and chosen["parts"] >= 0
        w, h = entry["size"]
        x0, y0, x1, y1 = chosen["box"]  # LiteMedSAM is a box model: the chosen prompt has a box
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
        assert isinstance(entry["candidates"], list) and entry["candidates"]
        assert entry["score"] is None or isinstance(entry["score"], float)
        assert entry["timings_s"]["total"] >= 0


# -- synthetic inputs (written once per module) ------------------------------------------------------------
@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> SimpleNamespace:
    d = tmp_path_factory.mktemp("inputs")
    s = SimpleNamespace(dir=d)
    ref = scene(REF_CENTRE, seed=0)
    ref_mask = ellipse_mask(REF_CENTRE)
    s.ref_mask_array = ref_mask
    s.ref = save(d / "ref.png", ref)
    s.ref_mask = save(d / "ref_mask.png", ref_mask.astype(np.uint8) * 255)
    s.targets = [save(d / f"t{i}.png", scene(c, seed=i + 1)) for i, c in enumerate(TARGET_CENTRES)]
    s.target_truth = [ellipse_mask(c) for c in TARGET_CENTRES]

    # mask / image formats
    s.ref_mask01 = save(d / "ref_mask01.png", ref_mask.astype(np.uint8))  # 0/1 grey
    pal = Image.frombytes("P", SIZE_WH, ref_mask.astype(np.uint8).tobytes())
    # background (index 0) is white, the structure (index 1) dark red: the palette index must count, not the colour
    pal.putpalette([255, 255, 255, 128, 0, 0] + [0, 0, 0] * 254)
    s.ref_mask_palette = d / "ref_mask_palette.png"
    pal.save(s.ref_mask_palette)
    rgb = np.zeros(ref_mask.shape + (3,), dtype=np.uint8)
    rgb[ref_mask] = (220, 30, 30)
    s.ref_mask_rgb = save(d / "ref_mask_rgb.png", rgb)
    rgba = np.dstack([ref, ref, ref, np.full_like(ref, 128)])  # half-transparent: alpha must be dropped
    s.ref_rgba = save(d / "ref_rgba.png", rgba)
    t16 = scene(TARGET_CENTRES[0], seed=11).astype(np.uint16) * 200 + 1000  # 16-bit, values 1000..52000
    s.target16 = d / "t16.png"
    Image.fromarray(t16).save(s.target16)

    # bad inputs
    s.empty_mask = save(d / "empty_mask.png", np.zeros(ref_mask.shape, dtype=np.uint8))
    s.small_mask = save(d / "small_mask.png", ref_mask[:120, :180].astype(np.uint8) * 255)
    rng = np.random.default_rng(123)
    s.garbage_png = d / "garbage.png"
    s.garbage_png.write_bytes(rng.integers(0, 256, 4000, dtype=np.uint8).tobytes())
    s.text_target = d / "notes.png"
    s.text_target.write_text("this is a text file, not an image\n" * 20)
    s.missing_target = d / "no_such_target.png"
    s.truncated_ckpt = d / "x.pth"
    s.truncated_ckpt.write_bytes(rng.integers(0, 256, 1000, dtype=np.uint8).tobytes())
    (d / "a").mkdir()
    (d / "b").mkdir()
    s.same_stem = [shutil.copy(s.targets[0], d / "a" / "scan.png"), shutil.copy(s.targets[1], d / "b" / "scan.png")]
    return s


@pytest.fixture(scope="module")
def single_run(synth, tmp_path_factory) -> SimpleNamespace:
    """One target (t0) into a folder that already holds a stale t0.png and results.json, with --overwrite."""
    out = tmp_path_factory.mktemp("single") / "out"
    out.mkdir()
    stale_png = out / "t0.png"
    save(stale_png, np.full((7, 5), 255, dtype=np.uint8))
    (out / "results.json").write_text('{"stale": true}')
    (out / "keep.txt").write_text("not ours")
    stale_bytes = stale_png.read_bytes()
    # capsys is function-scoped: capture by hand here
    o, e = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(o), contextlib.redirect_stderr(e):
        rc = cli.main(segment_argv(synth.ref, synth.ref_mask, synth.targets[:1], out, "--overwrite", "--quiet"))
    return SimpleNamespace(rc=rc, out_text=o.getvalue(), err=e.getvalue(), out=out, stale_bytes=stale_bytes)


# -- help, version, console script ----------------------------------------------------------------------------
def test_console_script_help_version_and_exit_status():
    exe = Path(sys.executable).parent / ("p2sam.exe" if os.name == "nt" else "p2sam")
    assert exe.exists(), f"console script not installed beside {sys.executable}"
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    r = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    assert "usage: p2sam" in r.stdout and "segment-image" in r.stdout
    r = subprocess.run([str(exe), "segment-image", "--help"], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    for opt in ("--reference", "--reference-mask", "--target", "--output-dir", "--model", "--model-type",
                "--device", "--method", "--max-parts", "--negative-parts", "--overwrite", "--quiet"):
        assert opt in r.stdout
    r = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"p2sam {P2SAMLogic.__version__}"
    # python -m P2SAMLogic is the same program, and a non-zero status reaches the shell
    r = subprocess.run([sys.executable, "-m", "P2SAMLogic"], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 2
    assert "usage: p2sam" in r.stdout + r.stderr


def test_in_process_help_and_missing_command(capsys):
    r = run_cli(["--version"], capsys)
    assert r.rc == 0 and r.out.strip() == f"p2sam {P2SAMLogic.__version__}"
    r = run_cli(["segment-image", "--help"], capsys)
    assert r.rc == 0 and "--reference-mask" in r.out
    r = run_cli([], capsys)
    assert r.rc == 2 and "usage: p2sam" in r.out
    r = run_cli(["segment-image", "--reference", "x.png"], capsys)  # required options missing (argparse)
    assert r.rc == 2 and "--reference-mask" in r.err


# -- successful runs ------------------------------------------------------------------------------------------
def test_4dlung_pair_p2sam(tmp_path, capsys):
    out = tmp_path / "out"
    r = run_cli(segment_argv(LUNG / "ref_image.png", LUNG / "ref_mask.png", [LUNG / "test_image.png"], out,
                             "--method", "p2sam", "--quiet"), capsys)
    assert r.rc == 0, r.err
    assert r.out.strip() == "" and "segmenting" not in r.err  # --quiet: no progress bar, no summary
    png = out / "test_image.png"
    assert png.is_file()
    assert Image.open(png).size == Image.open(LUNG / "test_image.png").size
    mask = read_mask_png(png)
    # the model's contour, against the truth beside the inputs and the no-model baseline (the prior's box or
    # its ellipse left in place: 0.489); measured 0.635 with LiteMedSAM, as the engine (test_lung_pair.py)
    truth = read_mask_png(LUNG / "test_mask.png")
    baseline = best_box_baseline(read_mask_png(LUNG / "ref_mask.png"), truth)
    assert dice(mask, truth) >= LUNG_PAIR_DICE - 0.05, dice(mask, truth)
    assert dice(mask, truth) >= baseline + 0.08, (dice(mask, truth), baseline)
    assert sorted(p.name for p in out.iterdir()) == ["results.json", "test_image.png"]  # no staging leftovers

    report = json.loads((out / "results.json").read_text())
    check_report_common(report, 1)
    assert report["tool"] == "p2sam segment-image"
    assert report["parameters"]["method"] == "p2sam" and report["parameters"]["max_parts"] == 5
    entry = report["targets"][0]
    assert entry["method"] == "p2sam"
    assert entry["mask"] == "test_image.png" and entry["size"] == [512, 512]
    assert entry["area_pixels"] == int(mask.sum())
    assert report["reference"]["area_pixels"] == int((np.array(Image.open(LUNG / "ref_mask.png")) > 0).sum())
    # one reference encode + one target encode (the crop pass is off by default)
    assert entry["crop_box"] is None
    assert report["encoder_calls"] == 2


def test_multi_target_one_reference_encode_and_clustering(synth, single_run, tmp_path, capsys):
    out = tmp_path / "new" / "nested" / "out"  # created, with its parents
    r = run_cli(segment_argv(synth.ref, synth.ref_mask, synth.targets, out), capsys)
    assert r.rc == 0, r.err
    assert "wrote 3 mask(s)" in r.out
    report = json.loads((out / "results.json").read_text())
    check_report_common(report, 3)
    assert sorted(p.name for p in out.iterdir()) == ["results.json", "t0.png", "t1.png", "t2.png"]
    for target, entry, truth, measured in zip(synth.targets, report["targets"], synth.target_truth, SYNTH_IOU):
        assert entry["target"] == str(target) and entry["mask"] == target.stem + ".png"
        mask = read_mask_png(out / entry["mask"])
        assert mask.shape == (SIZE_WH[1], SIZE_WH[0]) and entry["size"] == list(SIZE_WH)
        assert entry["area_pixels"] == int(mask.sum())
        # the mask follows the moved ellipse: it reaches the measured IoU and beats the reference mask left
        # in place (the no-model baseline) by a margin
        baseline = best_box_baseline(synth.ref_mask_array, truth, score=iou)
        print(f"{target.name}: IoU {iou(mask, truth):.3f}, no-model baseline {baseline:.3f}")
        assert iou(mask, truth) >= max(measured - 0.05, baseline + 0.1), (target.name, iou(mask, truth), baseline)
    # the reference is encoded once, each target once (the ellipse is big, so there is no crop pass)
    assert [t["crop_box"] for t in report["targets"]] == [None, None, None]
    assert report["encoder_calls"] == 4
    # clustering once per part count, whatever the number of targets: as for a single target
    assert single_run.rc == 0, single_run.err
    one = json.loads((single_run.out / "results.json").read_text())
    assert one["encoder_calls"] == 2
    assert report["reference"]["clusterings"] == one["reference"]["clusterings"]
    assert one["reference"]["clusterings"] >= report["parameters"]["max_parts"]
    # deterministic: t0's result does not depend on the other targets
    assert report["targets"][0]["chosen"] == one["targets"][0]["chosen"]


def test_overwrite_replaces_existing_outputs(single_run):
    assert single_run.rc == 0, single_run.err
    out = single_run.out
    assert (out / "t0.png").read_bytes() != single_run.stale_bytes
    mask = read_mask_png(out / "t0.png")
    assert mask.shape == (SIZE_WH[1], SIZE_WH[0])
    report = json.loads((out / "results.json").read_text())
    assert "stale" not in report and len(report["targets"]) == 1
    assert (out / "keep.txt").read_text() == "not ours"  # other files are left alone
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt", "results.json", "t0.png"]


@pytest.mark.parametrize("case", ["mask01_target16", "palette_rgba", "rgbmask_rgba_target16"])
def test_mask_and_image_formats(synth, tmp_path, capsys, case):
    ref, mask, target = {
        "mask01_target16": (synth.ref, synth.ref_mask01, synth.target16),
        "palette_rgba": (synth.ref_rgba, synth.ref_mask_palette, synth.targets[0]),
        "rgbmask_rgba_target16": (synth.ref_rgba, synth.ref_mask_rgb, synth.target16),
    }[case]
    if target == synth.target16:
        assert Image.open(target).mode in ("I;16", "I")  # really 16-bit
    if ref == synth.ref_rgba:
        assert Image.open(ref).mode == "RGBA"
    if mask == synth.ref_mask_palette:
        assert Image.open(mask).mode == "P"
    out = tmp_path / "out"
    r = run_cli(segment_argv(ref, mask, [target], out, "--method", "no-retrieval", "--max-parts", "2",
                             "--quiet"), capsys)
    assert r.rc == 0, r.err
    report = json.loads((out / "results.json").read_text())
    # the mask was read as the ellipse, whatever its encoding
    assert report["reference"]["area_pixels"] == int(synth.ref_mask_array.sum())
    assert report["targets"][0]["method"] == "no-retrieval"
    png = read_mask_png(out / (target.stem + ".png"))
    assert png.shape == (SIZE_WH[1], SIZE_WH[0])
    # the mask is in the target's frame: on the moved ellipse, not where the reference's was (the no-model baseline)
    baseline = best_box_baseline(synth.ref_mask_array, synth.target_truth[0], score=iou)
    got = iou(png, synth.target_truth[0])
    print(f"{case}: IoU {got:.3f}, no-model baseline {baseline:.3f}")
    assert got >= max(SYNTH_IOU_NO_RETRIEVAL - 0.05, baseline + 0.1), (got, baseline)


def test_tiny_structure_uses_feature_fallback(tmp_path, capsys):
    rng = np.random.default_rng(5)
    img = np.clip(rng.normal(60, 5, (200, 200)), 0, 255).astype(np.uint8)
    tgt = img.copy()
    mask = np.zeros((200, 200), dtype=np.uint8)
    # 3 x 3 pixels straddling feature-cell borders: no 4 x 4 cell of the 64 x 64 grid is half covered
    mask[99:102, 99:102] = 255
    img[99:102, 99:102] = 230
    tgt[119:122, 89:92] = 230
    ref, m, t = (save(tmp_path / "tiny_ref.png", img), save(tmp_path / "tiny_mask.png", mask),
                 save(tmp_path / "tiny_t.png", tgt))
    # whole image: 3 px of 200 become ~4 px of the 256-px input, so the fallback must act
    out = tmp_path / "out"
    r = run_cli(segment_argv(ref, m, [t], out, "--quiet", "--whole-image"), capsys)
    assert r.rc == 0, r.err
    report = json.loads((out / "results.json").read_text())
    assert report["reference"]["feature_fallback"] is True
    assert report["reference"]["area_pixels"] == 9
    assert read_mask_png(out / "tiny_t.png").shape == (200, 200)
    # the default search window (32 px at least) magnifies the structure 8x: no fallback needed
    out2 = tmp_path / "out2"
    r = run_cli(segment_argv(ref, m, [t], out2, "--quiet"), capsys)
    assert r.rc == 0, r.err
    report = json.loads((out2 / "results.json").read_text())
    assert report["reference"]["feature_fallback"] is False
    assert read_mask_png(out2 / "tiny_t.png").shape == (200, 200)


# -- bad inputs: exit status 2, a message naming the input and the problem, nothing written ------------------
# each case: (argv builder, substrings that must all appear in the error message)
BAD_CASES = {
    "empty_reference_mask": (
        lambda s, out: segment_argv(s.ref, s.empty_mask, s.targets[:1], out),
        lambda s: [str(s.empty_mask), "empty"]),
    "mask_size_differs": (
        lambda s, out: segment_argv(s.ref, s.small_mask, s.targets[:1], out),
        lambda s: [str(s.small_mask), "180 x 120", "200 x 160", "same size"]),
    "reference_not_an_image": (
        lambda s, out: segment_argv(s.garbage_png, s.ref_mask, s.targets[:1], out),
        lambda s: [str(s.garbage_png), "not a readable image"]),
    "reference_mask_not_an_image": (
        lambda s, out: segment_argv(s.ref, s.garbage_png, s.targets[:1], out),
        lambda s: [str(s.garbage_png), "not a readable image"]),
    "missing_target": (
        lambda s, out: segment_argv(s.ref, s.ref_mask, [s.targets[0], s.missing_target], out),
        lambda s: [str(s.missing_target), "does not exist"]),
    "target_is_text": (
        lambda s, out: segment_argv(s.ref, s.ref_mask, [s.targets[0], s.text_target], out),
        lambda s: [str(s.text_target), "not a readable image"]),
    "model_path_missing": (
        lambda s, out: segment_argv(s.ref, s.ref_mask, s.targets[:1], out, "--model", "/nonexistent.pth"),
        lambda s: ["/nonexistent.pth", "does not exist"]),
    "model_truncated_checkpoint": (
        lambda s, out: segment_argv(s.ref, s.ref_mask, s.targets[:1], out, "--model", s.truncated_ckpt),
        lambda s: [str(s.truncated_ckpt), "could not be read"]),
    "litemedsam_with_model_type": (
        lambda s, out: segment_argv(s.ref, s.ref_mask, s.targets[:1], out, "--model", "litemedsam",
                                    "--model-type", "vit_b"),
        lambda s: ["--model-type", "LiteMedSAM"]),
    "unknown_model_type": (
        lambda s, out: segment_argv(s.ref, s.ref_mask, s.targets[:1], out, "--model", s.truncated_ckpt,
                                    "--model-type", "vit_x"),
        lambda s: ["--model-type", "vit_x"]),
    "max_parts_zero": (
        lambda s, out: segment_argv(s.ref, s.ref_mask, s.targets[:1], out, "--max-parts", "0"),
        lambda s: ["--max-parts", "0"]),
    "negative_parts_negative": (
        lambda s, out: segment_argv(s.ref, s.ref_mask, s.targets[:1], out, "--negative-parts", "-1"),
        lambda s: ["--negative-parts", "-1"]),
    "targets_share_a_stem": (
        lambda s, out: segment_argv(s.ref, s.ref_mask, s.same_stem, out),
        lambda s: ["--target", "'scan'"]),
    "unknown_device": (
        lambda s, out: segment_argv(s.ref, s.ref_mask, s.targets[:1], out, "--device", "tpu"),
        lambda s: ["--device", "tpu"]),
}


@pytest.mark.parametrize("out_state", ["absent", "populated"])
@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_input_is_refused_and_nothing_written(synth, tmp_path, capsys, case, out_state):
    build, expected = BAD_CASES[case]
    out = tmp_path / "out"
    if out_state == "populated":
        out.mkdir()
        (out / "earlier.txt").write_text("an earlier run's notes")
        save(out / "other.png", np.full((4, 4), 255, dtype=np.uint8))
    before = snapshot(out)
    r = run_cli(build(synth, out), capsys)
    assert r.rc == 2, (r.rc, r.err)
    if not r.err.startswith("p2sam: error: "):  # argparse's own errors read "p2sam segment-image: error: "
        assert "error: " in r.err, r.err
    for part in expected(synth):
        assert part in r.err, f"{part!r} missing from the error message {r.err!r}"
    assert "Traceback" not in r.err
    assert_untouched(out, before)


def test_existing_output_is_refused_without_overwrite(synth, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    existing = save(out / "t0.png", np.full((7, 5), 255, dtype=np.uint8))
    before = snapshot(out)
    r = run_cli(segment_argv(synth.ref, synth.ref_mask, synth.targets[:1], out), capsys)
    assert r.rc == 2
    assert r.err.startswith("p2sam: error: ")
    for part in (str(out), "t0.png", "--overwrite"):
        assert part in r.err, r.err
    assert existing.read_bytes() == before["t0.png"]
    assert_untouched(out, before)


def test_output_path_is_a_file(synth, tmp_path, capsys):
    out = tmp_path / "out"
    out.write_text("a file where the folder should go")
    r = run_cli(segment_argv(synth.ref, synth.ref_mask, synth.targets[:1], out), capsys)
    assert r.rc == 2
    assert str(out) in r.err and "not a folder" in r.err
    assert out.read_text() == "a file where the folder should go"
