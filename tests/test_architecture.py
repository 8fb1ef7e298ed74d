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
    "ort": {"root", "models"},  # and only models' torch-free modules: test_the_torch_free_modules_...
    "export": {"root", "lora", "models", "ort"},
    "runtime": {"root", "lora", "models", "ort"},
    "train": {"root", "lora", "models"},
    "bags": {"root", "lora", "models", "runtime"},
    "labelling": {"root", "lora", "models", "train"},
    "__init__": {"root", "lora"},
}
FOREIGN = ("blip_lora_training", "bench", "tests", "blip_captioner")
EXTRAS = extra_of_module()  # module -> extra, from pyproject.toml through the installed metadata
# extra -> the parts of the core that may import its modules (an extra is named after its part, or listed here)
PARTS_OF_EXTRA = {"onnx": {"ort", "export"}}
# modules that must import neither torch nor transformers when imported (the ONNX Runtime path, the node's image
# decoding and pipeline); what they import from the core at module level must be torch-free as well
TORCH_FREE = ("__init__.py", "errors.py", "atomic.py", "settings.py", "models/caption_settings.py",
              "models/batching.py", "models/confidence.py", "models/images.py", "models/preprocess.py", "ort/folder.py",
              "ort/providers.py", "ort/captioner.py", "runtime/image_msgs.py", "runtime/pipeline.py",
              "runtime/diagnostics.py", "runtime/captioners.py")
HEAVY = ("torch", "transformers", "safetensors", "huggingface_hub", "peft")


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
    parts = {module: PARTS_OF_EXTRA.get(extra, {extra}) for module, extra in EXTRAS.items()}
    wrong = sorted(f"{where} imports {n} (the [{EXTRAS[n.split('.')[0]]}] extra)" for where, names in edges.items()
                   for n in names if n.split(".")[0] in parts and where.split(":")[0] not in parts[n.split(".")[0]])
    assert wrong == []


def _module_level_imports(path: Path) -> list[str]:
    """Like _imports, but only what runs on import: not inside functions, not under ``if TYPE_CHECKING``."""
    package = ["blip_lora_core", *path.relative_to(CORE).parent.parts]
    names: list[str] = []

    def visit(statements):
        for node in statements:
            if isinstance(node, ast.Import):
                names.extend(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = package[: len(package) - node.level + 1] if node.level else []
                names.append(".".join(base + ([node.module] if node.module else [])) if node.level else node.module)
            elif isinstance(node, ast.If) and "TYPE_CHECKING" not in ast.unparse(node.test):
                visit(node.body + node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)

    visit(ast.parse(path.read_text(encoding="utf-8")).body)
    return names


def _file_of(module: str) -> Path:
    """blip_lora_core.a.b -> CORE/a/b.py or CORE/a/b/__init__.py."""
    path = CORE.joinpath(*module.split(".")[1:])
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def test_the_torch_free_modules_import_no_torch_at_import_time():
    """Follows module-level imports through the core (a package's __init__ included) from each torch-free module."""
    wrong = []
    for start in TORCH_FREE:
        seen, todo = set(), [CORE / start]
        while todo:
            path = todo.pop()
            if path in seen:
                continue
            seen.add(path)
            for name in _module_level_imports(path):
                if name.split(".")[0] in HEAVY:
                    wrong.append(f"{start}: {path.relative_to(CORE)} imports {name}")
                elif name.startswith("blip_lora_core"):
                    parts = name.split(".")
                    todo += [_file_of(".".join(parts[:i])) for i in range(2, len(parts) + 1)]
                    todo += [CORE / "__init__.py"]
    assert wrong == []
    assert all((CORE / module).is_file() for module in TORCH_FREE)


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
