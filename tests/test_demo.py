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


@pytest.mark.slow
def test_lora_lifts_the_shifted_domain_and_the_base_is_cached(tmp_path):
    """One run of `python -m blip_lora_training.demo --fast` (about 45 s on two cores).

    A single test on purpose: under pytest-xdist the two halves would each pretrain the base.
    """
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert main(["--out", str(tmp_path), "--fast", "--no-progress"]) == 0
    last = stdout.getvalue().splitlines()[-1]
    found = LAST_LINE.fullmatch(last)
    assert found, f"last line {last!r}"
    before, after = float(found[1]), float(found[2])
    assert after - before >= 0.5, last
    assert base_metrics(tmp_path)["exact_match"] >= 0.9
    page = (tmp_path / "gallery.html").read_text(encoding="utf-8")
    assert page.count("<img") == DemoSettings.fast().shift_test and "before" in page and "after" in page

    began = time.perf_counter()
    assert pretrain_base(tmp_path, DemoSettings.fast()) == tmp_path / "base" / "model"
    assert time.perf_counter() - began < 5
    assert not is_cached(tmp_path, replace(DemoSettings.fast(), base_lr=1e-3))
    assert not is_cached(tmp_path / "elsewhere", DemoSettings.fast())


def test_summary_line_has_two_decimals():
    assert DemoResult(before=0.031, after=0.957, base_exact=1.0).summary == "exact match: before 0.03 -> after 0.96"


def test_importing_the_demo_changes_no_environment_variable():
    import os
    import subprocess
    import sys

    code = ("import os; before = dict(os.environ); import blip_lora_training.demo; "
            "print(sorted(set(os.environ.items()) ^ set(before.items())))")
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_NO_ADVISORY_WARNINGS")}
    changed = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert changed.stdout.strip() == "[]"
