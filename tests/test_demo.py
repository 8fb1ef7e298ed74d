"""The offline demo at a small size: LoRA on the vision encoder lifts a shifted domain; cache; last line."""

from __future__ import annotations

import contextlib
import io
import re
import time
from dataclasses import replace

import pytest

from blip_lora_training.demo import DemoResult, DemoSettings, base_metrics, is_cached, main, pretrain_base

LAST_LINE = re.compile(r"exact match: before (\d\.\d\d) -> after (\d\.\d\d)")


@pytest.fixture(scope="session")
def demo_output(tmp_path_factory):
    """One run of `python -m blip_lora_training.demo --fast` (about 40 s): its folder and stdout lines."""
    out = tmp_path_factory.mktemp("demo_out")
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["--out", str(out), "--fast", "--no-progress"])
    assert code == 0
    return out, stdout.getvalue().splitlines()


@pytest.mark.slow
@pytest.mark.xdist_group("demo")
def test_lora_lifts_the_shifted_domain(demo_output):
    out, lines = demo_output
    found = LAST_LINE.fullmatch(lines[-1])
    assert found, f"last line {lines[-1]!r}"
    before, after = float(found[1]), float(found[2])
    assert after - before >= 0.5, lines[-1]
    assert base_metrics(out)["exact_match"] >= 0.9
    page = (out / "gallery.html").read_text(encoding="utf-8")
    assert page.count("<img") == DemoSettings.fast().shift_test and "before" in page and "after" in page


@pytest.mark.slow
@pytest.mark.xdist_group("demo")
def test_the_pretrained_base_is_reused_only_with_the_same_settings(demo_output):
    out, _ = demo_output
    began = time.perf_counter()
    assert pretrain_base(out, DemoSettings.fast()) == out / "base" / "model"
    assert time.perf_counter() - began < 5
    assert is_cached(out, DemoSettings.fast())
    assert not is_cached(out, replace(DemoSettings.fast(), base_lr=1e-3))
    assert not is_cached(out / "elsewhere", DemoSettings.fast())


def test_summary_line_has_two_decimals():
    assert DemoResult(before=0.031, after=0.957, base_exact=1.0).summary == "exact match: before 0.03 -> after 0.96"
