"""Decode ROS 2 camera messages (sensor_msgs/Image, sensor_msgs/CompressedImage) into RGB arrays.

One module shared by the ROS 2 node and the offline rosbag tools. Every decoder returns a fresh,
C-contiguous ``(H, W, 3)`` uint8 RGB array and raises only ``ImageDecodeError``.
"""

from __future__ import annotations

import array
import io
import operator
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from PIL import Image

from ..errors import ImageDecodeError


@dataclass(frozen=True)
class _Layout:
    """How one raw encoding lays out its bytes and how OpenCV turns it into RGB.

    bytes_per_pixel: bytes one pixel takes in a row (luma plane for planar YUV).
    channels: bytes per pixel as the last axis handed to OpenCV (1 means a 2-D array).
    code: cv2.cvtColor code to RGB, or None when the pixels already are RGB.
    even_width / even_height: the format needs even sizes (chroma subsampling).
    planar: NV12/NV21, a luma plane of ``height`` rows followed by ``height / 2`` chroma rows.
    """

    bytes_per_pixel: int
    channels: int
    code: int | None
    even_width: bool = False
    even_height: bool = False
    planar: bool = False


_YUYV = _Layout(2, 2, cv2.COLOR_YUV2RGB_YUYV, even_width=True)
_UYVY = _Layout(2, 2, cv2.COLOR_YUV2RGB_UYVY, even_width=True)

# OpenCV's explicit BayerRGGB-style names match the ROS names (the old BayerBG names are shifted by
# one row: ROS rggb == cv2 BayerBG); tests check this on a mosaic built from a known image.
_LAYOUTS: dict[str, _Layout] = {
    "rgb8": _Layout(3, 3, None),
    "bgr8": _Layout(3, 3, cv2.COLOR_BGR2RGB),
    "rgba8": _Layout(4, 4, cv2.COLOR_RGBA2RGB),
    "bgra8": _Layout(4, 4, cv2.COLOR_BGRA2RGB),
    "mono8": _Layout(1, 1, cv2.COLOR_GRAY2RGB),
    "mono16": _Layout(2, 2, cv2.COLOR_GRAY2RGB),
    "yuyv": _YUYV,
    "yuv422_yuy2": _YUYV,
    "uyvy": _UYVY,
    "yuv422": _UYVY,
    "nv12": _Layout(1, 1, cv2.COLOR_YUV2RGB_NV12, True, True, True),
    "nv21": _Layout(1, 1, cv2.COLOR_YUV2RGB_NV21, True, True, True),
    "bayer_rggb8": _Layout(1, 1, cv2.COLOR_BayerRGGB2RGB),
    "bayer_bggr8": _Layout(1, 1, cv2.COLOR_BayerBGGR2RGB),
    "bayer_gbrg8": _Layout(1, 1, cv2.COLOR_BayerGBRG2RGB),
    "bayer_grbg8": _Layout(1, 1, cv2.COLOR_BayerGRBG2RGB),
}

SUPPORTED_ENCODINGS: frozenset[str] = frozenset(_LAYOUTS)

_COMPRESSED_KINDS = ("jpeg", "jpg", "png", "tiff", "tif")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _as_uint8(data: Any, what: str) -> np.ndarray:
    """Any message byte container (bytes, bytearray, memoryview, array.array, list, ndarray) -> (N,) uint8."""
    try:
        if isinstance(data, np.ndarray):
            if data.dtype not in (np.uint8, np.int8):
                raise ImageDecodeError(f"{what}: data must hold bytes, got a {data.dtype} array")
            return data.reshape(-1).view(np.uint8)
        if isinstance(data, array.array) and data.typecode not in ("B", "b"):
            raise ImageDecodeError(f"{what}: data must hold bytes, got array.array('{data.typecode}')")
        if isinstance(data, (bytes, bytearray, memoryview, array.array)):
            return np.frombuffer(data, dtype=np.uint8)
        if isinstance(data, (list, tuple)):
            return np.asarray(data, dtype=np.uint8).reshape(-1)
    except (TypeError, ValueError, OverflowError, BufferError) as exc:
        raise ImageDecodeError(f"{what}: data is not a sequence of bytes 0..255 ({exc})") from exc
    raise ImageDecodeError(
        f"{what}: data must be bytes-like, a list or a uint8 array, got {type(data).__name__}"
    )


def _short(value: Any) -> str:
    """repr() of a message field, cut short so that garbage input cannot flood an error message."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _as_int(value: Any, name: str, what: str) -> int:
    """A message integer field (int, numpy integer) -> int."""
    try:
        return operator.index(value)
    except TypeError as exc:
        raise ImageDecodeError(f"{what}: {name} must be an integer, got {_short(value)}") from exc


def _check_sizes(what: str, layout: _Layout, height: int, width: int, step: int) -> int:
    """Validate the geometry of one image; returns the number of byte rows (height, or 1.5x for NV12/21)."""
    if height <= 0 or width <= 0:
        raise ImageDecodeError(f"{what}: height and width must be positive")
    row_bytes = width * layout.bytes_per_pixel
    if step < row_bytes:
        raise ImageDecodeError(
            f"{what}: step {step} is smaller than width * bytes_per_pixel = {width} * "
            f"{layout.bytes_per_pixel} = {row_bytes}"
        )
    if layout.even_width and width % 2:
        raise ImageDecodeError(f"{what}: this encoding needs an even width")
    if layout.even_height and height % 2:
        raise ImageDecodeError(f"{what}: this encoding needs an even height")
    return height * 3 // 2 if layout.planar else height


def _pixels(buf: np.ndarray, layout: _Layout, rows: int, width: int, step: int) -> np.ndarray:
    """(N,) bytes -> strided view (rows, width[, channels]) without the row padding."""
    image = buf[: rows * step].reshape(rows, step)[:, : width * layout.bytes_per_pixel]
    if layout.channels > 1:
        image = image.reshape(rows, width, layout.channels)
    return image


def decode_image(
    height: int, width: int, encoding: str, step: int, data: Any, is_bigendian: int = 0
) -> np.ndarray:
    """sensor_msgs/Image fields -> (height, width, 3) uint8 RGB, C-contiguous.

    ``step`` is the row stride in bytes and may exceed ``width * bytes_per_pixel`` (padded rows);
    mono16 (read according to ``is_bigendian``) is scaled to 8 bits as cv_bridge does it:
    round(value * 255 / 65535).
    """
    what = f"image {_short(encoding)} {_short(height)}x{_short(width)} (height x width), step {_short(step)}"
    if not isinstance(encoding, str) or encoding not in _LAYOUTS:
        raise ImageDecodeError(f"{what}: unsupported encoding, expected one of {sorted(_LAYOUTS)}")
    layout = _LAYOUTS[encoding]
    height, width = _as_int(height, "height", what), _as_int(width, "width", what)
    step, big_endian = _as_int(step, "step", what), _as_int(is_bigendian, "is_bigendian", what)
    rows = _check_sizes(what, layout, height, width, step)
    buf = _as_uint8(data, what)
    if buf.size == 0:
        raise ImageDecodeError(f"{what}: data is empty")
    if buf.size < rows * step:
        raise ImageDecodeError(
            f"{what}: data has {buf.size} bytes, needs step * rows = {step} * {rows} = {rows * step}"
        )
    image = _pixels(buf, layout, rows, width, step)
    if encoding == "mono16":
        image = _mono16_to_8(image, big_endian)
    if layout.code is None:
        return np.array(image, dtype=np.uint8, order="C", copy=True)
    return _convert(what, image, layout.code)


def _mono16_to_8(pairs: np.ndarray, big_endian: int) -> np.ndarray:
    """(H, W, 2) byte pairs -> (H, W) uint8 = round(value * 255 / 65535), the full 16-bit range onto 8 bits as
    cv_bridge's imgmsg_to_cv2(msg, "rgb8") maps it (OpenCV convertTo with scale 255/65535)."""
    values = np.ascontiguousarray(pairs).view(">u2" if big_endian else "<u2")[..., 0]
    return np.rint(values * (255.0 / 65535.0)).astype(np.uint8)


def _convert(what: str, image: np.ndarray, code: int) -> np.ndarray:
    """cv2.cvtColor to RGB, with OpenCV failures reported as ImageDecodeError."""
    try:
        rgb = cv2.cvtColor(image, code)
    except cv2.error as exc:
        raise ImageDecodeError(f"{what}: OpenCV could not convert the pixels ({exc})") from exc
    return np.ascontiguousarray(rgb)


def _check_format(fmt: Any) -> None:
    """Reject CompressedImage formats that are not a plain jpeg/png camera image."""
    if not isinstance(fmt, str):
        raise ImageDecodeError(f"compressed image: format must be a string, got {type(fmt).__name__}")
    lowered = fmt.lower()
    if "compresseddepth" in lowered:
        raise ImageDecodeError(f"compressed image, format {_short(fmt)}: depth images are not camera images")
    if lowered.strip() and not any(kind in lowered for kind in _COMPRESSED_KINDS):
        raise ImageDecodeError(f"compressed image, format {_short(fmt)}: unsupported, expected jpeg, png or tiff")


def _payload_is_rgb(fmt: str) -> bool:
    """True when the format names the compressed payload's channel order as RGB ('rgb8; png compressed rgb8').

    image_transport writes 'ORIGINAL; KIND compressed PAYLOAD'; the payload is bgr8 unless it says rgb8/rgba8.
    """
    lowered = fmt.lower()
    return "compressed" in lowered and lowered.rsplit("compressed", 1)[1].strip() in ("rgb8", "rgba8")


def _check_png_chunks(buf: np.ndarray, what: str) -> None:
    """Reject a PNG whose chunk lengths run past the data, before OpenCV sees it.

    OpenCV allocates whatever a chunk header claims (up to 2 GiB, taking seconds) before noticing the data
    is short, so one corrupt message could stall the camera pipeline. Non-PNG data passes untouched.
    """
    raw = buf.data
    if raw.nbytes < len(_PNG_SIGNATURE) or raw[: len(_PNG_SIGNATURE)] != _PNG_SIGNATURE:
        return
    pos = len(_PNG_SIGNATURE)
    while pos + 8 <= raw.nbytes:
        length = int.from_bytes(raw[pos : pos + 4], "big")
        if pos + 12 + length > raw.nbytes:
            raise ImageDecodeError(
                f"{what}: corrupt or truncated png, a chunk at byte {pos} claims {length} bytes "
                f"but only {raw.nbytes - pos - 12} remain"
            )
        if raw[pos + 4 : pos + 8] == b"IEND":
            return
        pos += 12 + length


def decode_compressed(fmt: str, data: Any) -> np.ndarray:
    """sensor_msgs/CompressedImage format + data -> (H, W, 3) uint8 RGB, C-contiguous.

    ``fmt`` is e.g. 'jpeg', 'png', 'tiff' or 'rgb8; jpeg compressed bgr8' (an empty format is sniffed from the
    bytes); a payload declared rgb8 ('... compressed rgb8') holds its channels in RGB order.
    """
    _check_format(fmt)
    what = f"compressed image, format {_short(fmt)}"
    buf = _as_uint8(data, what)
    if buf.size == 0:
        raise ImageDecodeError(f"{what}: data is empty")
    _check_png_chunks(buf, what)
    _check_declared_size(buf, what)
    try:
        bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    except cv2.error as exc:
        raise ImageDecodeError(f"{what}: OpenCV failed on {buf.size} bytes ({exc})") from exc
    if bgr is None or bgr.ndim != 3 or bgr.shape[2] != 3 or bgr.dtype != np.uint8:
        raise ImageDecodeError(f"{what}: {buf.size} bytes are not a decodable jpeg/png/tiff image")
    if _payload_is_rgb(fmt):
        return np.ascontiguousarray(bgr)
    return _convert(f"{what}, {bgr.shape[0]}x{bgr.shape[1]}", bgr, cv2.COLOR_BGR2RGB)


MAX_COMPRESSED_PIXELS = 100_000_000


def _check_declared_size(buf: np.ndarray, what: str) -> None:
    """Refuse a jpeg/png whose header claims more than MAX_COMPRESSED_PIXELS (a decompression bomb),
    read from the header alone before OpenCV reserves memory for it."""
    try:
        with Image.open(io.BytesIO(buf.tobytes())) as header:
            width, height = header.size
    except Image.DecompressionBombError as error:
        raise ImageDecodeError(f"{what}: refused as a decompression bomb ({error})") from error
    except (OSError, ValueError):
        return  # not readable by PIL either: OpenCV's own checks decide
    if width * height > MAX_COMPRESSED_PIXELS:
        raise ImageDecodeError(f"{what}: header claims {width}x{height} pixels, more than "
                               f"{MAX_COMPRESSED_PIXELS:,} (decompression bomb?)")


def decode_message(msg: Any) -> np.ndarray:
    """An Image-like (has .encoding) or CompressedImage-like (has .format) message -> (H, W, 3) uint8 RGB.

    Works on rosbags message dataclasses and rclpy messages alike (duck-typed).
    """
    try:
        if hasattr(msg, "encoding"):
            return decode_image(
                msg.height, msg.width, msg.encoding, msg.step, msg.data, getattr(msg, "is_bigendian", 0)
            )
        if hasattr(msg, "format"):
            return decode_compressed(msg.format, msg.data)
    except AttributeError as exc:
        raise ImageDecodeError(f"{type(msg).__name__} message is missing a field: {exc}") from exc
    raise ImageDecodeError(
        f"{type(msg).__name__} is neither an Image (no .encoding) nor a CompressedImage (no .format)"
    )
