"""The core's import graph is one-way: each subpackage imports only the ones below it.

Imports are read from the source (module level and inside functions alike), so a lazy import that
breaks the layering fails here too.
"""

from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[1] / "blip_lora_core"
ROOT_MODULES = {"errors", "atomic", "_compat", "config_mapping"}
# subpackage -> the parts of the core it may import ("root": errors, atomic, _compat)
ALLOWED = {
    "root": {"root"},
    "lora": {"root"},
    "models": {"root", "lora"},
    "runtime": {"root", "lora", "models"},
    "train": {"root", "lora", "models"},
    "bags": {"root", "lora", "models", "runtime", "train"},
    "labelling": {"root", "lora", "models", "train"},
    "__init__": {"root", "lora"},
}
FOREIGN = ("blip_lora_training", "bench", "tests", "blip_captioner")
EXTRAS = {"pycocoevalcap": "train", "matplotlib": "train", "tqdm": "train", "rosbags": "bags"}


def _part(module: str) -> str:
    """blip_lora_core.x.y -> the part it belongs to: a subpackage name or "root"."""
    pieces = module.split(".")[1:]
    if not pieces:
        return "__init__"
    return "root" if pieces[0] in ROOT_MODULES else pieces[0]


def _imports(path: Path) -> list[str]:
    """Absolute names of every module the file imports (relative imports resolved)."""
    package = ["blip_lora_core", *path.relative_to(CORE).parent.parts]
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                names.append(".".join(base + ([node.module] if node.module else [])))
            else:
                names.append(node.module)
    return names


def _edges() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for path in CORE.rglob("*.py"):
        rel = path.relative_to(CORE)
        source = "__init__" if rel == Path("__init__.py") else ("root" if len(rel.parts) == 1 else rel.parts[0])
        for name in _imports(path):
            edges.setdefault(f"{source}:{rel}", set()).add(name)
    return edges


def test_each_part_of_the_core_imports_only_the_parts_below_it():
    edges = _edges()
    assert len(edges) > 25
    wrong = sorted(f"{where} imports {name}" for where, names in edges.items() for name in names
                   if name.startswith("blip_lora_core")
                   and _part(name) not in ALLOWED[where.split(":")[0]] | {where.split(":")[0]})
    assert wrong == []


def test_runtime_imports_neither_train_nor_bags_and_nothing_imports_the_cli_bench_or_tests():
    edges = _edges()
    runtime = {n for where, names in edges.items() if where.startswith("runtime:") for n in names}
    assert runtime and not {n for n in runtime if _part(n) in ("train", "bags") and n.startswith("blip_lora_core")}
    foreign = sorted(f"{where} imports {n}" for where, names in edges.items() for n in names
                     if n.split(".")[0] in FOREIGN)
    assert foreign == []


def test_extras_are_imported_only_by_the_parts_that_need_them():
    edges = _edges()
    wrong = sorted(f"{where} imports {n} (the [{EXTRAS[n.split('.')[0]]}] extra)" for where, names in edges.items()
                   for n in names if n.split(".")[0] in EXTRAS and where.split(":")[0] != EXTRAS[n.split(".")[0]])
    assert wrong == []


def test_the_checker_sees_a_forbidden_edge(tmp_path, monkeypatch):
    bad = tmp_path / "runtime" / "x.py"
    bad.parent.mkdir()
    bad.write_text("def f():\n    from ..train.loop import train\n    from blip_lora_core.bags import reader\n")
    monkeypatch.setattr(__import__(__name__), "CORE", tmp_path)
    assert {_part(n) for n in _imports(bad)} == {"train", "bags"}
