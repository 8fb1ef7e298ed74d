"""Run every mutant against the fast unit tests that execute its line, each in a forked process.

The parent imports the heavy libraries once (torch, transformers, ...) but never the core, then forks:
- one child runs all the targets' fast tests under a line tracer: which test runs which line of each
  target module, and how long each test takes (cached in .mutation/coverage.json);
- one child per mutant puts the mutated module in front of the import system, runs the tests that
  execute the mutated line (all of the module's tests for a change that runs at import time), those that
  killed most of the module's mutants so far first, then the fastest, and stops at the first failure
  (killed) or passes them all (survived).
A mutant whose line no fast test executes survives without running ("no test"). Results are cached in
.mutation/cache.json under a hash of the module, the mutant and its tests' files; --fresh ignores it.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.abc
import importlib.util
import json
import os
import re
import shutil
import signal
import sys
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from types import CodeType

import pytest

from .accepted import ACCEPTED
from .bugs import BUGS
from .operators import Mutant, mutants
from .targets import TARGETS, Target

ROOT = Path(__file__).resolve().parents[2]
STATE = ROOT / ".mutation"
GOAL = 0.90
# imported once in the parent, so that forked children start warm (never the core: children import it mutated)
HEAVY = ("torch", "numpy", "cv2", "PIL.Image", "yaml", "tqdm", "safetensors.torch", "transformers",
         "transformers.models.blip.modeling_blip", "transformers.models.bert.tokenization_bert", "hypothesis",
         "pytest", "peft", "matplotlib.pyplot", "pycocoevalcap.bleu.bleu",
         "pycocoevalcap.cider.cider")
# plugins are not auto-loaded (PYTEST_DISABLE_PLUGIN_AUTOLOAD): only hypothesis' is needed; the unraisable- and
# thread-exception plugins would run gc.collect() over torch's heap at every exit (seconds each)
PYTEST_ARGS = ("-q", "-p", "_hypothesis_pytestplugin", "-p", "no:cacheprovider", "-p", "no:unraisableexception",
               "-p", "no:threadexception", "-m", "not slow", "--hypothesis-profile", "mutation", "-W", "ignore")


@dataclass
class Job:
    """One mutated module (a mutant or a hand-written bug) and the tests to run against it."""

    target: Target
    name: str
    code: CodeType
    tests: list[str]
    timeout: float
    cache_key: str
    mutant: Mutant | None = None


@dataclass
class Result:
    status: str  # killed, timeout, survived, no test
    killer: str = ""
    seconds: float = 0.0


@dataclass
class Coverage:
    lines: dict[str, dict[int, set[str]]] = field(default_factory=dict)  # module path -> line -> test ids
    durations: dict[str, float] = field(default_factory=dict)  # test id -> seconds (traced)

    def tests_of(self, target: Target) -> list[str]:
        """Every fast test of the target's test files, fastest first."""
        files = tuple(f"{t}::" for t in target.tests)
        return sorted((t for t in self.durations if t.startswith(files)), key=self.durations.__getitem__)

    def tests_for(self, target: Target, mutant: Mutant) -> list[str]:
        """The target's tests that execute the mutant's lines (all of them for an import-time change)."""
        if mutant.import_time:
            return self.tests_of(target)
        lines = self.lines.get(target.path, {})
        hit = set().union(*(lines.get(n, set()) for n in mutant.lines))
        return [t for t in self.tests_of(target) if t in hit]

    def timeout(self, tests: list[str]) -> float:
        return 30.0 + 3.0 * sum(self.durations[t] for t in tests)


# -- the forked children ---------------------------------------------------------------------------


class _MutatedModule(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports one module from given code instead of its file."""

    def __init__(self, name: str, code: CodeType, filename: str):
        self.name, self.code, self.filename = name, code, filename

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.name:
            return None
        spec = importlib.util.spec_from_loader(fullname, self, origin=self.filename)
        spec.has_location = True
        return spec

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        module.__file__ = self.filename
        exec(self.code, module.__dict__)


class _LineTracer:
    """pytest plugin: which test executes which line of the traced files, and each test's duration."""

    def __init__(self, files: dict[str, str]):
        self.files = files  # absolute file -> module path
        self.current = ""
        self.lines: dict[str, dict[int, set[str]]] = defaultdict(lambda: defaultdict(set))
        self.durations: dict[str, float] = {}

    def _call(self, frame, event, arg):
        return self._line if frame.f_code.co_filename in self.files else None

    def _line(self, frame, event, arg):
        if event == "line":
            self.lines[self.files[frame.f_code.co_filename]][frame.f_lineno].add(self.current)
        return self._line

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(self, item, nextitem):
        self.current = item.nodeid
        began = time.perf_counter()
        sys.settrace(self._call)
        threading.settrace(self._call)
        try:
            yield
        finally:
            sys.settrace(None)
            threading.settrace(None)
            self.durations[item.nodeid] = time.perf_counter() - began


def _child_pytest(args: list[str], log: Path, plugins: list | None = None, then=None) -> None:
    """pytest.main in this (forked) process with its output in log, then then(); exits with pytest's code."""
    os.setpgid(0, 0)
    handle = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(handle, 1)
    os.dup2(handle, 2)
    code = 3
    try:
        code = int(pytest.main(args, plugins=plugins or []))
        if then:
            then()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _fork(run) -> int:
    pid = os.fork()
    if pid == 0:
        try:
            run()
        finally:
            os._exit(3)
    try:
        os.setpgid(pid, pid)
    except OSError:  # the child already did it, or has already exited
        pass
    return pid


# -- the parent ------------------------------------------------------------------------------------


def _digest(*parts: bytes | str) -> str:
    hasher = hashlib.sha256()
    for part in parts:
        hasher.update(part.encode() if isinstance(part, str) else part)
        hasher.update(b"\0")
    return hasher.hexdigest()[:24]


def _test_files(target: Target) -> list[Path]:
    """The target's test files, the test modules they import and the suite's helper modules."""
    folder = ROOT / "tests"
    files = {ROOT / t for t in target.tests} | {p for p in folder.glob("*.py") if not p.name.startswith("test_")}
    for test in target.tests:
        for name in re.findall(r"^from (?:tests\.)?(\w+) import", (ROOT / test).read_text(), re.M):
            if (folder / f"{name}.py").is_file():
                files.add(folder / f"{name}.py")
    return sorted(files)


def _tests_digest(target: Target) -> str:
    return _digest(*(p.read_bytes() for p in _test_files(target)))


def _coverage(targets: list[Target], fresh: bool) -> Coverage:
    """The line -> tests map of every target (run once, then cached until the code or tests change)."""
    core = sorted((ROOT / "blip_lora_core").rglob("*.py"))
    tests = sorted({p for t in targets for p in _test_files(t)})
    key = _digest(*(str(p) for p in core + tests), *(p.read_bytes() for p in core + tests),
                  Path(__file__).read_bytes())
    cached = STATE / "coverage.json"
    if not fresh and cached.is_file():
        data = json.loads(cached.read_text())
        if data.get("key") == key and {t.path for t in targets} <= set(data["lines"]):
            return _coverage_from(data)
    files = sorted({f for t in targets for f in t.tests})
    print(f"mapping which fast test runs which line ({len(files)} test files, a few minutes) ...", flush=True)
    out, log = STATE / "coverage.tmp.json", STATE / "coverage.log"
    tracer = _LineTracer({str(ROOT / t.path): t.path for t in targets})

    def save():
        lines = {path: {str(n): sorted(ids) for n, ids in found.items()} for path, found in tracer.lines.items()}
        out.write_text(json.dumps({"key": key, "lines": lines, "durations": tracer.durations}))

    args = [*files, *PYTEST_ARGS, "--basetemp", str(STATE / "tmp" / "coverage")]
    pid = _fork(lambda: _child_pytest(args, log, [tracer], save))
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"the unmutated tests fail (pytest exit code {code}); see {log}")
    data = json.loads(out.read_text())
    for target in targets:
        data["lines"].setdefault(target.path, {})
    cached.write_text(json.dumps(data))
    out.unlink()
    return _coverage_from(data)


def _coverage_from(data: dict) -> Coverage:
    lines = {path: {int(n): set(ids) for n, ids in found.items()} for path, found in data["lines"].items()}
    return Coverage(lines, data["durations"])


def _jobs(targets: list[Target], coverage: Coverage, only_bugs: bool) -> tuple[list[Job], list[Job], list[Job]]:
    """(mutant jobs, hand-written bug jobs, mutants no fast test executes)."""
    runs, bugs, uncovered = [], [], []
    for target in targets:
        source = (ROOT / target.path).read_text()
        digest = _tests_digest(target)
        filename = str(ROOT / target.path)
        for bug in BUGS:
            if bug.path == target.path:
                code = compile(bug.apply(source), filename, "exec")
                tests = coverage.tests_of(target)
                bugs.append(Job(target, bug.name, code, tests, coverage.timeout(tests),
                                _digest("bug", bug.apply(source), digest, *tests)))
        if only_bugs:
            continue
        tree = ast.parse(source)
        for mutant in mutants(source, target.path, target.select):
            tests = coverage.tests_for(target, mutant)
            code = compile(mutant.tree(tree), filename, "exec")
            job = Job(target, mutant.key, code, tests, coverage.timeout(tests),
                      _digest(source, mutant.key, digest, *tests), mutant)
            (runs if tests else uncovered).append(job)
    return runs, bugs, uncovered


def _run_jobs(jobs: list[Job], parallel: int, cache: dict, fresh: bool) -> dict[str, Result]:
    """Each job's result (from the cache, or run in forked children, `parallel` at a time)."""
    results: dict[str, Result] = {}
    todo = []
    for job in jobs:
        if not fresh and job.cache_key in cache:
            results[job.cache_key] = Result(**cache[job.cache_key])
        else:
            todo.append(job)
    logs = STATE / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    running: dict[int, tuple[Job, float, Path]] = {}
    killers: dict[str, Counter] = defaultdict(Counter)
    for job in jobs:
        result = results.get(job.cache_key)
        if result and result.status == "killed":
            killers[job.target.path][result.killer] += 1
    done, total, began = 0, len(todo), time.monotonic()
    try:
        while todo or running:
            while todo and len(running) < parallel:
                job = todo.pop(0)
                log = logs / f"{job.cache_key}.log"
                temp = STATE / "tmp" / job.cache_key
                # the tests that killed most mutants of this module so far first (then the fastest first)
                tests = sorted(job.tests, key=lambda t, counts=killers[job.target.path]: -counts[t])
                args = [*tests, *PYTEST_ARGS, "-x", "--basetemp", str(temp)]
                finder = _MutatedModule(job.target.module, job.code, str(ROOT / job.target.path))

                def run(args=args, log=log, finder=finder):
                    sys.meta_path.insert(0, finder)
                    _child_pytest(args, log)

                running[_fork(run)] = (job, time.monotonic(), log)
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                now = time.monotonic()
                for child, (job, started, _log) in list(running.items()):
                    if now - started > job.timeout:
                        _kill(child)
                        os.waitpid(child, 0)
                        del running[child]
                        result = Result("timeout", "", round(now - started, 1))
                        results[job.cache_key] = result
                        cache[job.cache_key] = vars(result)
                        done += 1
                        _progress(done, total, began, job, result)
                time.sleep(0.02)
                continue
            job, started, log = running.pop(pid)
            shutil.rmtree(STATE / "tmp" / job.cache_key, ignore_errors=True)
            result = _result(os.waitstatus_to_exitcode(status), log, time.monotonic() - started)
            killers[job.target.path][result.killer] += result.status == "killed"
            results[job.cache_key] = result
            cache[job.cache_key] = vars(result)
            done += 1
            _progress(done, total, began, job, result)
    finally:  # on an interrupt too: no child outlives the run
        previous = signal.signal(signal.SIGTERM, signal.SIG_IGN), signal.signal(signal.SIGINT, signal.SIG_IGN)
        for child in running:
            _kill(child)
            os.waitpid(child, 0)
        signal.signal(signal.SIGTERM, previous[0])
        signal.signal(signal.SIGINT, previous[1])
    return results


def _kill(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _result(code: int, log: Path, seconds: float) -> Result:
    if code == 0:
        return Result("survived", "", round(seconds, 1))
    text = log.read_text(errors="replace")
    found = re.search(r"^(?:FAILED|ERROR) (.+?)(?: - .*)?$", text, re.M)
    killer = found.group(1) if found else f"pytest exit code {code}"
    return Result("killed", killer, round(seconds, 1))


def _progress(done: int, total: int, began: float, job: Job, result: Result) -> None:
    elapsed = time.monotonic() - began
    print(f"[{done}/{total} {elapsed / 60:.1f} min] {result.status:8s} {job.target.path}: {job.name}", flush=True)


# -- the report ------------------------------------------------------------------------------------


def _report(targets: list[Target], runs: list[Job], bugs: list[Job], uncovered: list[Job],
            results: dict[str, Result]) -> tuple[str, bool]:
    """The report's text, and whether the run meets the goal (score, bugs killed, survivors reviewed)."""
    rows = ["| module | mutants | killed | timeout | survived | no test | score |", "|---|---|---|---|---|---|---|"]
    totals = defaultdict(int)
    survivors: list[tuple[Job, str]] = []
    for target in targets:
        counts = defaultdict(int)
        for job in runs:
            if job.target is target:
                status = results[job.cache_key].status
                counts[status] += 1
                if status == "survived":
                    survivors.append((job, "survived"))
        for job in uncovered:
            if job.target is target:
                counts["no test"] += 1
                survivors.append((job, "no test"))
        total = sum(counts.values())
        if not total:
            continue
        for name, value in counts.items():
            totals[name] += value
        score = (counts["killed"] + counts["timeout"]) / total
        rows.append(f"| {target.path} | {total} | {counts['killed']} | {counts['timeout']} | {counts['survived']} "
                    f"| {counts['no test']} | {score:.1%} |")
    total = sum(totals.values())
    score = (totals["killed"] + totals["timeout"]) / total if total else 1.0
    rows.append(f"| **all** | {total} | {totals['killed']} | {totals['timeout']} | {totals['survived']} "
                f"| {totals['no test']} | **{score:.1%}** |")
    lines = ["## Mutation score (fast unit tests of each module)", "", *rows, ""]
    ok = score >= GOAL or not total
    if bugs:
        lines += ["## Hand-written bugs (tests/mutation/bugs.py)", ""]
        for job in bugs:
            result = results[job.cache_key]
            caught = result.status in ("killed", "timeout")
            ok &= caught
            lines.append(f"- {job.target.path}: {job.name}: "
                         + (f"caught by `{result.killer or 'timeout'}`" if caught else "**NOT CAUGHT**"))
        lines.append("")
    unreviewed = 0
    if survivors:
        lines += ["## Survivors", ""]
        for job, why in sorted(survivors, key=lambda s: (s[0].target.path, s[0].mutant.line)):
            reason = ACCEPTED.get(job.target.path, {}).get(job.name)
            unreviewed += reason is None
            lines.append(f"- {job.target.path}:{job.mutant.line} `{job.name}` ({why}): "
                         + (reason or "**not reviewed**"))
        lines.append("")
    known = {(j.target.path, j.name) for j in runs + uncovered}
    stale = [f"{path}: {key}" for path, keys in ACCEPTED.items() for key in keys
             if (path, key) not in known and any(t.path == path for t in targets)]
    if stale:
        lines += ["## Accepted survivors that no longer exist (remove them from accepted.py)", "",
                  *(f"- {s}" for s in stale), ""]
    ok &= unreviewed == 0
    lines.append(f"Goal: at least {GOAL:.0%} killed, every hand-written bug caught, every survivor reviewed: "
                 + ("met." if ok else "NOT met."))
    return "\n".join(lines), ok


# -- entry point -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tests.mutation", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", default=[], help="targets whose path contains this (repeatable)")
    parser.add_argument("--jobs", type=int, default=2, help="mutants run at once (default 2)")
    parser.add_argument("--fresh", action="store_true", help="ignore cached results and the cached coverage map")
    parser.add_argument("--bugs", action="store_true", help="only the hand-written bugs")
    parser.add_argument("--list", action="store_true", help="list the mutants and their tests, run nothing")
    args = parser.parse_args(argv)
    targets = [t for t in TARGETS if not args.only or any(o in t.path for o in args.only)]
    if not targets:
        parser.error(f"no target matches {args.only}")
    os.chdir(ROOT)
    (STATE / "tmp").mkdir(parents=True, exist_ok=True)
    _prepare()
    began = time.monotonic()
    coverage = _coverage(targets, args.fresh)
    runs, bugs, uncovered = _jobs(targets, coverage, args.bugs)
    if args.list:
        for job in runs + uncovered:
            print(f"{job.target.path}:{job.mutant.line} {job.name}  [{len(job.tests)} tests]")
        return 0
    cache_file = STATE / "cache.json"
    cache = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
    print(f"{len(runs)} mutants to run, {len(uncovered)} on lines no fast test executes, {len(bugs)} "
          f"hand-written bugs", flush=True)
    try:
        results = _run_jobs(bugs + runs, args.jobs, cache, args.fresh)
    finally:
        cache_file.write_text(json.dumps(cache))
    text, ok = _report(targets, runs, bugs, uncovered, results)
    minutes = (time.monotonic() - began) / 60
    text += f"\n\n{len(runs) + len(bugs)} runs in {minutes:.1f} minutes ({args.jobs} at a time)."
    (STATE / "report.md").write_text(text + "\n")
    print("\n" + text + f"\n(also in {STATE.relative_to(ROOT)}/report.md)")
    return 0 if ok else 1


def _prepare() -> None:
    """Warm imports and settings every forked child inherits."""
    os.environ.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_NO_ADVISORY_WARNINGS="1",
                      MPLBACKEND="Agg", TOKENIZERS_PARALLELISM="false", PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")
    sys.dont_write_bytecode = False  # children would otherwise recompile (and re-rewrite) every test module
    signal.signal(signal.SIGINT, signal.default_int_handler)  # ignored in background jobs otherwise
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop cleanly: running children are killed
    os.environ.pop("CI", None)  # the skip policy of CI runs is not what a mutant run checks
    if any(name.startswith("blip_lora") for name in sys.modules):
        raise RuntimeError("the core is already imported: mutated modules could not replace it")
    import importlib

    for name in HEAVY:
        importlib.import_module(name)
    import torch
    from hypothesis import settings

    torch.set_num_threads(1)
    settings.register_profile("mutation", derandomize=True, database=None, deadline=None, print_blob=False)
