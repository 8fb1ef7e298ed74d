"""The core's import graph is one-way: each subpackage imports only the ones below it.

Imports are read from the source (module level and inside functions alike), so a lazy import that
breaks the layering fails here too.
"""

from __future__ import annotations

import ast
from pathlib import Path

from blip_lora_training.cli import extra_of_module

CORE = Path(__file__).resolve().parents[1] / "blip_lora_core"
ROOT_MODULES = {"errors", "atomic", "_compat", "settings"}
# subpackage -> the parts of the core it may import ("root": errors, atomic, _compat, settings)
ALLOWED = {
    "root": {"root"},
    "lora": {"root"},
    "models": {"root", "lora"},
    "runtime": {"root", "lora", "models"},
    "train": {"root", "lora", "models"},
    "bags": {"root", "lora", "models", "runtime"},
    "__init__": {"root", "lora"},
}
FOREIGN = ("blip_lora_training", "bench", "tests", "blip_captioner")
EXTRAS = extra_of_module()  # module -> extra, from pyproject.toml through the installed metadata


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


def _forbidden(edges: dict[str, set[str]]) -> list[str]:
    """The imports of the core that ALLOWED does not allow (a part may import itself)."""
    return sorted(f"{where} imports {name}" for where, names in edges.items() for name in names
                  if name.startswith("blip_lora_core")
                  and _part(name) not in ALLOWED[where.split(":")[0]] | {where.split(":")[0]})


def test_each_part_of_the_core_imports_only_the_parts_below_it():
    edges = _edges()
    assert len(edges) > 25
    assert _forbidden(edges) == []


def test_the_table_covers_every_part_and_is_one_way():
    """ALLOWED names each subpackage on disk (and nothing else), and its edges go one way: ordered so that
    every part allows only parts before it, the graph has no cycle (README: "The import graph is one-way")."""
    subpackages = {p.name for p in CORE.iterdir() if (p / "__init__.py").is_file()}
    assert set(ALLOWED) == subpackages | {"root", "__init__"}
    assert {p.stem for p in CORE.glob("*.py")} == ROOT_MODULES | {"__init__"}
    order = sorted(ALLOWED, key=lambda part: len(_below(part)))
    for index, part in enumerate(order):
        assert ALLOWED[part] - {part} <= set(order[:index]), (part, ALLOWED[part])
    assert ALLOWED["root"] == {"root"} and "train" not in ALLOWED["runtime"] and "bags" not in ALLOWED["runtime"]


def _below(part: str, seen: frozenset = frozenset()) -> set[str]:
    """Every part `part` may reach through ALLOWED (itself excluded); a cycle makes the test above fail."""
    if part in seen:
        return {part}
    reached = set()
    for other in ALLOWED[part] - {part}:
        reached |= {other} | _below(other, seen | {part})
    return reached


def test_runtime_imports_neither_train_nor_bags_and_nothing_imports_the_cli_bench_or_tests():
    edges = _edges()
    runtime = {n for where, names in edges.items() if where.startswith("runtime:") for n in names}
    assert runtime and not {n for n in runtime if _part(n) in ("train", "bags") and n.startswith("blip_lora_core")}
    foreign = sorted(f"{where} imports {n}" for where, names in edges.items() for n in names
                     if n.split(".")[0] in FOREIGN)
    assert foreign == []


def test_extras_are_imported_only_by_the_parts_that_need_them():
    assert {"rosbags", "pycocoevalcap"} <= EXTRAS.keys()
    edges = _edges()
    wrong = sorted(f"{where} imports {n} (the [{EXTRAS[n.split('.')[0]]}] extra)" for where, names in edges.items()
                   for n in names if n.split(".")[0] in EXTRAS and where.split(":")[0] != EXTRAS[n.split(".")[0]])
    assert wrong == []


def test_the_checker_sees_a_forbidden_edge(tmp_path, monkeypatch):
    """The checker, run on a planted tree, reports exactly its forbidden imports (lazy ones too) and not the
    allowed ones."""
    bad = tmp_path / "runtime" / "x.py"
    bad.parent.mkdir()
    bad.write_text("from ..models import captioning\nfrom ..errors import DataError\n\n\ndef f():\n"
                   "    from ..train.loop import train\n    from blip_lora_core.bags import reader\n")
    (tmp_path / "lora").mkdir()
    (tmp_path / "lora" / "y.py").write_text("from ..models.labels import IGNORE_INDEX\nfrom ..atomic import x\n")
    monkeypatch.setattr(__import__(__name__), "CORE", tmp_path)
    assert {_part(n) for n in _imports(bad)} == {"models", "root", "train", "bags"}
    assert _forbidden(_edges()) == ["lora:lora/y.py imports blip_lora_core.models.labels",
                                    "runtime:runtime/x.py imports blip_lora_core.bags",
                                    "runtime:runtime/x.py imports blip_lora_core.train.loop"]
