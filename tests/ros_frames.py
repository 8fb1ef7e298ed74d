"""Camera messages for bench/ros_probe.py made from seed_blocks photos, each with the RGB image the node sees."""

from __future__ import annotations

import base64
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from blip_lora_core.runtime.image_msgs import decode_compressed, decode_image

SIZE = (96, 72)  # width, height: small messages, the tiny model resizes anyway


def photo(path: Path) -> np.ndarray:
    """(72, 96, 3) uint8 RGB."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB").resize(SIZE, Image.BILINEAR), dtype=np.uint8).copy()


def _yuyv(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) RGB -> (H, W * 2) YUYV bytes (BT.601, chroma averaged over each pixel pair)."""
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    y = 0.299 * r + 0.587 * g + 0.114 * b
    u, v = 0.492 * (b - y) + 128, 0.877 * (r - y) + 128
    packed = np.empty((rgb.shape[0], rgb.shape[1] * 2), np.float64)
    packed[:, 0::2] = y
    packed[:, 1::4] = (u[:, 0::2] + u[:, 1::2]) / 2
    packed[:, 3::4] = (v[:, 0::2] + v[:, 1::2]) / 2
    return np.clip(np.rint(packed), 0, 255).astype(np.uint8)


def image_frame(rgb: np.ndarray, encoding: str, *, pad: int = 0, **fields) -> tuple[dict, np.ndarray]:
    """A sensor_msgs/Image of ``rgb`` in ``encoding`` (rows padded by ``pad`` bytes); the image the node sees."""
    height, width = rgb.shape[:2]
    pixels = {"rgb8": rgb, "bgr8": rgb[..., ::-1], "mono8": cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY),
              "yuyv": _yuyv(rgb)}[encoding]
    rows = np.ascontiguousarray(pixels).reshape(height, -1)
    step = rows.shape[1] + pad
    data = np.full((height, step), 0xEE, np.uint8)
    data[:, : rows.shape[1]] = rows
    seen = decode_image(height, width, encoding, step, data.tobytes())
    if encoding in ("rgb8", "bgr8"):
        np.testing.assert_array_equal(seen, rgb)
    frame = dict(kind="image", encoding=encoding, height=height, width=width, step=step,
                 data_b64=base64.b64encode(data.tobytes()).decode(), **fields)
    return frame, seen


def compressed_frame(rgb: np.ndarray, fmt: str, **fields) -> tuple[dict, np.ndarray]:
    """A sensor_msgs/CompressedImage of ``rgb`` ('jpeg', 'png', 'tiff', '... compressed rgb8'); what the node sees."""
    kind = next(kind for kind in ("jpeg", "png", "tiff") if kind in fmt)
    as_rgb = fmt.strip().endswith("rgb8")
    ok, payload = cv2.imencode({"jpeg": ".jpg", "png": ".png", "tiff": ".tiff"}[kind],
                               np.ascontiguousarray(rgb if as_rgb else rgb[..., ::-1]))
    assert ok
    seen = decode_compressed(fmt, payload.tobytes())
    if kind != "jpeg":
        np.testing.assert_array_equal(seen, rgb)
    return dict(kind="compressed", format=fmt, data_b64=base64.b64encode(payload.tobytes()).decode(), **fields), seen
