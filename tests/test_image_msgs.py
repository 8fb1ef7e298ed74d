"""Tests for blip_lora_core.runtime.image_msgs: every encoding against known pixels, through real CDR messages."""

from __future__ import annotations

import array
import re
import time
from collections.abc import Callable
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from rosbags.typesys import Stores, get_typestore

from blip_lora_core.errors import ImageDecodeError
from blip_lora_core.runtime.image_msgs import SUPPORTED_ENCODINGS, decode_compressed, decode_image, decode_message

TYPESTORE = get_typestore(Stores.ROS2_HUMBLE)
IMAGE = "sensor_msgs/msg/Image"
COMPRESSED = "sensor_msgs/msg/CompressedImage"
FLAT = (200, 100, 30)  # the flat test colour, RGB

# ---------------------------------------------------------------------------------------------------------
# Building raw bytes from a known RGB image. Each encoder returns (rows, expected): rows is the unpadded
# (byte_rows, width * bytes_per_pixel) uint8 array, expected the (H, W, 3) RGB the decoder must return,
# computed independently of the module (numpy, or cv2 with codes chosen here).
# ---------------------------------------------------------------------------------------------------------

Encoder = Callable[[np.random.Generator, np.ndarray], tuple[np.ndarray, np.ndarray]]


def _flat_rows(image: np.ndarray) -> np.ndarray:
    """(H, W, C) -> (H, W * C)."""
    return np.ascontiguousarray(image).reshape(image.shape[0], -1)


def _gray3(gray: np.ndarray) -> np.ndarray:
    """(H, W) -> (H, W, 3) with the value repeated."""
    return np.repeat(gray[:, :, None], 3, axis=2)


def _enc_rgba(rng: np.random.Generator, rgb: np.ndarray, bgr: bool) -> tuple[np.ndarray, np.ndarray]:
    alpha = rng.integers(0, 256, rgb.shape[:2], dtype=np.uint8)[:, :, None]
    colour = rgb[:, :, ::-1] if bgr else rgb
    return _flat_rows(np.concatenate([colour, alpha], axis=2)), rgb


def _enc_mono16(rng: np.random.Generator, rgb: np.ndarray, big: bool) -> tuple[np.ndarray, np.ndarray]:
    values = rng.integers(0, 65536, rgb.shape[:2], dtype=np.uint16)
    raw = values.astype(">u2" if big else "<u2").view(np.uint8).reshape(values.shape[0], -1)
    return raw, _gray3(np.rint(values * 255.0 / 65535.0).astype(np.uint8))  # cv_bridge's scaling


def _enc_yuv422(code: int) -> Encoder:
    """Random packed 4:2:2 bytes; the reference is OpenCV's own conversion of the same bytes."""

    def encode(rng: np.random.Generator, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h, w, _ = rgb.shape
        raw = rng.integers(0, 256, (h, w * 2), dtype=np.uint8)
        return raw, cv2.cvtColor(raw.reshape(h, w, 2), code)

    return encode


def _enc_nv(code: int) -> Encoder:
    """Random NV12/NV21 planes (H luma rows + H/2 chroma rows); the reference is OpenCV on the same bytes."""

    def encode(rng: np.random.Generator, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h, w, _ = rgb.shape
        raw = rng.integers(0, 256, (h * 3 // 2, w), dtype=np.uint8)
        return raw, cv2.cvtColor(raw, code)

    return encode


def _mosaic(rgb: np.ndarray, pattern: str) -> np.ndarray:
    """(H, W, 3) RGB -> (H, W) Bayer mosaic; pattern names the 2x2 tile row by row, e.g. 'rggb'."""
    mosaic = np.empty(rgb.shape[:2], np.uint8)
    for dy in range(2):
        for dx in range(2):
            channel = "rgb".index(pattern[dy * 2 + dx])
            mosaic[dy::2, dx::2] = rgb[dy::2, dx::2, channel]
    return mosaic


# OpenCV's legacy Bayer names read the tile from the second row: ROS rggb == cv2 BayerBG, and so on.
_LEGACY_BAYER = {"rggb": "BG", "bggr": "RG", "gbrg": "GR", "grbg": "GB"}


def _enc_bayer(pattern: str) -> Encoder:
    def encode(rng: np.random.Generator, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mosaic = _mosaic(rgb, pattern)
        code = getattr(cv2, f"COLOR_Bayer{_LEGACY_BAYER[pattern]}2RGB")
        return mosaic, cv2.cvtColor(mosaic, code)

    return encode


ENCODERS: dict[str, Encoder] = {
    "rgb8": lambda rng, rgb: (_flat_rows(rgb), rgb),
    "bgr8": lambda rng, rgb: (_flat_rows(rgb[:, :, ::-1]), rgb),
    "rgba8": lambda rng, rgb: _enc_rgba(rng, rgb, bgr=False),
    "bgra8": lambda rng, rgb: _enc_rgba(rng, rgb, bgr=True),
    "mono8": lambda rng, rgb: (rgb[:, :, 1].copy(), _gray3(rgb[:, :, 1])),
    "mono16": lambda rng, rgb: _enc_mono16(rng, rgb, big=False),
    "yuyv": _enc_yuv422(cv2.COLOR_YUV2RGB_YUYV),
    "yuv422_yuy2": _enc_yuv422(cv2.COLOR_YUV2RGB_YUYV),
    "uyvy": _enc_yuv422(cv2.COLOR_YUV2RGB_UYVY),
    "yuv422": _enc_yuv422(cv2.COLOR_YUV2RGB_UYVY),
    "nv12": _enc_nv(cv2.COLOR_YUV2RGB_NV12),
    "nv21": _enc_nv(cv2.COLOR_YUV2RGB_NV21),
    **{f"bayer_{p}8": _enc_bayer(p) for p in _LEGACY_BAYER},
}
EVEN_ONLY = {"yuyv", "yuv422_yuy2", "uyvy", "yuv422", "nv12", "nv21"}


def _pad(rows: np.ndarray, pad: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """Append `pad` garbage bytes to every row -> (flat data, step)."""
    garbage = rng.integers(0, 256, (rows.shape[0], pad), dtype=np.uint8)
    padded = np.concatenate([rows, garbage], axis=1)
    return padded.reshape(-1), padded.shape[1]


def _roundtrip(msg: object, msgtype: str) -> object:
    """Serialise a rosbags message to CDR and back, as a bag reader would hand it over."""
    return TYPESTORE.deserialize_cdr(TYPESTORE.serialize_cdr(msg, msgtype), msgtype)


def _header() -> object:
    time_t = TYPESTORE.types["builtin_interfaces/msg/Time"]
    return TYPESTORE.types["std_msgs/msg/Header"](stamp=time_t(sec=1, nanosec=2), frame_id="camera")


def image_msg(height: int, width: int, encoding: str, step: int, data: np.ndarray, big: int = 0) -> object:
    """A real sensor_msgs/Image after a CDR round trip."""
    msg = TYPESTORE.types[IMAGE](
        header=_header(), height=height, width=width, encoding=encoding,
        is_bigendian=big, step=step, data=np.asarray(data, np.uint8),
    )
    return _roundtrip(msg, IMAGE)


def compressed_msg(fmt: str, data: np.ndarray) -> object:
    """A real sensor_msgs/CompressedImage after a CDR round trip."""
    msg = TYPESTORE.types[COMPRESSED](header=_header(), format=fmt, data=np.asarray(data, np.uint8).reshape(-1))
    return _roundtrip(msg, COMPRESSED)


def _check_output(out: np.ndarray, height: int, width: int) -> None:
    assert out.shape == (height, width, 3)
    assert out.dtype == np.uint8
    assert out.flags.c_contiguous and out.flags.writeable


# ---------------------------------------------------------------------------------------------------------
# Raw encodings
# ---------------------------------------------------------------------------------------------------------


def test_every_supported_encoding_is_tested() -> None:
    assert SUPPORTED_ENCODINGS == frozenset(ENCODERS)


REFERENCE_CASES = [
    (encoding, height, width, pad)
    for encoding in sorted(ENCODERS)
    for height, width in ([(6, 8), (2, 2)] if encoding in EVEN_ONLY else [(6, 8), (5, 7), (1, 1)])
    for pad in (0, 5)
]


@pytest.mark.parametrize("encoding,height,width,pad", REFERENCE_CASES)
def test_decode_matches_reference(encoding: str, height: int, width: int, pad: int) -> None:
    rng = np.random.default_rng([height, width, pad, *encoding.encode()])
    rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    rows, expected = ENCODERS[encoding](rng, rgb)
    data, step = _pad(rows, pad, rng)
    out = decode_message(image_msg(height, width, encoding, step, data))
    _check_output(out, height, width)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(decode_image(height, width, encoding, step, data), expected)


@pytest.mark.parametrize("pad", [0, 3])
def test_mono16_big_endian_is_read_big_endian(pad: int) -> None:
    rng = np.random.default_rng(7)
    rows, expected = _enc_mono16(rng, np.zeros((4, 6, 3), np.uint8), big=True)
    data, step = _pad(rows, pad, rng)
    out = decode_message(image_msg(4, 6, "mono16", step, data, big=1))
    np.testing.assert_array_equal(out, expected)


def test_mono16_known_values() -> None:
    values = np.array([[0x0000, 0x00FF, 0x0100, 0xAB12, 0xFFFF]], dtype=np.uint16)
    little = decode_image(1, 5, "mono16", 10, values.astype("<u2").tobytes(), is_bigendian=0)
    big = decode_image(1, 5, "mono16", 10, values.astype(">u2").tobytes(), is_bigendian=1)
    # round(v * 255 / 65535): 255 -> 0.99 -> 1, 256 -> 1, 43794 -> 170.4 -> 170, 65535 -> 255
    np.testing.assert_array_equal(little[0, :, 0], [0, 1, 1, 170, 255])
    np.testing.assert_array_equal(big, little)


def test_mono16_maps_every_value_as_opencv_convert_scale_does() -> None:
    """All 65536 values against OpenCV's own scaling by 255/65535 (what cv_bridge does)."""
    values = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    expected = _gray3(cv2.convertScaleAbs(values, alpha=255 / 65535))
    for order, big in (("<u2", 0), (">u2", 1)):
        np.testing.assert_array_equal(decode_image(256, 256, "mono16", 512, values.astype(order).tobytes(), big),
                                      expected)


def _yuv601(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """RGB -> limited-range BT.601 (Y, U, V), the convention of OpenCV's YUV 4:2:x decoders."""
    r, g, b = rgb
    y = 16 + 0.2568 * r + 0.5041 * g + 0.0979 * b
    u = 128 - 0.1482 * r - 0.2910 * g + 0.4392 * b
    v = 128 + 0.4392 * r - 0.3678 * g - 0.0714 * b
    return round(y), round(u), round(v)


def _flat_raw(encoding: str, height: int, width: int) -> np.ndarray:
    """A flat FLAT-coloured image in `encoding`, as (byte_rows, row_bytes), built by hand."""
    y, u, v = _yuv601(FLAT)
    tiles = {"yuyv": [y, u, y, v], "uyvy": [u, y, v, y]}
    tiles |= {"yuv422_yuy2": tiles["yuyv"], "yuv422": tiles["uyvy"]}
    if encoding in tiles:
        return np.tile(np.array(tiles[encoding], np.uint8), (height, width // 2))
    if encoding in ("nv12", "nv21"):
        chroma = [u, v] if encoding == "nv12" else [v, u]
        luma = np.full((height, width), y, np.uint8)
        return np.concatenate([luma, np.tile(np.array(chroma, np.uint8), (height // 2, width // 2))])
    rgb = np.broadcast_to(np.array(FLAT, np.uint8), (height, width, 3))
    return _mosaic(rgb, encoding[len("bayer_"):-1])


@pytest.mark.parametrize("encoding", sorted(e for e in ENCODERS if e in EVEN_ONLY or e.startswith("bayer")))
def test_flat_colour_decodes_to_that_colour(encoding: str) -> None:
    raw = _flat_raw(encoding, 6, 8)
    data, step = _pad(raw, 4, np.random.default_rng(0))
    out = decode_message(image_msg(6, 8, encoding, step, data)).astype(int)
    tolerance = 0 if encoding.startswith("bayer") else 3
    assert np.abs(out - np.array(FLAT)).max() <= tolerance, (encoding, out[0, 0])


@pytest.mark.parametrize("pattern", sorted(_LEGACY_BAYER))
def test_bayer_keeps_sampled_channel(pattern: str) -> None:
    """Demosaicing keeps, away from the border, the one channel each photosite measured."""
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
    out = decode_image(10, 12, f"bayer_{pattern}8", 12, _mosaic(rgb, pattern).reshape(-1))
    for dy in range(2):
        for dx in range(2):
            channel = "rgb".index(pattern[dy * 2 + dx])
            got, want = out[dy::2, dx::2, channel], rgb[dy::2, dx::2, channel]
            np.testing.assert_array_equal(got[1:-1, 1:-1], want[1:-1, 1:-1])


@pytest.mark.parametrize("pattern", sorted(_LEGACY_BAYER))
def test_bayer_smooth_image_round_trips(pattern: str) -> None:
    """A smooth gradient survives mosaic + demosaic almost unchanged (wrong pattern would swap channels)."""
    yy, xx = np.mgrid[0:32, 0:32]
    rgb = np.stack([40 + 4 * xx, 60 + 3 * yy, 200 - 2 * xx - 2 * yy], axis=2).astype(np.uint8)
    out = decode_image(32, 32, f"bayer_{pattern}8", 32, _mosaic(rgb, pattern).reshape(-1))
    assert np.abs(out.astype(int) - rgb)[2:-2, 2:-2].max() <= 2


# ---------------------------------------------------------------------------------------------------------
# Data containers, output ownership, speed
# ---------------------------------------------------------------------------------------------------------

CONTAINERS: dict[str, Callable[[bytes], object]] = {
    "bytes": bytes,
    "bytearray": bytearray,
    "memoryview": memoryview,
    "array.array": lambda b: array.array("B", b),
    "list": list,
    "numpy": lambda b: np.frombuffer(b, np.uint8),
    "numpy-int8": lambda b: np.frombuffer(b, np.int8),
}


@pytest.mark.parametrize("container", sorted(CONTAINERS))
def test_data_containers_agree(container: str) -> None:
    rng = np.random.default_rng(11)
    rgb = rng.integers(0, 256, (3, 4, 3), dtype=np.uint8)
    data, step = _pad(_flat_rows(rgb[:, :, ::-1]), 2, rng)
    out = decode_image(3, 4, "bgr8", step, CONTAINERS[container](data.tobytes()))
    np.testing.assert_array_equal(out, rgb)
    png = cv2.imencode(".png", rgb[:, :, ::-1])[1].tobytes()
    np.testing.assert_array_equal(decode_compressed("png", CONTAINERS[container](png)), rgb)


def test_rclpy_like_messages() -> None:
    """rclpy hands uint8[] fields over as array.array('B'); numpy integer fields from rosbags work too."""
    rgb = np.random.default_rng(5).integers(0, 256, (2, 3, 3), dtype=np.uint8)
    msg = SimpleNamespace(height=np.uint32(2), width=2 + 1, encoding="rgb8", is_bigendian=0, step=9,
                          data=array.array("B", rgb.tobytes()))
    np.testing.assert_array_equal(decode_message(msg), rgb)
    jpeg_msg = SimpleNamespace(format="jpeg", data=array.array("B", cv2.imencode(".jpg", rgb)[1].tobytes()))
    assert decode_message(jpeg_msg).shape == (2, 3, 3)


@pytest.mark.parametrize("encoding", ["rgb8", "mono16"])
def test_output_owns_its_memory(encoding: str) -> None:
    data = np.arange(24, dtype=np.uint8)
    out = decode_image(2, 4 if encoding == "rgb8" else 6, encoding, 12, data)
    assert not np.shares_memory(out, data)
    out[:] = 0
    np.testing.assert_array_equal(data, np.arange(24))


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8"])
def test_vga_decodes_fast(encoding: str) -> None:
    """640x480 in well under a few milliseconds (a generous bound that still rules out Python pixel loops)."""
    data = np.random.default_rng(0).integers(0, 256, 480 * 640 * 3, dtype=np.uint8)
    times = []
    for _ in range(21):
        start = time.perf_counter()
        decode_image(480, 640, encoding, 640 * 3, data)
        times.append(time.perf_counter() - start)
    assert sorted(times)[10] < 0.010


# ---------------------------------------------------------------------------------------------------------
# Compressed images
# ---------------------------------------------------------------------------------------------------------


def _smooth_rgb(height: int = 48, width: int = 64) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    return np.stack([2 * xx + 40, 3 * yy + 30, 180 - xx - yy], axis=2).astype(np.uint8)


@pytest.mark.parametrize("fmt", ["png", "PNG", "bgr8; png compressed bgr8", "rgb8; png compressed bgr8", ""])
def test_png_is_exact(fmt: str) -> None:
    rgb = np.random.default_rng(2).integers(0, 256, (9, 13, 3), dtype=np.uint8)
    png = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]))[1]
    out = decode_message(compressed_msg(fmt, png))
    _check_output(out, 9, 13)
    np.testing.assert_array_equal(out, rgb)


@pytest.mark.parametrize("fmt", ["tiff", "TIFF", "tif", "rgb8; tiff compressed bgr8"])
def test_tiff_is_exact(fmt: str) -> None:
    rgb = np.random.default_rng(3).integers(0, 256, (7, 11, 3), dtype=np.uint8)
    tiff = cv2.imencode(".tiff", np.ascontiguousarray(rgb[:, :, ::-1]))[1]
    out = decode_message(compressed_msg(fmt, tiff))
    _check_output(out, 7, 11)
    np.testing.assert_array_equal(out, rgb)


@pytest.mark.parametrize("fmt, kind", [("rgb8; png compressed rgb8", ".png"), ("png compressed rgb8", ".png"),
                                       ("rgba8; png compressed rgba8", ".png"),
                                       ("rgb8; tiff compressed rgb8", ".tiff"),
                                       ("rgb8; jpeg compressed rgb8 ", ".jpg")])
def test_a_payload_declared_rgb8_keeps_its_channel_order(fmt: str, kind: str) -> None:
    """'... compressed rgb8': the compressed bytes hold R, G, B in that order (no BGR swap)."""
    rgb = _smooth_rgb(16, 24) if kind == ".jpg" else np.random.default_rng(5).integers(0, 256, (6, 8, 3), np.uint8)
    payload = cv2.imencode(kind, rgb)[1]  # written as is: cv2 takes the channels for B, G, R
    out = decode_message(compressed_msg(fmt, payload))
    if kind == ".jpg":
        assert np.abs(out.astype(int) - rgb).mean() < 2.0
        swapped = decode_message(compressed_msg("rgb8; jpeg compressed bgr8", payload))
        assert np.abs(swapped.astype(int) - rgb).mean() > 20.0  # the bgr8 reading would swap R and B
    else:
        np.testing.assert_array_equal(out, rgb)
        np.testing.assert_array_equal(decode_message(compressed_msg("png", payload)), rgb[:, :, ::-1])


def test_png_gray_rgba_and_16bit() -> None:
    gray = np.random.default_rng(4).integers(0, 256, (5, 6), dtype=np.uint8)
    np.testing.assert_array_equal(decode_compressed("png", cv2.imencode(".png", gray)[1]), _gray3(gray))
    rgba = np.random.default_rng(4).integers(0, 256, (5, 6, 4), dtype=np.uint8)
    out = decode_compressed("png", cv2.imencode(".png", rgba)[1])  # cv2 writes BGRA
    np.testing.assert_array_equal(out, rgba[:, :, 2::-1])
    wide = np.random.default_rng(4).integers(0, 65536, (5, 6), dtype=np.uint16)
    np.testing.assert_array_equal(decode_compressed("png", cv2.imencode(".png", wide)[1]),
                                  _gray3((wide >> 8).astype(np.uint8)))


@pytest.mark.parametrize("fmt", ["jpeg", "jpg", "rgb8; jpeg compressed bgr8", "mono8; jpeg compressed mono8"])
def test_jpeg_close_to_source(fmt: str) -> None:
    rgb = _smooth_rgb()
    jpeg = cv2.imencode(".jpg", np.ascontiguousarray(rgb[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 95])[1]
    out = decode_message(compressed_msg(fmt, jpeg))
    _check_output(out, 48, 64)
    assert np.abs(out.astype(int) - rgb).mean() < 2.0
    assert np.abs(out.astype(int) - rgb).max() < 16
    np.testing.assert_array_equal(out, cv2.imdecode(jpeg, cv2.IMREAD_COLOR)[:, :, ::-1])


def test_jpeg_channel_order() -> None:
    """A pure red JPEG decodes red, not blue."""
    red = np.zeros((16, 16, 3), np.uint8)
    red[:, :, 0] = 255
    out = decode_compressed("jpeg", cv2.imencode(".jpg", red[:, :, ::-1])[1])
    assert out[..., 0].min() > 240 and out[..., 2].max() < 15


# ---------------------------------------------------------------------------------------------------------
# Bad input: always ImageDecodeError, naming the encoding and sizes
# ---------------------------------------------------------------------------------------------------------

BAD_IMAGES = [
    # (height, width, encoding, step, data, words the message must contain)
    (2, 2, "rgb9", 6, bytes(12), ["unsupported encoding", "2x2"]),
    (2, 2, "", 6, bytes(12), ["unsupported encoding"]),
    (2, 2, "RGB8", 6, bytes(12), ["unsupported encoding"]),
    (2, 2, "rgb8", 6, b"", ["data is empty", "2x2", "step 6"]),
    (2, 2, "rgb8", 6, bytes(11), ["11 bytes", "6 * 2 = 12"]),
    (2, 2, "nv12", 2, bytes(5), ["5 bytes", "2 * 3 = 6"]),
    (2, 2, "rgb8", 5, bytes(12), ["step 5", "2 * 3 = 6"]),
    (2, 3, "mono16", 5, bytes(12), ["step 5", "3 * 2 = 6"]),
    (2, 3, "yuyv", 6, bytes(12), ["even width", "2x3"]),
    (2, 3, "yuv422_yuy2", 6, bytes(12), ["even width"]),
    (2, 3, "uyvy", 6, bytes(12), ["even width"]),
    (2, 3, "yuv422", 6, bytes(12), ["even width"]),
    (3, 2, "nv12", 2, bytes(12), ["even height", "3x2"]),
    (2, 3, "nv12", 3, bytes(12), ["even width", "2x3"]),
    (2, 3, "nv21", 3, bytes(12), ["even width", "2x3"]),
    (3, 2, "nv21", 2, bytes(12), ["even height", "3x2"]),
    (0, 2, "rgb8", 6, bytes(12), ["must be positive", "0x2"]),
    (2, 0, "rgb8", 6, bytes(12), ["must be positive", "2x0"]),
    (-1, 2, "rgb8", 6, bytes(12), ["must be positive"]),
    (2.5, 2, "rgb8", 6, bytes(12), ["height must be an integer"]),
    (2, "2", "rgb8", 6, bytes(12), ["width must be an integer"]),
    (2, 2, "rgb8", None, bytes(12), ["step must be an integer"]),
    (2, 2, ["rgb8"], 6, bytes(12), ["unsupported encoding"]),
    (2, 2, "rgb8", 6, np.zeros(12, np.float32), ["float32"]),
    (2, 2, "rgb8", 6, [0] * 11 + [256], ["bytes 0..255"]),
    (2, 2, "rgb8", 6, array.array("H", [0] * 12), ["array.array('H')"]),
    (2, 2, "rgb8", 6, "not bytes", ["str"]),
]


@pytest.mark.parametrize("height,width,encoding,step,data,words", BAD_IMAGES)
def test_bad_images_raise(height, width, encoding, step, data, words) -> None:
    with pytest.raises(ImageDecodeError) as info:
        decode_image(height, width, encoding, step, data)
    message = str(info.value)
    assert repr(encoding) in message
    for word in words:
        assert word in message, message


def test_is_bigendian_must_be_an_integer_and_defaults_to_little_endian() -> None:
    with pytest.raises(ImageDecodeError, match="is_bigendian must be an integer, got 'no'"):
        decode_image(1, 1, "mono16", 2, bytes([1, 2]), "no")
    # a message without is_bigendian (some drivers' duck-typed messages): little-endian, high byte second
    msg = SimpleNamespace(height=1, width=2, encoding="mono16", step=4, data=bytes([1, 2, 3, 4]))
    np.testing.assert_array_equal(decode_message(msg), _gray3(np.array([[2, 4]], np.uint8)))


def test_signed_byte_arrays_are_bytes_too() -> None:
    data = array.array("b", [-56, 100, 30] * 4)  # -56 is the byte 200
    np.testing.assert_array_equal(decode_image(2, 2, "rgb8", 6, data), np.full((2, 2, 3), FLAT, np.uint8))


def test_long_field_values_are_cut_short_in_messages() -> None:
    """repr() of a field is quoted whole up to 60 characters, else its first 57 and '...'."""
    fits, long = "e" * 58, "e" * 59  # reprs of 60 and 61 characters
    with pytest.raises(ImageDecodeError) as info:
        decode_image(2, 2, fits, 6, bytes(12))
    assert f"image {fits!r} 2x2" in str(info.value)
    with pytest.raises(ImageDecodeError) as info:
        decode_image(2, 2, long, 6, bytes(12))
    assert f"image {repr(long)[:57]}... 2x2" in str(info.value)


def test_bad_image_message_through_rosbags() -> None:
    with pytest.raises(ImageDecodeError, match=re.escape("'bgr8' 4x4")):
        decode_message(image_msg(4, 4, "bgr8", 12, np.zeros(47, np.uint8)))


BAD_COMPRESSED = [
    ("jpeg", b"", ["data is empty"]),
    ("jpeg", b"\xff\xd8\xff\xe0 definitely not a jpeg", ["not a decodable", "26 bytes"]),
    ("png", bytes(range(256)), ["not a decodable", "256 bytes"]),
    ("tiff", b"II*\x00", ["not a decodable", "4 bytes"]),
    ("bmp", b"BM\x00\x00", ["unsupported", "jpeg, png or tiff"]),
    ("16UC1; compressedDepth png", b"\x89PNG", ["depth"]),
    (None, b"\x89PNG", ["format must be a string"]),
]


@pytest.mark.parametrize("fmt,data,words", BAD_COMPRESSED)
def test_bad_compressed_raise(fmt, data, words) -> None:
    with pytest.raises(ImageDecodeError) as info:
        decode_compressed(fmt, data)
    message = str(info.value)
    if fmt is not None:
        assert repr(fmt) in message
    for word in words:
        assert word in message, message


def test_truncated_png_raises() -> None:
    png = cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes()
    with pytest.raises(ImageDecodeError, match="'png'"):
        decode_message(compressed_msg("png", np.frombuffer(png[:30], np.uint8)))


def _png(rgb: np.ndarray) -> bytes:
    return cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]))[1].tobytes()


@pytest.mark.parametrize("overrun", [2_147_483_647 - 21, 1])
def test_png_with_a_chunk_longer_than_the_data_is_refused_before_opencv(overrun: int, monkeypatch) -> None:
    """OpenCV would allocate whatever a corrupt chunk header claims (2 GiB: seconds); the decoder refuses the
    file before OpenCV sees it, however much (here 1 byte) the chunk overruns the data."""
    import blip_lora_core.runtime.image_msgs as image_msgs

    png = bytearray(_png(np.zeros((8, 8, 3), np.uint8)))
    length = int.from_bytes(png[33:37], "big")  # the IDAT chunk's length field
    claimed = len(png) - 33 - 12 + overrun  # its data would end `overrun` bytes past the file's end
    png[33:37] = claimed.to_bytes(4, "big")
    monkeypatch.setattr(image_msgs.cv2, "imdecode", lambda *a: pytest.fail("OpenCV saw the corrupt PNG"))
    with pytest.raises(ImageDecodeError, match=f"a chunk at byte 33 claims {claimed} bytes but only "
                                               f"{claimed - overrun} remain"):
        decode_compressed("png", bytes(png))
    assert length < claimed


def test_png_chunk_walk_stops_at_iend_and_at_the_end_of_the_data() -> None:
    """Bytes after IEND (some encoders append data) are not chunks; a file cut right after a chunk's length
    and type (8 bytes, no data or CRC left) is refused as truncated."""
    rgb = np.random.default_rng(6).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    png = _png(rgb)
    np.testing.assert_array_equal(decode_compressed("png", png + b"\xff\xff\xff\xff trailing bytes"), rgb)
    iend = png.rindex(b"IEND") - 4
    cut = png[:iend] + (100).to_bytes(4, "big") + b"tEXt"
    with pytest.raises(ImageDecodeError, match=f"corrupt or truncated png, a chunk at byte {iend} claims 100"):
        decode_compressed("png", cut)


def test_compressed_size_limit_is_100_million_pixels_and_inclusive(monkeypatch) -> None:
    import struct
    import zlib

    import blip_lora_core.runtime.image_msgs as image_msgs

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", 100_000_001, 1, 8, 2, 0, 0, 0))
    png = b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(b"\0" * 10)) + chunk(b"IEND", b"")
    with pytest.raises(ImageDecodeError, match="header claims 100000001x1 pixels, more than 100,000,000"):
        decode_compressed("png", png)
    monkeypatch.setattr(image_msgs, "MAX_COMPRESSED_PIXELS", 64)
    rgb = np.random.default_rng(7).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    np.testing.assert_array_equal(decode_compressed("png", _png(rgb)), rgb)  # exactly the limit
    with pytest.raises(ImageDecodeError, match="header claims 13x5 pixels, more than 64"):
        decode_compressed("png", _png(np.zeros((5, 13, 3), np.uint8)))


@pytest.mark.parametrize("msg, words", [
    (object(), "object is neither an Image (no .encoding) nor a CompressedImage (no .format)"),
    (SimpleNamespace(data=b"x"), "SimpleNamespace is neither an Image"),
    (SimpleNamespace(encoding="rgb8"), "SimpleNamespace message is missing a field"),
    (SimpleNamespace(format="png"), "SimpleNamespace message is missing a field"),
])
def test_bad_messages_raise(msg: object, words: str) -> None:
    with pytest.raises(ImageDecodeError, match=re.escape(words)):
        decode_message(msg)


def test_compressed_header_claiming_a_huge_image_is_refused_before_decoding():
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", 50_000, 50_000, 8, 2, 0, 0, 0))
    png = b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(b"\0" * 10)) + chunk(b"IEND", b"")
    with pytest.raises(ImageDecodeError, match="decompression bomb"):
        decode_compressed("png", png)
    medium = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 12_000, 9_000, 8, 2, 0, 0, 0))
    with pytest.raises(ImageDecodeError, match="12000x9000 pixels"):
        decode_compressed("png", medium + png[33:])
