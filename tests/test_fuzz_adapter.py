"""Fuzz adapter loading and image-file decoding: any input loads or raises a BlipLoraError, nothing else.

read_adapter and load_adapter (into the tiny model) get random byte mutations of a valid adapter,
random edits of its safetensors header and random metadata values; a failed load must leave the model as
it was. Each test checks that every outcome (read and load, success and error) occurred, so the asserts
of every branch ran.
load_image gets random bytes behind real image signatures (the JSONL reader and the camera-message
decoder have their own fuzz tests: test_data_fuzz.py, test_image_msgs_fuzz.py).
"""

from __future__ import annotations

import json
import random
from collections import Counter
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


def _check(model, path: Path, data: bytes) -> tuple[str, str]:
    """read_adapter and load_adapter: success, or AdapterError with the model untouched.
    Returns what each did: ("read ok" or "read error", "load ok" or "load error")."""
    path.write_bytes(data)
    try:
        read_adapter(path)
    except AdapterError as error:
        assert str(path) in str(error)
        read = "read error"
    else:
        read = "read ok"
    event(read)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        load_adapter(model, path)
    except AdapterError as error:
        assert str(path) in str(error)
        after = model.state_dict()
        assert not lora_layers(model), "a failed load left LoRA layers behind"
        assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
        return read, "load error"
    assert read == "read ok", "load_adapter accepted a file read_adapter refuses"
    assert lora_layers(model)
    remove_lora(model)
    return read, "load ok"


def _fuzz(strategy, check) -> Counter:
    """Run check on FUZZ examples of strategy; returns how often each outcome occurred."""
    outcomes = Counter()

    @FUZZ
    @given(strategy)
    def fuzz(value):
        outcomes.update(check(value))

    fuzz()
    return outcomes


def _both_branches(outcomes: Counter) -> None:
    """Every branch of _check ran at least once, so none of its asserts is dead."""
    assert all(outcomes[name] for name in ("read ok", "read error", "load ok", "load error")), outcomes


@st.composite
def mutations(draw: st.DrawFn, data: bytes) -> bytes:
    """0 to 4 random edits: flip bits, overwrite, insert, delete, truncate; half of them inside the header."""
    out = bytearray(data)
    header_end = 8 + int.from_bytes(data[:8], "little")
    for _ in range(draw(st.integers(0, 4))):
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


def test_random_byte_mutations_of_a_valid_adapter(model, valid, fuzz_dir):
    _both_branches(_fuzz(mutations(valid), lambda data: _check(model, fuzz_dir / "mutated.safetensors", data)))


def _entry(draw: st.DrawFn, body: bytes) -> dict:
    start = draw(st.integers(0, len(body)))
    return {"dtype": draw(st.sampled_from(DTYPES)), "shape": draw(st.lists(st.integers(-1, 70), max_size=3)),
            "data_offsets": [start, draw(st.integers(start, len(body) + 4))]}


@st.composite
def headers(draw: st.DrawFn, valid: bytes) -> bytes:
    """The valid file's header with 0 to 4 random edits (a tensor's dtype, shape or offsets, a tensor dropped or
    a random one added, metadata values or all metadata dropped), over its own body or random bytes."""
    real_header, real_body = split_safetensors(valid)
    header = json.loads(json.dumps(real_header))
    body = real_body if draw(st.booleans()) else draw(st.binary(max_size=256))
    for _ in range(draw(st.integers(0, 4))):
        names = [k for k in header if k != "__metadata__"]
        edit = draw(st.sampled_from(["dtype", "shape", "offsets", "drop", "add", "metadata"]))
        if edit == "add" or not names:
            header[draw(st.sampled_from(names or ["x"]) | st.text(max_size=12))] = _entry(draw, body)
        elif edit == "drop":
            del header[draw(st.sampled_from(names))]
        elif edit == "metadata":
            metadata = header.setdefault("__metadata__", {})
            for key in draw(st.lists(st.sampled_from(sorted(real_header["__metadata__"])), max_size=3)):
                metadata[key] = draw(ODD_TEXT | st.text(max_size=20))
            if draw(st.booleans()):
                del header["__metadata__"]
        else:
            field = {"dtype": "dtype", "shape": "shape", "offsets": "data_offsets"}[edit]
            header[draw(st.sampled_from(names))][field] = _entry(draw, body)[field]
    return join_safetensors(header, body)


def test_random_headers(model, valid, fuzz_dir):
    _both_branches(_fuzz(headers(valid), lambda data: _check(model, fuzz_dir / "header.safetensors", data)))


@st.composite
def metadata_values(draw: st.DrawFn, valid: bytes) -> bytes:
    """The valid file with 0 to 4 metadata values (or an unknown key) set to odd text."""
    header, body = split_safetensors(valid)
    metadata = header["__metadata__"]
    for key in draw(st.lists(st.sampled_from(sorted(metadata) + ["unknown"]), max_size=4)):
        metadata[key] = draw(ODD_TEXT | st.text(max_size=30) | st.lists(st.text(max_size=40), max_size=3).map(
            json.dumps))
    return join_safetensors(header, body)


def test_random_metadata_values(model, valid, fuzz_dir):
    _both_branches(_fuzz(metadata_values(valid),
                         lambda data: _check(model, fuzz_dir / "metadata.safetensors", data)))


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


@st.composite
def image_bytes(draw: st.DrawFn, real_images: list[bytes]) -> bytes:
    """Random bytes behind a real signature, or a real image with a few random bytes and maybe truncated."""
    if draw(st.booleans()):
        return draw(st.sampled_from(SIGNATURES)) + draw(st.binary(max_size=300))
    raw = bytearray(draw(st.sampled_from(real_images)))
    rng = random.Random(draw(st.integers(0, 2 ** 32 - 1)))
    for _ in range(draw(st.integers(0, 6))):
        raw[rng.randrange(len(raw))] = rng.randrange(256)
    return bytes(raw[:draw(st.integers(0, len(raw)))]) if draw(st.booleans()) else bytes(raw)


def test_image_files_decode_or_raise_data_error(real_images, fuzz_dir):
    path = fuzz_dir / "fuzzed.img"

    def check(raw: bytes) -> list[str]:
        path.write_bytes(raw)
        try:
            image = load_image(path, max_pixels=4_000_000)
        except DataError as error:
            assert str(path) in str(error)
            event("DataError")
            return ["DataError"]
        event("decoded")
        assert image.mode == "RGB" and image.width * image.height <= 4_000_000
        return ["decoded"]

    outcomes = _fuzz(image_bytes(real_images), check)
    assert outcomes["decoded"] and outcomes["DataError"], outcomes
