"""Camera messages for bench/ros_probe.py made from seed_blocks photos.

The image the node should see never comes from the decoder under test: rgb8/bgr8 are the source array,
mono8 the grey array the message was made from; other encodings are decoded by the real cv_bridge in the
probe process (``bridged``).
"""

from __future__ import annotations

import base64
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

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


def image_frame(rgb: np.ndarray, encoding: str, *, pad: int = 0, **fields) -> tuple[dict, np.ndarray | None]:
    """A sensor_msgs/Image of ``rgb`` in ``encoding`` (rows padded by ``pad`` bytes); the image the node should
    see where it is known without decoding (rgb8, bgr8, mono8), else None (ask the probe for cv_bridge's)."""
    height, width = rgb.shape[:2]
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    pixels = {"rgb8": rgb, "bgr8": rgb[..., ::-1], "mono8": gray, "yuv422_yuy2": _yuyv(rgb)}[encoding]
    seen = {"rgb8": rgb, "bgr8": rgb, "mono8": np.repeat(gray[..., None], 3, axis=2)}.get(encoding)
    rows = np.ascontiguousarray(pixels).reshape(height, -1)
    step = rows.shape[1] + pad
    data = np.full((height, step), 0xEE, np.uint8)
    data[:, : rows.shape[1]] = rows
    frame = dict(kind="image", encoding=encoding, height=height, width=width, step=step,
                 data_b64=base64.b64encode(data.tobytes()).decode(), **fields)
    return frame, seen


def compressed_frame(rgb: np.ndarray, fmt: str, **fields) -> tuple[dict, np.ndarray | None]:
    """A sensor_msgs/CompressedImage of ``rgb`` ('jpeg', 'png', ...); the source array for lossless formats,
    None for jpeg (ask the probe for cv_bridge's decoding)."""
    kind = next(kind for kind in ("jpeg", "png", "tiff") if kind in fmt)
    suffix = {"jpeg": ".jpg", "png": ".png", "tiff": ".tiff"}[kind]
    ok, payload = cv2.imencode(suffix, np.ascontiguousarray(rgb[..., ::-1]))
    assert ok
    frame = dict(kind="compressed", format=fmt, data_b64=base64.b64encode(payload.tobytes()).decode(), **fields)
    return frame, None if kind == "jpeg" else rgb


def bridged(report_frame: dict) -> np.ndarray:
    """The image cv_bridge decoded in the probe (bridge: true)."""
    data = base64.b64decode(report_frame["bridge_b64"])
    return np.frombuffer(data, np.uint8).reshape(report_frame["bridge_shape"]).copy()
