"""Fuzz blip_lora_core.runtime.image_msgs: any input gives an (H, W, 3) uint8 image or ImageDecodeError, nothing
else."""

from __future__ import annotations

import array
import random
from types import SimpleNamespace

import cv2
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blip_lora_core.errors import ImageDecodeError
from blip_lora_core.runtime.image_msgs import SUPPORTED_ENCODINGS, decode_compressed, decode_image, decode_message

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

BAD_ENCODINGS = ["", "RGB8", "rgb8 ", "16UC1", "32FC1", "bayer_rggb16", "yuv420"]
ENCODINGS = st.integers(1, 10).flatmap(  # mostly real encodings, so the size checks and decoders get hit
    lambda n: st.sampled_from(sorted(SUPPORTED_ENCODINGS)) if n < 8
    else st.sampled_from(BAD_ENCODINGS) if n < 10 else st.text(max_size=12)
)
SIZES = st.integers(1, 10).flatmap(lambda n: st.integers(-2, 0) if n == 10 else st.integers(1, 24))
ODD_FIELDS = st.one_of(st.none(), st.floats(allow_nan=True), st.text(max_size=3), st.booleans())

_SMALL_RGB = np.random.default_rng(0).integers(0, 256, (12, 10, 3), dtype=np.uint8)
VALID_COMPRESSED = [cv2.imencode(ext, _SMALL_RGB)[1].tobytes() for ext in (".png", ".jpg")]


def _containers(raw: bytes) -> st.SearchStrategy:
    """The same bytes in every container a message may hold them in."""
    return st.sampled_from([
        raw, bytearray(raw), memoryview(raw), array.array("B", raw), list(raw), np.frombuffer(raw, np.uint8),
    ])


def _one_in(draw: st.DrawFn, n: int) -> bool:
    """True about once in n draws (hypothesis favours small integers, so test the top value)."""
    return draw(st.integers(1, n)) == n


def _random_bytes(draw: st.DrawFn, length: int) -> bytes:
    """Exactly `length` bytes: drawn by hypothesis when short, from a drawn seed when long (no buffer overrun)."""
    if length <= 64:
        return draw(st.binary(min_size=length, max_size=length))
    return random.Random(draw(st.integers(0, 2**32 - 1))).randbytes(length)


@st.composite
def image_fields(draw: st.DrawFn) -> tuple:
    """(height, width, step, data, encoding): mostly near-valid sizes, so every check and decoder gets hit."""
    height, width, encoding = draw(SIZES), draw(SIZES), draw(ENCODINGS)
    if draw(st.booleans()):  # step around width * bytes_per_pixel, data around step * rows
        step = max(width, 0) * draw(st.sampled_from([1, 2, 3, 4])) + draw(st.integers(-1, 3))
        rows = max(height, 0) * (1.5 if encoding in ("nv12", "nv21") else 1)
        length = max(int(rows * step) + draw(st.integers(-2, 2)), 0)
    else:
        step, length = draw(st.integers(-4, 120)), draw(st.integers(0, 400))
    data = draw(_containers(_random_bytes(draw, length)))
    fields = [height, width, step, data]
    if _one_in(draw, 10):  # now and then a field of the wrong type
        fields[draw(st.integers(0, 3))] = draw(ODD_FIELDS)
    return (*fields, encoding)


def _check(call, *args, shape: tuple[int, int] | None = None) -> None:
    try:
        out = call(*args)
    except ImageDecodeError:
        return
    assert isinstance(out, np.ndarray) and out.dtype == np.uint8
    assert out.ndim == 3 and out.shape[2] == 3 and out.flags.c_contiguous
    if shape is not None:
        assert out.shape[:2] == shape


@FUZZ
@given(image_fields(), st.integers(0, 1))
def test_decode_image_fuzz(fields: tuple, big: int) -> None:
    height, width, step, data, encoding = fields
    shape = (height, width) if isinstance(height, int) and isinstance(width, int) else None
    _check(decode_image, height, width, encoding, step, data, big, shape=shape)


@st.composite
def compressed_fields(draw: st.DrawFn) -> tuple:
    """(format, data): random bytes, or a real png/jpeg, perhaps truncated, with a few bytes overwritten."""
    fmt = draw(st.sampled_from(["jpeg", "png", "", "rgb8; jpeg compressed bgr8", "16UC1; compressedDepth png"])
               if not _one_in(draw, 5) else st.text(max_size=20))
    if draw(st.booleans()):
        raw = bytearray(draw(st.sampled_from(VALID_COMPRESSED)))
        if draw(st.booleans()):
            raw = raw[: draw(st.integers(0, len(raw)))]
        for _ in range(draw(st.integers(0, 4))):
            if raw:
                raw[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
        raw = bytes(raw)
    else:
        raw = draw(st.binary(max_size=200))
    return fmt, draw(_containers(raw))


@FUZZ
@given(compressed_fields())
def test_decode_compressed_fuzz(fields: tuple) -> None:
    _check(decode_compressed, *fields)


@st.composite
def messages(draw: st.DrawFn) -> SimpleNamespace:
    """Message-like objects with a random subset of Image / CompressedImage fields."""
    if draw(st.booleans()):
        height, width, step, data, encoding = draw(image_fields())
        fields = dict(height=height, width=width, step=step, data=data, encoding=encoding,
                      is_bigendian=draw(st.integers(0, 1)))
    else:
        fmt, data = draw(compressed_fields())
        fields = dict(format=fmt, data=data)
    keep = draw(st.lists(st.sampled_from(sorted(fields)), unique=True)) if _one_in(draw, 5) \
        else sorted(fields)
    return SimpleNamespace(**{key: fields[key] for key in keep})


@FUZZ
@given(messages())
def test_decode_message_fuzz(msg: SimpleNamespace) -> None:
    _check(decode_message, msg)
