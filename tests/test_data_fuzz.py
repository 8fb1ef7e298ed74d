"""Fuzz read_jsonl: on any file content it returns samples or raises DataError, nothing else; each test
checks that both outcomes occurred, so the checks of each branch ran."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from blip_lora_core.errors import DataError
from blip_lora_core.train.data import read_jsonl

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
image_names = (st.sampled_from(["ok_0001.png", "empty_0001.png", "junk_0001.png", "missing.png", "", ".", "/"])
               | st.text(max_size=12))
rows = st.fixed_dictionaries(
    {},
    optional={
        "image": image_names | json_values,
        "text": st.text(max_size=20) | json_values,
        "prompt": st.none() | st.text(max_size=10) | json_values,
        "extra": json_values,
    },
)
GOOD_LINE = b'{"image": "ok_0001.png", "text": "One blue cube", "prompt": "a picture of"}'
lines = st.one_of(
    st.just(GOOD_LINE),
    rows.map(lambda r: json.dumps(r).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=40),
    st.text(max_size=40).map(lambda t: t.encode("utf-8", "surrogatepass")),
)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """A folder with one good, one empty and one corrupt image beside the fuzzed JSONL file."""
    folder = tmp_path_factory.mktemp("fuzz")
    Image.new("RGB", (8, 8), (1, 2, 3)).save(folder / "ok_0001.png")
    (folder / "empty_0001.png").write_bytes(b"")
    (folder / "junk_0001.png").write_bytes(b"\x89PNG\r\n\x1a\n junk")
    return folder


def _check(folder: Path, data: bytes, skip_bad: bool) -> str:
    """read_jsonl returns samples (all valid) or raises DataError; returns which of the two happened."""
    path = folder / "fuzz.jsonl"
    path.write_bytes(data)
    try:
        samples, bad = read_jsonl(path, skip_bad=skip_bad)
    except DataError:
        event("DataError")
        return "DataError"
    event("samples" + (" and bad lines" if bad else ""))
    assert samples, "an empty dataset must raise"
    assert all(s.text.strip() and s.image.is_file() for s in samples)
    assert skip_bad or not bad
    return "samples"


def test_random_lines_return_or_raise_data_error(folder):
    outcomes = Counter()

    @FUZZ
    @given(st.lists(lines, max_size=6), st.booleans())
    def fuzz(chunks, skip_bad):
        outcomes[_check(folder, b"\n".join(chunks), skip_bad)] += 1

    fuzz()
    assert outcomes["samples"] and outcomes["DataError"], outcomes  # both branches' checks ran


def test_random_bytes_return_or_raise_data_error(folder):
    """Random bytes, alone or as lines around a good line (which --skip-bad keeps when the rest is bad)."""
    outcomes = Counter()

    @FUZZ
    @given(st.binary(max_size=200), st.binary(max_size=100), st.booleans(), st.booleans())
    def fuzz(before, after, with_good_line, skip_bad):
        data = b"\n".join([before, GOOD_LINE, after]) if with_good_line else before + after
        outcomes[_check(folder, data, skip_bad)] += 1

    fuzz()
    assert outcomes["samples"] and outcomes["DataError"], outcomes
