"""The suite relies on `xdist_group`: the ROS tier shares one launch per module on one worker. Some pytest /
pytest-xdist pairs silently ignore the mark (pytest 9.2 with pytest-xdist 3.8, pytest-xdist #1386); then
these two tests land on different workers and the second fails."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.xdist_group("xdist_group_check")


def _marker(tmp_path_factory) -> Path:
    """A file shared by this run's workers (each worker's base temp folder lies in the run's)."""
    base = tmp_path_factory.getbasetemp()
    return (base.parent if "PYTEST_XDIST_WORKER" in os.environ else base) / "xdist_group_check"


def test_first_of_a_group_notes_its_worker(tmp_path_factory):
    _marker(tmp_path_factory).write_text(os.environ.get("PYTEST_XDIST_WORKER", "main"))


def test_second_of_the_group_runs_on_the_same_worker(tmp_path_factory):
    marker = _marker(tmp_path_factory)
    deadline = time.monotonic() + 120
    while not marker.exists():  # only when the group was split: the first test runs elsewhere, maybe later
        assert time.monotonic() < deadline, "the first test of the group never ran"
        time.sleep(0.1)
    assert marker.read_text() == os.environ.get("PYTEST_XDIST_WORKER", "main"), "xdist_group was ignored"
