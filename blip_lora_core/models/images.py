"""Decode image files into plain 8-bit RGB PIL images, or fail with a DataError naming the file."""

from __future__ import annotations

import threading
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import DataError

DEFAULT_MAX_PIXELS = 100_000_000
"""Images with more pixels than this (width * height) are refused as possible decompression bombs."""

_OPEN_LOCK = threading.Lock()  # warnings.catch_warnings is process-global state
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_WIDE_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})


def load_image(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open, fully decode and convert one image file to RGB (EXIF orientation applied).

    Raises DataError naming the file when it is missing, empty, not an image, truncated or
    larger than ``max_pixels``.
    """
    path = Path(path)
    check_image_file(path)
    try:
        img = _open_checked(path, max_pixels)
        with img:
            img.load()
            return pil_to_rgb(img)
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from exc
    except Image.DecompressionBombError as exc:
        raise DataError(f"{path}: refused as a possible decompression bomb: {exc}") from exc
    except Exception as exc:
        raise DataError(f"{path}: cannot decode image: {exc}") from exc


def pil_to_rgb(img: Image.Image) -> Image.Image:
    """Return an 8-bit RGB copy of an in-memory image: EXIF orientation applied, alpha over white.

    16-bit and 32-bit grey modes are scaled to 0..255 (not clipped). Raises DataError for modes
    that cannot be converted.
    """
    img = ImageOps.exif_transpose(img)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode == "La":
        img = img.convert("LA")
    if img.mode == "LAB":
        return _lab_to_rgb(img)
    if img.mode in _ALPHA_MODES:
        return _over_white(img)
    if img.mode in _WIDE_MODES:
        return Image.fromarray(_wide_to_uint8(np.asarray(img)), mode="L").convert("RGB")
    if img.mode == "RGB":
        return img
    try:
        return img.convert("RGB")
    except ValueError as exc:
        raise DataError(f"unsupported image mode {img.mode!r}") from exc


def check_image_file(path: str | Path) -> None:
    """Cheap check without decoding: raise DataError unless ``path`` is an existing, non-empty file."""
    path = Path(path)
    try:
        if not path.is_file():
            what = "is not a file" if path.exists() else "not found"
            raise DataError(f"{path}: image {what}")
        size = path.stat().st_size
    except (OSError, ValueError) as exc:  # ValueError: embedded NUL, unencodable name
        raise DataError(f"{path}: cannot access image: {exc}") from exc
    if size == 0:
        raise DataError(f"{path}: image file is empty (0 bytes)")


def _open_checked(path: Path, max_pixels: int) -> Image.Image:
    """Open lazily (header only) and refuse images over ``max_pixels`` before decoding."""
    try:
        with _OPEN_LOCK, warnings.catch_warnings():
            # Our own cap decides; Pillow's hard DecompressionBombError still applies.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
    except UnidentifiedImageError as exc:
        raise DataError("not an image file (format not recognised)") from exc
    width, height = img.size
    if width * height > max_pixels:
        img.close()
        raise DataError(
            f"image is {width}x{height} = {width * height} pixels, over the limit of {max_pixels} "
            "(possible decompression bomb; raise max_pixels if the image is genuine)"
        )
    return img


def _lab_to_rgb(img: Image.Image) -> Image.Image:
    """CIE L*a*b* (as in some TIFFs) to sRGB through littlecms."""
    from PIL import ImageCms

    lab, srgb = ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB")
    return ImageCms.applyTransform(img, ImageCms.buildTransformFromOpenProfiles(lab, srgb, "LAB", "RGB"))


def _over_white(img: Image.Image) -> Image.Image:
    """Composite an image with alpha on a white background; returns RGB."""
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _wide_to_uint8(arr: np.ndarray) -> np.ndarray:
    """Scale a (H, W) 16/32-bit or float grey array to uint8 (H, W).

    Integer data within 0..65535 is treated as 16-bit (v / 257, rounded, so 65535 -> 255);
    anything else is stretched linearly from its own min..max.
    """
    arr = arr.astype(np.float64)
    if arr.size == 0:
        return arr.astype(np.uint8)
    lo, hi = float(arr.min()), float(arr.max())
    if lo >= 0 and hi <= 65535 and np.all(arr == np.floor(arr)):
        scaled = arr / 257.0
    elif hi > lo:
        scaled = (arr - lo) * (255.0 / (hi - lo))
    else:
        scaled = np.zeros_like(arr)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
