"""Reading 2D images and masks in the formats users bring, and writing masks atomically."""
from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from P2SAMLogic.errors import InputError
from P2SAMLogic.io.images2d import check_mask, image_to_rgb, read_image, read_mask, write_png_atomic, write_text_atomic

H, W = 30, 50


def _block(value_in=1, value_out=0, dtype=np.uint8) -> np.ndarray:
    a = np.full((H, W), value_out, dtype=dtype)
    a[5:20, 10:40] = value_in
    return a


EXPECTED = _block().astype(bool)


# -- images ------------------------------------------------------------------------------
def test_read_grey_8bit(tmp_path):
    grey = (np.arange(H * W).reshape(H, W) % 256).astype(np.uint8)
    Image.fromarray(grey, mode="L").save(tmp_path / "g.png")
    rgb = read_image(tmp_path / "g.png")
    assert rgb.shape == (H, W, 3) and rgb.dtype == np.uint8
    for ch in range(3):
        np.testing.assert_array_equal(rgb[..., ch], grey)  # 8-bit kept as is, not stretched


def test_read_grey_16bit_is_stretched(tmp_path):
    a = np.zeros((H, W), dtype=np.uint16)
    a[:, 10:20] = 1000
    a[:, 20:30] = 2000
    a[:, 30:] = 4000
    Image.fromarray(a).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")  # really a 16-bit file
    rgb = read_image(tmp_path / "g16.png")
    assert rgb.shape == (H, W, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[..., 0], rgb[..., 2])
    assert rgb[0, 0, 0] == 0
    assert rgb[0, 15, 0] == round(1000 / 4000 * 255)  # 64
    assert rgb[0, 25, 0] == 128
    assert rgb[0, 40, 0] == 255


def test_read_rgba_drops_alpha(tmp_path):
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, size=(H, W, 4), dtype=np.uint8)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "c.png")
    rgb = read_image(tmp_path / "c.png")
    assert rgb.shape == (H, W, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb, rgba[..., :3])


def test_read_palette_image_gives_palette_colours(tmp_path):
    idx = _block(value_in=2, value_out=1)
    idx[0, 0] = 0
    im = Image.fromarray(idx, mode="P")
    im.putpalette([0, 0, 0, 10, 20, 30, 200, 100, 50] + [0] * (256 * 3 - 9))
    im.save(tmp_path / "p.png")
    rgb = read_image(tmp_path / "p.png")
    assert rgb.shape == (H, W, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[0, 0], [0, 0, 0])
    np.testing.assert_array_equal(rgb[1, 1], [10, 20, 30])
    np.testing.assert_array_equal(rgb[10, 20], [200, 100, 50])


def test_image_to_rgb_float_and_constant():
    f = np.linspace(-1.0, 1.0, H * W).reshape(H, W)
    rgb = image_to_rgb(f)
    assert rgb.dtype == np.uint8 and rgb.shape == (H, W, 3)
    assert rgb.min() == 0 and rgb.max() == 255
    assert (image_to_rgb(np.full((H, W), 7.5)) == 0).all()
    with pytest.raises(InputError):
        image_to_rgb(np.zeros((H, W, 5)), "five.png")


def test_multi_frame_image_refused(tmp_path):
    frames = [Image.fromarray(_block(v)) for v in (10, 200)]
    frames[0].save(tmp_path / "stack.tif", save_all=True, append_images=frames[1:])
    with pytest.raises(InputError) as err:
        read_image(tmp_path / "stack.tif")
    assert "stack.tif" in str(err.value) and "frames" in str(err.value)


# -- masks -------------------------------------------------------------------------------
def test_read_mask_0_1_and_0_255(tmp_path):
    Image.fromarray(_block(1)).save(tmp_path / "m01.png")
    Image.fromarray(_block(255)).save(tmp_path / "m255.png")
    for name in ("m01.png", "m255.png"):
        m = read_mask(tmp_path / name)
        assert m.dtype == bool and m.shape == (H, W)
        np.testing.assert_array_equal(m, EXPECTED)


def test_read_mask_palette_uses_indices(tmp_path):
    im = Image.fromarray(_block(1), mode="P")
    im.putpalette([0, 0, 0, 128, 0, 0] + [0] * (254 * 3))
    im.save(tmp_path / "pal.png")
    assert Image.open(tmp_path / "pal.png").mode == "P"
    m = read_mask(tmp_path / "pal.png")
    np.testing.assert_array_equal(m, EXPECTED)


def test_read_mask_rgb(tmp_path):
    rgb = np.zeros((H, W, 3), dtype=np.uint8)
    rgb[EXPECTED] = (0, 0, 200)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "rgb.png"), EXPECTED)
    rgba = np.zeros((H, W, 4), dtype=np.uint8)
    rgba[..., 3] = 255  # opaque everywhere: alpha must not count as foreground
    rgba[EXPECTED, 1] = 128
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "rgba.png"), EXPECTED)


def test_read_mask_noisy_grey(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 21, size=(H, W)).astype(np.uint8)
    a[EXPECTED] = rng.integers(235, 256, size=int(EXPECTED.sum())).astype(np.uint8)
    Image.fromarray(a).save(tmp_path / "noisy.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "noisy.png"), EXPECTED)


def test_read_mask_real_jpeg(tmp_path):
    Image.fromarray(_block(255)).save(tmp_path / "m.jpg", quality=75)
    raw = np.array(Image.open(tmp_path / "m.jpg"))
    assert not set(np.unique(raw)) <= {0, 255}  # really lossy
    m = read_mask(tmp_path / "m.jpg")
    assert (m != EXPECTED).sum() <= 0.01 * EXPECTED.size


def test_unreadable_and_missing_files(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    for reader in (read_image, read_mask):
        with pytest.raises(InputError) as err:
            reader(bad)
        assert str(bad) in str(err.value) and err.value.source == str(bad)
    missing = tmp_path / "missing.png"
    for reader in (read_image, read_mask):
        with pytest.raises(InputError) as err:
            reader(missing)
        assert str(missing) in str(err.value) and "does not exist" in str(err.value)
    with pytest.raises(InputError) as err:
        read_image(tmp_path)
    assert "folder" in str(err.value)


def test_check_mask():
    img_shape = (H, W, 3)
    ok = check_mask(_block(255), img_shape, "mask.png", "image.png")
    assert ok.dtype == bool
    np.testing.assert_array_equal(ok, EXPECTED)
    with pytest.raises(InputError) as err:
        check_mask(np.ones((H + 2, W - 1), dtype=bool), img_shape, "mask.png", "image.png")
    msg = str(err.value)
    assert err.value.source == "mask.png"
    assert f"{W - 1} x {H + 2}" in msg and f"{W} x {H}" in msg and "image.png" in msg
    with pytest.raises(InputError) as err:
        check_mask(np.zeros((H, W), dtype=bool), img_shape, "mask.png", "image.png")
    assert "empty" in str(err.value) and err.value.source == "mask.png"
    with pytest.raises(InputError):
        check_mask(np.ones((H, W, 3), dtype=bool), img_shape, "mask.png", "image.png")


# -- writing -----------------------------------------------------------------------------
def test_write_png_atomic(tmp_path):
    out = tmp_path / "out.png"
    write_png_atomic(out, _block(255))
    np.testing.assert_array_equal(np.array(Image.open(out)), _block(255))
    # overwrite in place
    rgb = np.zeros((H, W, 3), dtype=np.uint8)
    rgb[..., 1] = 99
    write_png_atomic(out, rgb)
    np.testing.assert_array_equal(np.array(Image.open(out)), rgb)
    assert sorted(os.listdir(tmp_path)) == ["out.png"]


def test_write_png_atomic_failure_leaves_nothing(tmp_path):
    out = tmp_path / "bad.png"
    with pytest.raises(Exception):
        write_png_atomic(out, np.zeros((H, W, 5), dtype=np.float64))  # PIL cannot make an image of this
    assert os.listdir(tmp_path) == []
    # a failed overwrite keeps the old file intact
    write_png_atomic(out, _block(255))
    with pytest.raises(Exception):
        write_png_atomic(out, np.zeros((H, W, 5), dtype=np.float64))
    assert sorted(os.listdir(tmp_path)) == ["bad.png"]
    np.testing.assert_array_equal(np.array(Image.open(out)), _block(255))


def test_write_text_atomic(tmp_path):
    out = tmp_path / "result.json"
    write_text_atomic(out, '{"a": 1}\n')
    write_text_atomic(out, '{"a": 2}\n')
    assert out.read_text(encoding="utf-8") == '{"a": 2}\n'
    assert sorted(os.listdir(tmp_path)) == ["result.json"]


def test_atomic_writes_get_the_same_permissions_as_a_plain_write(tmp_path):
    """Written masks / reports must be as readable as any file the user creates (umask), not 0600
    (a temporary file made by ``tempfile.mkstemp`` is 0600, and ``os.replace`` would keep that)."""
    plain = tmp_path / "plain.png"
    plain.write_bytes(b"")
    expected = os.stat(plain).st_mode & 0o777
    png = tmp_path / "mask.png"
    txt = tmp_path / "result.json"
    write_png_atomic(png, _block(255))
    write_text_atomic(txt, "{}\n")
    assert oct(os.stat(png).st_mode & 0o777) == oct(expected)
    assert oct(os.stat(txt).st_mode & 0o777) == oct(expected)
