"""Reading 2D images and masks from disk, and writing masks atomically (P2SAMLogic.io.outputs).

Every array returned here is in the *original* frame of its file:
images ``H x W x 3`` uint8 RGB, masks ``H x W`` bool.
"""
from __future__ import annotations

from pathlib import Path
from typing import Tuple, Union

import numpy as np

from ..errors import InputError
from .outputs import atomic_path, write_text_atomic  # noqa: F401 (write_text_atomic: re-exported for callers)

PathLike = Union[str, Path]


def _open(path: PathLike):
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.exists():
        raise InputError(path, "file does not exist")
    if p.is_dir():
        raise InputError(path, "is a folder, not an image file")
    try:
        im = Image.open(p)
        im.load()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise InputError(path, f"is not a readable image file ({exc.__class__.__name__}: {exc})") from None
    return im


def _to_uint8(a: np.ndarray) -> np.ndarray:
    """Scale any numeric array to uint8: 8-bit stays as is, others are min-max stretched."""
    if a.dtype == np.uint8:
        return a
    a = a.astype(np.float64)
    lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
    if hi <= lo:
        return np.zeros(a.shape, dtype=np.uint8)
    return np.clip((a - lo) / (hi - lo) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def image_to_rgb(array: np.ndarray, source: str = "image") -> np.ndarray:
    """Grey ``H x W``, grey+alpha ``H x W x 2``, RGB or RGBA ``H x W x {3,4}`` of any numeric dtype → uint8 RGB."""
    a = np.asarray(array)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[2] not in (1, 2, 3, 4):
        raise InputError(source, f"is not a 2D grey or colour image (array shape {a.shape})")
    if a.shape[2] in (2, 4):  # drop alpha
        a = a[..., :-1]
    a = _to_uint8(a)
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    return np.ascontiguousarray(a)


def read_image(path: PathLike) -> np.ndarray:
    """Read a grey / RGB / RGBA / palette image, 8- or 16-bit, as ``H x W x 3`` uint8 RGB."""
    im = _open(path)
    if getattr(im, "n_frames", 1) > 1 and im.format != "MPO":  # MPO: camera JPEG + preview; frame 0 is the photo
        raise InputError(path, f"holds {im.n_frames} frames; give a single 2D image")
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif im.mode in ("1", "CMYK", "YCbCr", "LAB", "HSV"):
        im = im.convert("RGB")
    return image_to_rgb(np.array(im), str(path))


def read_mask(path: PathLike) -> np.ndarray:
    """Read a binary mask as ``H x W`` bool.

    0/1 or 0/255 grey, JPEG-noisy grey (threshold at half the maximum), palette
    PNGs (palette index > 0, not the palette colour), RGB/RGBA (any colour
    channel above half its maximum).
    """
    im = _open(path)
    if im.mode == "P":
        a = np.array(im)  # palette indices
        return a > 0
    if getattr(im, "n_frames", 1) > 1:
        raise InputError(path, f"holds {im.n_frames} frames; give a single 2D mask")
    a = np.array(im)
    if a.ndim == 3:
        if a.shape[2] in (2, 4):
            colour, alpha = a[..., :-1], a[..., -1]
            # a mask drawn as opaque strokes on a transparent layer: the alpha channel is the mask
            a = alpha if colour.min() == colour.max() and alpha.min() != alpha.max() else colour
        if a.ndim == 3:
            a = a.max(axis=2)
    a = a.astype(np.float64)
    top = float(a.max()) if a.size else 0.0
    if top <= 1.0:
        return a > 0
    return a > top / 2.0


def check_mask(mask: np.ndarray, image_shape: Tuple[int, ...], source: str, image_source: str) -> np.ndarray:
    """Check a mask against its image; returns it as bool. Errors name the mask's source."""
    m = np.asarray(mask)
    if m.ndim != 2:
        raise InputError(source, f"mask must be 2D, got shape {m.shape}")
    if m.shape != tuple(image_shape[:2]):
        raise InputError(source, f"mask is {m.shape[1]} x {m.shape[0]} pixels but the image {image_source} is "
                         f"{image_shape[1]} x {image_shape[0]}; they must be the same size")
    m = m.astype(bool)
    if not m.any():
        raise InputError(source, "mask is empty (no foreground pixel); the reference needs the structure outlined")
    return m


def write_png_atomic(path: PathLike, array: np.ndarray) -> None:
    """Write ``array`` (uint8 ``H x W`` or ``H x W x 3``) as PNG, atomically (:func:`P2SAMLogic.io.outputs.atomic_path`)."""
    from PIL import Image

    with atomic_path(path, ".png") as tmp:
        Image.fromarray(np.ascontiguousarray(array)).save(tmp, format="PNG")
