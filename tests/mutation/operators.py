"""Mutants of a Python module: one small change each to its syntax tree.

The operators are the usual ones (mutmut, cosmic-ray): swap an arithmetic, comparison or boolean
operator, drop one operand of ``and``/``or``, drop ``not`` or a unary minus, change a constant (n -> n + 1,
True <-> False, "s" -> "XXsXX"), make an ``if`` always or never taken, return None, delete a call
statement, drop a keyword argument, a slice bound or a comprehension filter, swap break/continue.

Not mutated: docstrings, annotations, decorators, imports, ``raise`` statements (their conditions are),
log calls, f-strings and ``# pragma: no mutate`` lines. Each mutant has a key that survives line shifts:
``function: operator: before -> after`` (with ``#2`` ... when one function has the same change twice).
"""

from __future__ import annotations

import ast
import copy
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

# (field, index) steps from the module node to a node; index None for a plain attribute
Path = tuple[tuple[str, int | None], ...]

BINARY_SWAPS = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.FloorDiv: ast.Div,
                ast.Mod: ast.Mult, ast.Pow: ast.Mult, ast.LShift: ast.RShift, ast.RShift: ast.LShift,
                ast.BitAnd: ast.BitOr, ast.BitOr: ast.BitAnd, ast.BitXor: ast.BitAnd}
COMPARE_SWAPS = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
                 ast.NotEq: ast.Eq, ast.Is: ast.IsNot, ast.IsNot: ast.Is, ast.In: ast.NotIn, ast.NotIn: ast.In}
LOGGERS = {"log", "logger", "logging", "warnings"}
NO_MUTATE = re.compile(r"#\s*pragma:\s*no mutate")


@dataclass(frozen=True)
class Mutant:
    """One change to one module. lines: the source lines whose execution can reveal it (the changed
    node's and its statement's first line); import_time: the change runs when the module is imported
    (module or class level, default values), not inside a function body."""

    path: str  # the module's file, relative to the repository
    key: str
    operator: str
    line: int
    lines: frozenset[int]
    import_time: bool
    location: Path = field(repr=False, compare=False)
    replacement: ast.AST | None = field(repr=False, compare=False)

    def tree(self, original: ast.Module) -> ast.Module:
        """A mutated copy of the module's tree (the original is not modified)."""
        tree = copy.deepcopy(original)
        parent: ast.AST = tree
        for name, index in self.location[:-1]:
            parent = getattr(parent, name) if index is None else getattr(parent, name)[index]
        name, index = self.location[-1]
        if index is None:
            setattr(parent, name, self.replacement)
        elif self.replacement is None:  # a deleted list element (a keyword argument, a filter)
            del getattr(parent, name)[index]
        else:
            getattr(parent, name)[index] = self.replacement
        return ast.fix_missing_locations(tree)


@dataclass
class _Context:
    qualname: str = ""
    in_function: bool = False
    statement: ast.stmt | None = None


def mutants(source: str, path: str, select: Callable[[str, str], bool] | None = None) -> list[Mutant]:
    """Every mutant of a module's source. select(qualname, statement), when given, keeps only the mutants
    whose innermost statement it accepts (statement: the source of a simple statement, or of a compound
    statement's header)."""
    tree = ast.parse(source)
    lines = source.splitlines()
    found: list[Mutant] = []
    seen: Counter[str] = Counter()
    for location, node, replacement, operator, context in _walk(tree, (), _Context()):
        statement = context.statement
        if statement is None:
            continue
        if any(NO_MUTATE.search(lines[n - 1]) for n in range(node.lineno, node.end_lineno + 1)):
            continue
        if select and not select(context.qualname, _header(lines, statement)):
            continue
        if operator.startswith("condition always"):  # the condition alone: the key stays short and stable
            before, after = _short(node.test), operator.rsplit(" ", 1)[1]
        else:
            before = _short(node)
            after = "(deleted)" if replacement is None else _short(replacement)
        if replacement is not None and not hasattr(replacement, "lineno"):
            ast.copy_location(replacement, node)
        key = f"{context.qualname or '<module>'}: {operator}: {before} -> {after}"
        seen[key] += 1
        if seen[key] > 1:
            key += f" #{seen[key]}"
        span = set(range(node.lineno, node.end_lineno + 1)) | {statement.lineno}
        found.append(Mutant(path, key, operator, node.lineno, frozenset(span), not context.in_function,
                            location, replacement))
    return found


def _header(lines: list[str], statement: ast.stmt) -> str:
    """A simple statement's source, or a compound statement's lines before its body."""
    body = getattr(statement, "body", None)
    end = body[0].lineno - 1 if isinstance(body, list) and body else statement.end_lineno
    return "\n".join(lines[statement.lineno - 1:max(end, statement.lineno)])


def _short(node: ast.AST) -> str:
    text = " ".join(ast.unparse(node).split())
    return text if len(text) <= 90 else text[:87] + "..."


def _docstring(body: list[ast.stmt]) -> ast.stmt | None:
    first = body[0] if body else None
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        return first
    return None


def _is_log_call(node: ast.AST) -> bool:
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name) and node.func.value.id in LOGGERS)


Found = tuple[Path, ast.AST, ast.AST | None, str, _Context]


def _walk(node: ast.AST, location: Path, context: _Context) -> Iterator[Found]:
    """(location, node, replacement, operator, context) for every mutation point under node."""
    if isinstance(node, (ast.Import, ast.ImportFrom, ast.Raise, ast.JoinedStr, ast.Assert, ast.Global,
                         ast.Nonlocal)) or _is_log_call(getattr(node, "value", node)):
        return
    if isinstance(node, ast.stmt):
        context = _Context(context.qualname, context.in_function, node)
    yield from ((location, node, new, name, context) for new, name in _replacements(node))
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
        yield from _walk_definition(node, location, context)
        return
    docstring = _docstring(node.body) if isinstance(node, ast.Module) else None
    for name, value in ast.iter_fields(node):
        if name in ("annotation", "returns", "type_comment", "decorator_list"):
            continue
        if isinstance(value, list):
            for index, item in enumerate(value):
                if isinstance(item, ast.AST) and item is not docstring:
                    yield from _walk(item, (*location, (name, index)), context)
                    yield from _list_deletions(node, name, index, item, location, context)
        elif isinstance(value, ast.AST):
            yield from _walk(value, (*location, (name, None)), context)


def _walk_definition(node, location: Path, context: _Context) -> Iterator[Found]:
    """Defaults run at definition time (the outer context); the body runs when called."""
    name = getattr(node, "name", "<lambda>")
    qualname = f"{context.qualname}.{name}" if context.qualname else name
    if not isinstance(node, ast.ClassDef):
        outer = _Context(f"{qualname} (defaults)", context.in_function, context.statement)
        for field_name in ("defaults", "kw_defaults"):
            for index, default in enumerate(getattr(node.args, field_name)):
                if default is not None:
                    yield from _walk(default, (*location, ("args", None), (field_name, index)), outer)
    inner = _Context(qualname, context.in_function or not isinstance(node, ast.ClassDef), context.statement)
    if isinstance(node, ast.Lambda):
        yield from _walk(node.body, (*location, ("body", None)), inner)
        return
    docstring = _docstring(node.body)
    for index, statement in enumerate(node.body):
        if statement is not docstring:
            yield from _walk(statement, (*location, ("body", index)), inner)


def _list_deletions(parent: ast.AST, name: str, index: int, item: ast.AST, location: Path,
                    context: _Context) -> Iterator[Found]:
    """Drop a keyword argument or a comprehension filter."""
    if (isinstance(parent, ast.Call) and name == "keywords" and item.arg is not None) or (
            isinstance(parent, ast.comprehension) and name == "ifs"):
        operator = "drop keyword" if name == "keywords" else "drop filter"
        yield (*location, (name, index)), item, None, operator, context


def _replacements(node: ast.AST) -> Iterator[tuple[ast.AST, str]]:
    """(new node, operator name) for each mutation of this node itself."""
    if isinstance(node, ast.BinOp) and type(node.op) in BINARY_SWAPS:
        yield ast.BinOp(node.left, BINARY_SWAPS[type(node.op)](), node.right), "swap operator"
    elif isinstance(node, ast.AugAssign) and type(node.op) in BINARY_SWAPS:
        yield ast.AugAssign(node.target, BINARY_SWAPS[type(node.op)](), node.value), "swap operator"
    elif isinstance(node, ast.Compare):
        for index, op in enumerate(node.ops):
            ops = list(node.ops)
            ops[index] = COMPARE_SWAPS[type(op)]()
            yield ast.Compare(node.left, ops, node.comparators), "swap comparison"
    elif isinstance(node, ast.BoolOp):
        yield ast.BoolOp(ast.Or() if isinstance(node.op, ast.And) else ast.And(), node.values), "swap and/or"
        for index in range(len(node.values)):
            rest = node.values[:index] + node.values[index + 1:]
            yield (rest[0] if len(rest) == 1 else ast.BoolOp(node.op, rest)), "drop operand"
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.Not, ast.USub, ast.Invert)):
        yield node.operand, "drop unary operator"
    elif isinstance(node, ast.Constant):
        yield from _constant(node)
    elif isinstance(node, (ast.If, ast.IfExp, ast.While)):
        for value in (True, False) if not isinstance(node, ast.While) else (False,):
            yield _with(node, test=ast.Constant(value)), f"condition always {value}"
    elif isinstance(node, ast.Return) and node.value is not None and not (
            isinstance(node.value, ast.Constant) and node.value.value is None):
        yield ast.Return(ast.Constant(None)), "return None"
    elif isinstance(node, ast.Expr) and isinstance(node.value, (ast.Call, ast.Await)):
        yield ast.Pass(), "delete call"
    elif isinstance(node, ast.Slice):
        for part in ("lower", "upper", "step"):
            if getattr(node, part) is not None:
                yield _with(node, **{part: None}), f"drop slice {part}"
    elif isinstance(node, ast.Break):
        yield ast.Continue(), "break -> continue"
    elif isinstance(node, ast.Continue):
        yield ast.Break(), "continue -> break"


def _constant(node: ast.Constant) -> Iterator[tuple[ast.AST, str]]:
    value = node.value
    if isinstance(value, bool):
        yield ast.Constant(not value), "swap bool"
    elif isinstance(value, int):
        yield ast.Constant(value + 1), "number + 1"
    elif isinstance(value, float):
        yield ast.Constant(value + 1.0), "number + 1"
    elif isinstance(value, str):
        yield ast.Constant(f"XX{value}XX"), "change string"
    elif isinstance(value, bytes):
        yield ast.Constant(b"XX" + value + b"XX"), "change string"


def _with(node: ast.AST, **changes) -> ast.AST:
    clone = copy.copy(node)
    for name, value in changes.items():
        setattr(clone, name, value)
    return clone
