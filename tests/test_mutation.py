"""The mutation-testing tool (tests/mutation/, run by `make mutation`): its operators, its catalogue of
hand-written bugs and its targets stay in step with the code."""

from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

import pytest

from tests.mutation.bugs import BUGS
from tests.mutation.operators import mutants
from tests.mutation.runner import _MutatedModule
from tests.mutation.targets import TARGETS

REPO = Path(__file__).resolve().parents[1]
SAMPLE = '''"""A docstring."""
import logging

log = logging.getLogger(__name__)
LIMIT = 8


def clamp(x, low=0):
    """Its docstring."""
    if x < low or x is None:
        raise ValueError(f"x {x} < {low}")
    log.warning("clamping %s", x)
    values = [v for v in range(x) if v % 2]
    total = sum(values[1:], start=0)
    return min(x + LIMIT, total)  # pragma: no mutate
'''


def _keys(source: str = SAMPLE) -> set[str]:
    return {m.key for m in mutants(source, "sample.py")}


def test_operators_make_the_expected_mutants_and_leave_the_rest_alone():
    keys = _keys()
    expected = {
        "<module>: number + 1: 8 -> 9",
        "clamp (defaults): number + 1: 0 -> 1",
        "clamp: swap comparison: x < low -> x <= low",
        "clamp: drop operand: x < low or x is None -> x is None",
        "clamp: swap and/or: x < low or x is None -> x < low and x is None",
        "clamp: condition always False: x < low or x is None -> False",
        "clamp: swap operator: v % 2 -> v * 2",
        "clamp: drop filter: v % 2 -> (deleted)",
        "clamp: drop slice lower: 1: -> :",
        "clamp: drop keyword: start=0 -> (deleted)",
    }
    assert expected <= keys, sorted(expected - keys)
    # docstrings, the log call, the raise statement's message: no string is changed, no call deleted
    assert not any("change string" in key or "delete call" in key for key in keys), keys
    assert not any("x + LIMIT" in key or "return None" in key for key in keys)  # the "pragma: no mutate" line


def test_keys_survive_lines_moving_and_mutants_compile_to_other_code():
    moved = SAMPLE.replace("LIMIT = 8\n", "LIMIT = 8\nOTHER = 1\n\n\n")
    assert _keys() <= _keys(moved)
    tree = ast.parse(SAMPLE)
    original = ast.dump(tree)
    for mutant in mutants(SAMPLE, "sample.py"):
        mutated = mutant.tree(tree)
        assert ast.dump(mutated) != original, mutant.key
        compile(mutated, "sample.py", "exec")
    assert ast.dump(tree) == original  # the original tree is never modified


def test_the_mutated_module_is_imported_in_place_of_the_file():
    code = compile("VALUE = 41 + 1\n", "probe.py", "exec")
    finder = _MutatedModule("mutation_probe_module", code, "probe.py")
    sys.meta_path.insert(0, finder)
    try:
        assert importlib.import_module("mutation_probe_module").VALUE == 42
    finally:
        sys.meta_path.remove(finder)
        sys.modules.pop("mutation_probe_module", None)


@pytest.mark.parametrize("bug", BUGS, ids=lambda bug: bug.name)
def test_each_hand_written_bug_still_applies_to_its_module(bug):
    """A refactor that moves a bug's code must move the bug (tests/mutation/bugs.py) with it."""
    source = (REPO / bug.path).read_text(encoding="utf-8")
    changed = bug.apply(source)
    assert changed != source
    compile(changed, bug.path, "exec")
    assert any(target.path == bug.path for target in TARGETS)


def test_every_target_and_its_tests_exist():
    for target in TARGETS:
        assert (REPO / target.path).is_file(), target.path
        assert all((REPO / test).is_file() for test in target.tests), target.tests
        assert mutants((REPO / target.path).read_text(encoding="utf-8"), target.path, target.select), target.path
