"""Fuzz adapter loading and image-file decoding: any input loads or raises a BlipLoraError, nothing else.

read_adapter and load_adapter (into the tiny model) get random byte mutations of a valid adapter,
random safetensors headers and random metadata values; a failed load must leave the model as it was.
load_image gets random bytes behind real image signatures (the JSONL reader and the camera-message
decoder have their own fuzz tests: test_data_fuzz.py, test_image_msgs_fuzz.py).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from faults import join_safetensors, split_safetensors
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from blip_lora_core import AdapterError, LoraConfig, inject_lora, load_adapter, read_adapter, save_adapter
from blip_lora_core.errors import DataError
from blip_lora_core.lora.hooks import lora_layers, remove_lora
from blip_lora_core.models.images import load_image
from blip_lora_core.models.loading import load_blip

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DTYPES = ["F32", "F16", "BF16", "F64", "I64", "I32", "U8", "BOOL", "F8_E4M3", "XYZ", ""]
ODD_TEXT = st.sampled_from(["", "0", "-1", "4", "1e309", "nan", "inf", "-inf", "[]", "{}", "null", "[1]", '"x"',
                            "alpha/r", "alpha/sqrt(r)", "blip-lora-adapter", "[" * 2000, "\x00", "é" * 50])


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz_adapter")


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    """One tiny model for every example; each example leaves it without LoRA layers."""
    return load_blip(str(tiny_model_dir), device="cpu").model


@pytest.fixture(scope="module")
def valid(model, fuzz_dir) -> bytes:
    config = LoraConfig(r=2, alpha=4, targets=(r"vision_model\.encoder\.layers\.0\..*",))
    inject_lora(model, config)
    with torch.no_grad():
        for module in lora_layers(model).values():
            module.lora_B.normal_(generator=torch.Generator().manual_seed(0))
    data = save_adapter(model, fuzz_dir / "valid.safetensors", config=config).read_bytes()
    remove_lora(model)
    return data


def _check(model, path: Path, data: bytes) -> None:
    """read_adapter and load_adapter: success, or AdapterError with the model untouched."""
    path.write_bytes(data)
    try:
        read_adapter(path)
    except AdapterError as error:
        assert str(path) in str(error)
        event("read: AdapterError")
    else:
        event("read: ok")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        load_adapter(model, path)
    except AdapterError:
        after = model.state_dict()
        assert not lora_layers(model), "a failed load left LoRA layers behind"
        assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
        return
    assert lora_layers(model)
    remove_lora(model)


@st.composite
def mutations(draw: st.DrawFn, data: bytes) -> bytes:
    """A few random edits: flip bits, overwrite, insert, delete, truncate; half of them inside the header."""
    out = bytearray(data)
    header_end = 8 + int.from_bytes(data[:8], "little")
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        limit = header_end if draw(st.booleans()) else len(out)
        at = draw(st.integers(0, max(min(limit, len(out)) - 1, 0)))
        if kind == "flip" and out:
            out[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and out:
            out[at] = draw(st.integers(0, 255))
        elif kind == "insert":
            out[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del out[at:at + draw(st.integers(1, 8))]
        else:
            del out[at:]
    return bytes(out)


@FUZZ
@given(st.data())
def test_random_byte_mutations_of_a_valid_adapter(model, valid, fuzz_dir, data):
    _check(model, fuzz_dir / "mutated.safetensors", data.draw(mutations(valid)))


@st.composite
def headers(draw: st.DrawFn, valid: bytes) -> bytes:
    """A random safetensors header (names, dtypes, shapes, offsets, metadata) over a random body."""
    real_header, _ = split_safetensors(valid)
    names = [k for k in real_header if k != "__metadata__"]
    body = draw(st.binary(max_size=256))
    header: dict = {}
    for _ in range(draw(st.integers(0, 4))):
        name = draw(st.sampled_from(names) | st.text(max_size=12))
        start = draw(st.integers(0, len(body)))
        header[name] = {"dtype": draw(st.sampled_from(DTYPES)),
                        "shape": draw(st.lists(st.integers(-1, 70), max_size=3)),
                        "data_offsets": [start, draw(st.integers(start, len(body) + 4))]}
    if draw(st.booleans()):
        metadata = dict(real_header["__metadata__"])
        for key in draw(st.lists(st.sampled_from(sorted(metadata)), max_size=3)):
            metadata[key] = draw(ODD_TEXT | st.text(max_size=20))
        header["__metadata__"] = metadata
    return join_safetensors(header, body)


@FUZZ
@given(st.data())
def test_random_headers(model, valid, fuzz_dir, data):
    _check(model, fuzz_dir / "header.safetensors", data.draw(headers(valid)))


@FUZZ
@given(st.data())
def test_random_metadata_values(model, valid, fuzz_dir, data):
    header, body = split_safetensors(valid)
    metadata = header["__metadata__"]
    keys = data.draw(st.lists(st.sampled_from(sorted(metadata) + ["unknown"]), min_size=1, max_size=4))
    for key in keys:
        metadata[key] = data.draw(ODD_TEXT | st.text(max_size=30) | st.just(json.dumps(
            data.draw(st.lists(st.text(max_size=40), max_size=3)))))
    _check(model, fuzz_dir / "metadata.safetensors", join_safetensors(header, body))


# -- image files -----------------------------------------------------------------------------------

SIGNATURES = [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*", b"RIFF", b"P6\n",
              b"\x00\x00\x01\x00", b""]


@pytest.fixture(scope="module")
def real_images(fuzz_dir) -> list[bytes]:
    from PIL import Image

    image = Image.effect_mandelbrot((24, 16), (-2, -1, 1, 1), 20).convert("RGB")
    out = []
    for fmt in ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "PPM"):
        path = fuzz_dir / f"real.{fmt.lower()}"
        image.save(path, fmt)
        out.append(path.read_bytes())
    return out


@FUZZ
@given(st.data())
def test_image_files_decode_or_raise_data_error(real_images, fuzz_dir, data):
    if data.draw(st.booleans()):
        raw = data.draw(st.sampled_from(SIGNATURES)) + data.draw(st.binary(max_size=300))
    else:
        raw = bytearray(data.draw(st.sampled_from(real_images)))
        rng = random.Random(data.draw(st.integers(0, 2 ** 32 - 1)))
        for _ in range(data.draw(st.integers(1, 6))):
            raw[rng.randrange(len(raw))] = rng.randrange(256)
        raw = bytes(raw[:data.draw(st.integers(0, len(raw)))]) if data.draw(st.booleans()) else bytes(raw)
    path = fuzz_dir / "fuzzed.img"
    path.write_bytes(raw)
    try:
        image = load_image(path, max_pixels=4_000_000)
    except DataError as error:
        assert str(path) in str(error)
        event("DataError")
        return
    event("decoded")
    assert image.mode == "RGB" and image.width * image.height <= 4_000_000
