"""No hidden skips: every skip is listed at the end of a run, and in CI one whose reason is not on the
reviewed list below fails the run.

CI is on when the environment has CI=true (.ci/run sets it). Nested pytest runs (tests/test_compat.py runs
tests under each supported transformers line) write their skips to the file BLIP_LORA_SKIP_LOG names, each
test id tagged with BLIP_LORA_SKIP_SCOPE ("transformers 4.57.6"); the outer test hands them to this plugin
with ``record_nested_skips``, so they are listed and checked like the outer run's own.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class AllowedSkip:
    reason: str  # a regular expression searched in the skip's reason
    why: str  # why skipping there is right (reviewed)
    where: str = ""  # a regular expression the (tagged) test id must match; "" for any test


# Keep this list short: each entry is a reviewed decision that a test may not run in CI.
ALLOWED_SKIPS = (
    AllowedSkip(r"^needs a CUDA device", "checks of CUDA-only code (CUDA graphs); CI runs on a CPU machine"),
    AllowedSkip(r"^the static decoder serves transformers 5 only",
                "on transformers 4.x the Captioner uses generate(): test_compat checks that choice on that line",
                where=r"\[transformers 4\.[\d.]+\]$"),
)
NESTED = "nested_skips"


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def allowed(test_id: str, reason: str) -> AllowedSkip | None:
    """The reviewed entry that allows this skip, or None."""
    return next((entry for entry in ALLOWED_SKIPS
                 if re.search(entry.reason, reason) and re.search(entry.where, test_id)), None)


def record_nested_skips(record_property, log: Path) -> list[tuple[str, str]]:
    """Read the skips a nested run wrote to log and record them on the calling test (the outer run lists
    and checks them); returns them as (tagged test id, reason)."""
    skips = [tuple(s) for s in json.loads(log.read_text())] if log.is_file() else []
    record_property(NESTED, skips)
    return skips


def _reason(report) -> str:
    if getattr(report, "wasxfail", None) is not None:
        return f"xfail: {report.wasxfail}"
    longrepr = report.longrepr
    text = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return text.removeprefix("Skipped: ")


class SkipPolicy:
    """Collects every skip (and xfail) of the session; lists them; fails a CI run on an unreviewed one."""

    def __init__(self) -> None:
        self.scope = os.environ.get("BLIP_LORA_SKIP_SCOPE", "")
        self.skips: list[tuple[str, str]] = []

    def _add(self, test_id: str, reason: str) -> None:
        self.skips.append((f"{test_id} [{self.scope}]" if self.scope else test_id, reason))

    def pytest_runtest_logreport(self, report) -> None:
        if report.skipped:
            self._add(report.nodeid, _reason(report))
        if report.when == "call":
            for name, value in report.user_properties:
                if name == NESTED:
                    self.skips.extend(tuple(skip) for skip in value)

    def pytest_collectreport(self, report) -> None:
        if report.skipped:
            self._add(report.nodeid or "(collection)", _reason(report))

    def unexpected(self) -> list[tuple[str, str]]:
        return [(test, reason) for test, reason in self.skips if allowed(test, reason) is None]

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session) -> None:
        log = os.environ.get("BLIP_LORA_SKIP_LOG")
        if log:
            Path(log).write_text(json.dumps(self.skips))
        if in_ci() and self.unexpected() and session.exitstatus in (pytest.ExitCode.OK,
                                                                     pytest.ExitCode.NO_TESTS_COLLECTED):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if not self.skips:
            return
        unexpected = self.unexpected()
        terminalreporter.section("skips")
        for test, reason in self.skips:
            mark = "  " if (test, reason) not in unexpected else "! "
            terminalreporter.line(f"{mark}{test}: {reason}")
        if unexpected:
            consequence = "this CI run fails" if in_ci() else "a CI run (CI=true) would fail"
            terminalreporter.line(f"{len(unexpected)} skip(s) marked ! are not on the reviewed list "
                                  f"(ALLOWED_SKIPS in tests/skip_policy.py): {consequence}", red=True, bold=True)


def pytest_configure(config) -> None:
    if not hasattr(config, "workerinput"):  # xdist workers report to the controller, which decides
        config.pluginmanager.register(SkipPolicy(), "blip_lora_skip_policy")
