"""SAM code paths on a tiny randomly initialised SAM network (plumbing and shapes, no accuracy claims),
and the checkpoint errors a user sees for a wrong or broken SAM file."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from P2SAMLogic.errors import CheckpointError, InputError
from P2SAMLogic.models import load_model
from P2SAMLogic.models.sam import SAM_ARCHITECTURES, SegmentAnything, infer_model_type
from P2SAMLogic.method.segmenter import P2SAMConfig, P2SAMSegmenter

CPU = torch.device("cpu")


# -- encode / decode -----------------------------------------------------------------------
def test_tiny_sam_encode_shapes(tiny_sam, make_disc):
    img, _ = make_disc(90, 50, shape=(120, 200))
    emb = tiny_sam.encode([img])[0]
    assert tiny_sam.input_size == 256
    assert tiny_sam.prompt_modality == "points"
    assert emb.features.shape == (1, 256, 16, 16)
    assert emb.features.dtype == torch.float32
    assert emb.grid == 16
    assert emb.frame.original_size == (120, 200)


def test_tiny_sam_batched_encode_dedups(fresh_tiny_sam, make_disc):
    a, _ = make_disc(60, 50)
    b, _ = make_disc(120, 70)
    embs = fresh_tiny_sam.encode([a, b, a.copy(), b])
    assert fresh_tiny_sam.encode_calls == 2
    assert embs[0].key == embs[2].key and embs[1].key == embs[3].key and embs[0].key != embs[1].key
    torch.testing.assert_close(embs[0].features, embs[2].features)
    # batched encoding gives the same features as encoding alone
    alone = SegmentAnything(fresh_tiny_sam.net, CPU, name="other", sha256="1" * 64).encode([b])[0]
    torch.testing.assert_close(alone.features, embs[1].features, atol=1e-4, rtol=1e-4)


def test_tiny_sam_decode_points_padded(tiny_sam, make_disc):
    img, _ = make_disc(90, 50, shape=(120, 200))
    emb = tiny_sam.encode([img])[0]
    pts = np.array([
        [[90, 50], [10, 10], [0, 0]],      # 1 positive, 1 negative, 1 padding
        [[80, 40], [0, 0], [0, 0]],        # 1 positive, 2 padding
        [[80, 40], [150, 100], [3, 117]],  # same as row 1 but other coordinates on the padding
    ], dtype=np.float64)
    lab = np.array([[1, 0, -1], [1, -1, -1], [1, -1, -1]])
    out = tiny_sam.decode(emb, points=pts, point_labels=lab)
    assert out.low_res_logits.shape == (3, 1, 64, 64)
    assert out.iou.shape == (3,)
    assert torch.isfinite(out.low_res_logits).all()
    # padding points are inert: their coordinates do not matter
    torch.testing.assert_close(out.low_res_logits[1], out.low_res_logits[2], atol=1e-5, rtol=1e-5)
    # batch rows are independent
    one = tiny_sam.decode(emb, points=pts[:1], point_labels=lab[:1])
    torch.testing.assert_close(one.low_res_logits[0], out.low_res_logits[0], atol=1e-4, rtol=1e-4)
    # points + box + mask input together (the cascade's third call)
    boxes = np.array([[60, 20, 120, 80]] * 3, dtype=np.float64)
    out3 = tiny_sam.decode(emb, points=pts, point_labels=lab, boxes=boxes, mask_input=out.low_res_logits)
    assert out3.low_res_logits.shape == (3, 1, 64, 64)
    # bad shapes are refused
    with pytest.raises(ValueError):
        tiny_sam.decode(emb, points=pts[0], point_labels=lab[0])


# -- the segmenter on a point-prompt model -------------------------------------------------------
class DecoderCallCounter:
    """Instrumentation: records the batch size of each real mask-decoder call."""

    def __init__(self, decoder: torch.nn.Module) -> None:
        self.batches = []
        self._forward = decoder.forward

    def __call__(self, *args, **kwargs):
        self.batches.append(int(kwargs["sparse_prompt_embeddings"].shape[0]))
        return self._forward(*args, **kwargs)


def test_segmenter_points_cascade_and_reuse(fresh_tiny_sam, make_disc, monkeypatch):
    model = fresh_tiny_sam
    counter = DecoderCallCounter(model.net.mask_decoder)
    monkeypatch.setattr(model.net.mask_decoder, "forward", counter)
    max_parts = 3
    seg = P2SAMSegmenter(model, P2SAMConfig(max_parts=max_parts, crop_pass=False, search_context=None))
    ref_img, ref_mask = make_disc(70, 60)
    ref = seg.prepare_reference(ref_img, ref_mask)
    assert model.encode_calls == 1
    assert not ref.foreground.fallback and ref.background is not None
    np.testing.assert_array_equal(ref.box, [45, 35, 96, 86])
    assert ref.relative_size == pytest.approx((51 / 200, 51 / 200))
    assert counter.batches == []

    targets = [make_disc(cx, 55)[0] for cx in (100, 130, 60)]
    for k, target in enumerate(targets):
        counter.batches.clear()
        res = seg.segment(ref, target)
        assert res.mask.shape == target.shape[:2] and res.mask.dtype == bool
        assert [c.parts for c in res.candidates] == list(range(1, max_parts + 1))
        for c in res.candidates:
            assert len(c.positive_points) == c.parts
            assert len(c.negative_points) == 1
            for x, y in c.positive_points + c.negative_points:
                assert 0 <= x <= 199 and 0 <= y <= 119
        assert res.chosen in res.candidates
        finite = [c.score for c in res.candidates if np.isfinite(c.score)]
        if finite:
            assert res.score == min(finite)
        assert res.crop_box is None
        # the three-call cascade, every candidate in each call's batch (third call: those with a mask)
        assert len(counter.batches) == 3, counter.batches
        assert counter.batches[:2] == [max_parts, max_parts]
        assert 1 <= counter.batches[2] <= max_parts
        # encode: the reference once, plus each distinct target once
        assert model.encode_calls == 1 + (k + 1)
        # clustering: once per part count plus once for the negatives, ever
        assert ref.clusterings == max_parts + 1

    # the same target again: cached embedding, cached prototypes
    again = seg.segment(ref, targets[0])
    assert model.encode_calls == 1 + len(targets)
    assert ref.clusterings == max_parts + 1
    assert again.mask.shape == (120, 200)


def test_segmenter_persam_single_candidate(fresh_tiny_sam, make_disc):
    seg = P2SAMSegmenter(fresh_tiny_sam, P2SAMConfig(method="persam", crop_pass=False, search_context=None))
    ref_img, ref_mask = make_disc(70, 60)
    ref = seg.prepare_reference(ref_img, ref_mask)
    res = seg.segment(ref, make_disc(100, 55)[0])
    assert len(res.candidates) == 1
    c = res.candidates[0]
    assert c.parts == 1 and len(c.positive_points) == 1 and len(c.negative_points) == 1
    assert ref.clusterings == 1


def test_segmenter_reference_errors(tiny_sam, make_disc):
    seg = P2SAMSegmenter(tiny_sam, P2SAMConfig(crop_pass=False, search_context=None))
    img, mask = make_disc(70, 60)
    with pytest.raises(InputError, match="empty"):
        seg.prepare_reference(img, np.zeros_like(mask), source="ref_mask.png")
    with pytest.raises(InputError) as info:
        seg.prepare_reference(img, mask[:, :100], source="ref_mask.png")
    assert info.value.source == "ref_mask.png"
    with pytest.raises(InputError) as info:
        P2SAMSegmenter(tiny_sam, P2SAMConfig(max_parts=0))
    assert info.value.source == "--max-parts"


# -- checkpoint errors ------------------------------------------------------------------------
def _assert_names_file(err: pytest.ExceptionInfo, path) -> None:
    assert isinstance(err.value, CheckpointError)
    assert str(path) in str(err.value)
    assert os.path.basename(str(path)) in str(err.value)


@pytest.fixture(scope="module")
def tiny_checkpoint(tiny_sam_net, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny_sam.pth"
    torch.save(tiny_sam_net.state_dict(), path)
    return path


def test_not_a_sam_checkpoint(tiny_checkpoint):
    with pytest.raises(CheckpointError) as err:
        SegmentAnything.from_checkpoint(str(tiny_checkpoint), "vit_b", CPU)
    _assert_names_file(err, tiny_checkpoint)
    assert "not a Segment Anything checkpoint" in str(err.value)
    with pytest.raises(CheckpointError) as err:
        load_model(str(tiny_checkpoint), device="cpu")
    _assert_names_file(err, tiny_checkpoint)


def test_truncated_checkpoint(tiny_checkpoint, tmp_path):
    path = tmp_path / "truncated.pth"
    path.write_bytes(tiny_checkpoint.read_bytes()[:1000])
    with pytest.raises(CheckpointError) as err:
        SegmentAnything.from_checkpoint(str(path), None, CPU)
    _assert_names_file(err, path)


def test_missing_empty_text_folder_checkpoints(tmp_path):
    missing = tmp_path / "nowhere.pth"
    with pytest.raises(CheckpointError) as err:
        SegmentAnything.from_checkpoint(str(missing), "vit_b", CPU)
    _assert_names_file(err, missing)
    assert "does not exist" in str(err.value)
    with pytest.raises(CheckpointError) as err:
        load_model(str(missing), device="cpu")
    _assert_names_file(err, missing)

    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError) as err:
        SegmentAnything.from_checkpoint(str(empty), None, CPU)
    _assert_names_file(err, empty)
    assert "empty" in str(err.value)

    text = tmp_path / "notes.pth"
    text.write_text("this is not a checkpoint\n" * 10)
    with pytest.raises(CheckpointError) as err:
        SegmentAnything.from_checkpoint(str(text), None, CPU)
    _assert_names_file(err, text)

    with pytest.raises(CheckpointError) as err:
        SegmentAnything.from_checkpoint(str(tmp_path), None, CPU)
    assert str(tmp_path) in str(err.value)


def test_checkpoint_without_state_dict(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(3)], path)
    with pytest.raises(CheckpointError) as err:
        SegmentAnything.from_checkpoint(str(path), None, CPU)
    _assert_names_file(err, path)
    assert "state dict" in str(err.value)


def test_unknown_model_type(tiny_checkpoint):
    with pytest.raises(InputError) as err:
        load_model(str(tiny_checkpoint), model_type="vit_x", device="cpu")
    assert err.value.source == "--model-type"
    assert "vit_x" in str(err.value)
    with pytest.raises(InputError) as err:
        SegmentAnything.from_checkpoint(str(tiny_checkpoint), "vit_x", CPU)
    assert err.value.source == "--model-type"


def test_litemedsam_rejects_model_type():
    with pytest.raises(InputError) as err:
        load_model("litemedsam", model_type="vit_b", device="cpu")
    assert err.value.source == "--model-type"


@pytest.fixture(scope="module")
def vit_b_shaped_checkpoint(tmp_path_factory):
    """A (cheap, incomplete) state dict whose encoder looks like vit_b: 768 wide, 12 blocks, wrapped as DataParallel."""
    state = {"module.image_encoder.patch_embed.proj.weight": torch.zeros(768, 3, 16, 16)}
    for i in range(12):
        state[f"module.image_encoder.blocks.{i}.norm1.weight"] = torch.ones(768)
    path = tmp_path_factory.mktemp("vitb") / "sam_vit_b_finetuned.pth"
    torch.save({"model": state}, path)
    return path


def test_infer_model_type():
    for name, arch in SAM_ARCHITECTURES.items():
        state = {"image_encoder.patch_embed.proj.weight": torch.zeros(arch.embed_dim, 3, 1, 1)}
        state.update({f"image_encoder.blocks.{i}.norm1.weight": torch.zeros(1) for i in range(arch.depth)})
        assert infer_model_type(state) == name
    assert infer_model_type({"image_encoder.patch_embed.proj.weight": torch.zeros(768, 3, 1, 1)}) is None
    assert infer_model_type({}) is None


def test_model_type_mismatch(vit_b_shaped_checkpoint):
    path = vit_b_shaped_checkpoint
    with pytest.raises(CheckpointError) as err:
        SegmentAnything.from_checkpoint(str(path), "vit_l", CPU)
    _assert_names_file(err, path)
    assert "vit_b" in str(err.value) and "vit_l" in str(err.value)


def test_incomplete_checkpoint_strict_load(vit_b_shaped_checkpoint):
    path = vit_b_shaped_checkpoint
    with pytest.raises(CheckpointError) as err:
        SegmentAnything.from_checkpoint(str(path), "vit_b", CPU)
    _assert_names_file(err, path)
    msg = str(err.value)
    assert "missing" in msg and "vit_b" in msg


def test_search_window_frames(fresh_tiny_sam, make_disc):
    """With a search window the reference is a crop around the structure, the target is searched in a
    window of the same size at the same relative position, and everything comes back in full-image pixels."""
    model = fresh_tiny_sam
    seg = P2SAMSegmenter(model, P2SAMConfig(max_parts=2, search_context=0.5))
    ref_img, ref_mask = make_disc(70, 60)  # box [45, 35, 96, 86]: 51 px, window side 51 * 2 = 102
    ref = seg.prepare_reference(ref_img, ref_mask)
    x0, y0, x1, y1 = ref.window
    assert (x1 - x0, y1 - y0) == (102, 102)
    assert x0 <= 45 and y0 <= 35 and x1 >= 96 and y1 >= 86
    assert ref.mask.shape == (102, 102) and ref.embedding.frame.original_size == (102, 102)
    np.testing.assert_array_equal(ref.full_box, [45, 35, 96, 86])
    target = make_disc(80, 60)[0]
    res = seg.segment(ref, target)
    assert res.mask.shape == target.shape[:2]
    wx0, wy0, wx1, wy1 = res.window
    assert (wx1 - wx0, wy1 - wy0) == (102, 102)
    # nothing outside the window; every prompt inside it, in full-image pixels
    outside = res.mask.copy()
    outside[int(wy0):int(wy1), int(wx0):int(wx1)] = False
    assert not outside.any()
    for c in res.candidates:
        for x, y in c.positive_points + c.negative_points:
            assert wx0 <= x <= wx1 and wy0 <= y <= wy1
    # an explicit window that misses the image is refused, naming the window
    with pytest.raises(InputError, match="window"):
        seg.segment(ref, target, window=(500, 500, 600, 600))
