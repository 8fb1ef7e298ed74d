"""The skip policy (tests/skip_policy.py): every skip is listed; in CI an unreviewed one fails the run.

Each case runs a small test file in a fresh pytest with the plugin, as CI runs the suite.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.skip_policy import ALLOWED_SKIPS, allowed

REPO = Path(__file__).resolve().parents[1]
FAILS = "skip(s) marked ! are not on the reviewed list (ALLOWED_SKIPS in tests/skip_policy.py): this CI run fails"


def _pytest(folder: Path, source: str, *, ci: bool, args: tuple[str, ...] = (), **env: str):
    (folder / "test_sample.py").write_text(source)
    environment = {k: v for k, v in os.environ.items() if k not in ("CI", "BLIP_LORA_SKIP_LOG", "BLIP_LORA_SKIP_SCOPE")}
    # only the plugins a case names: faster, and the outcome does not depend on what else is installed
    environment.update(PYTHONPATH=str(REPO), PYTEST_DISABLE_PLUGIN_AUTOLOAD="1", **env)
    if ci:
        environment["CI"] = "true"
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "tests.skip_policy", "-p", "no:cacheprovider",
                           *args, "test_sample.py"], cwd=folder, env=environment, capture_output=True, text=True,
                          timeout=120)


UNEXPECTED = "import pytest\n\ndef test_a():\n    pass\n\ndef test_b():\n    pytest.skip('the database is down')\n"


@pytest.mark.parametrize("args", [(), ("-p", "xdist.plugin", "-n", "2")])
def test_an_unreviewed_skip_fails_a_ci_run_and_is_listed(tmp_path, args):
    """With and without xdist workers (CI runs -n 2): the controller sees every worker's skips."""
    run = _pytest(tmp_path, UNEXPECTED, ci=True, args=args)
    assert run.returncode == 1, run.stdout
    assert "! test_sample.py::test_b: the database is down" in run.stdout and FAILS in run.stdout
    assert "1 passed, 1 skipped" in run.stdout


def test_outside_ci_skips_are_listed_and_do_not_fail(tmp_path):
    run = _pytest(tmp_path, UNEXPECTED, ci=False)
    assert run.returncode == 0, run.stdout
    assert "! test_sample.py::test_b: the database is down" in run.stdout
    assert "a CI run (CI=true) would fail" in run.stdout


def test_a_reviewed_skip_passes_in_ci(tmp_path):
    source = ("import pytest\n\n@pytest.mark.skipif(True, reason='needs a CUDA device (CUDA graphs)')\n"
              "def test_gpu():\n    pass\n\ndef test_cpu():\n    pass\n")
    run = _pytest(tmp_path, source, ci=True)
    assert run.returncode == 0, run.stdout
    assert "  test_sample.py::test_gpu: needs a CUDA device (CUDA graphs)" in run.stdout


@pytest.mark.parametrize("source", [
    "import pytest\n\nnumpy_two = pytest.importorskip('no_such_module_here')\n\ndef test_a():\n    pass\n",
    "import pytest\n\n@pytest.mark.xfail(reason='known bug')\ndef test_a():\n    assert False\n",
])
def test_module_skips_and_xfails_count_too(tmp_path, source):
    run = _pytest(tmp_path, source, ci=True)
    assert run.returncode == 1 and FAILS in run.stdout, run.stdout


def test_nested_runs_write_their_skips_and_the_outer_run_checks_them(tmp_path):
    log = tmp_path / "nested.json"
    nested = _pytest(tmp_path, UNEXPECTED, ci=False, BLIP_LORA_SKIP_LOG=str(log),
                     BLIP_LORA_SKIP_SCOPE="transformers 4.57.6")
    assert nested.returncode == 0
    assert json.loads(log.read_text()) == [["test_sample.py::test_b [transformers 4.57.6]", "the database is down"]]
    outer = ("from pathlib import Path\nfrom tests.skip_policy import record_nested_skips\n\n"
             f"def test_line(record_property):\n    record_nested_skips(record_property, Path({str(log)!r}))\n")
    run = _pytest(tmp_path, outer, ci=True)
    assert run.returncode == 1, run.stdout
    assert "! test_sample.py::test_b [transformers 4.57.6]: the database is down" in run.stdout


def test_the_reviewed_list_stays_short_and_scoped():
    assert len(ALLOWED_SKIPS) <= 5 and all(entry.why for entry in ALLOWED_SKIPS)
    reason = "the static decoder serves transformers 5 only"
    assert allowed("tests/test_static_decoder.py::test_x [transformers 4.57.6]", reason)
    assert not allowed("tests/test_static_decoder.py::test_x [transformers 5.17.0]", reason)
    assert not allowed("tests/test_static_decoder.py::test_x", reason)  # the venv's own line is 5.x
