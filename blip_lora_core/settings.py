"""Settings declared once: a dataclass field says what it accepts, and that one declaration is checked, shown
on the command line and turned into ROS parameters.

A settings class is a dataclass with a ``SECTION`` name (its YAML section, and the prefix of its names in
messages: ``lora.r``) whose fields are made with ``setting(default, help, ...)``: a help text, an optional
range (``low``/``high``, inclusive unless ``low_open``/``high_open``), optional ``choices``, an optional
``check`` for what a range cannot say (a regular expression, a torch device) and the command-line ``flag``
where it is not the field name. Types come from the type hints: ``bool``, ``int``, ``float`` (an int is
taken and stored as float), ``str``, ``tuple[str, ...]`` (a list is taken), ``X | None``, and nested
settings classes (filled from a mapping). From that:

* ``check_settings(self)`` in ``__post_init__`` checks every field, raising ConfigError naming the setting;
* ``from_mapping(cls, values)`` builds one from a YAML section or parameter mapping, naming unknown keys;
* ``describe(cls)`` (one: ``setting_info(cls, name)``) lists every field (nested ones flattened as
  ``section.name``) with its type, default, help, range, choices and flag: the command line
  (``blip_lora_training/commands/_settings_args.py``) and the ROS node's parameter table
  (``blip_captioner/params.py``) read it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import reprlib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

Check = Callable[[Any], "str | None"]
"""A value -> why it is not acceptable (completing "<name> ..."), or None."""
_SHORT = reprlib.Repr()  # short reprs of bad values in messages
_SHORT.maxstring, _SHORT.maxlevel, _SHORT.maxlist = 60, 2, 4
_KINDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string", tuple: "a list of strings"}


def setting(default: Any = dataclasses.MISSING, help: str = "", *, factory: Callable[[], Any] | None = None,
            low: float | None = None, high: float | None = None, low_open: bool = False, high_open: bool = False,
            choices: tuple = (), check: Check | None = None, flag: str | None = None) -> Any:
    """A dataclass field that carries what it accepts (see the module docstring)."""
    metadata = dict(help=help, low=low, high=high, low_open=low_open, high_open=high_open,
                    choices=tuple(choices), check=check, flag=flag)
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclass(frozen=True)
class SettingInfo:
    """One setting as the command line and the node see it. name: dotted for nested settings ("lora.r");
    kind: bool, int, float, str or tuple (of strings); optional: None is accepted."""

    name: str
    kind: type
    optional: bool
    default: Any
    help: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple = ()
    check: Check | None = None
    flag: str = ""

    def accepts(self) -> str:
        """What the setting accepts, in words: "an integer >= 1", "a number in [0, 1)", "one of a, b"."""
        if self.choices:
            return "one of " + ", ".join(map(str, self.choices))
        kind = _KINDS[self.kind]
        if self.low is not None and self.high is not None:
            opening, closing = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"{kind} in {opening}{self.low:g}, {self.high:g}{closing}"
        if self.low is not None:
            return f"{kind} {'>' if self.low_open else '>='} {self.low:g}"
        if self.high is not None:
            return f"{kind} {'<' if self.high_open else '<='} {self.high:g}"
        return kind

    def problem(self, value: Any) -> str | None:
        """Why value is not acceptable (completing "<name> ..."), or None."""
        if value is None and self.optional:
            return None
        wrong = _wrong_type(self.kind, value)
        if wrong:
            return f"must be {_KINDS[self.kind]}, got {wrong}"
        if self.kind is float and not math.isfinite(value):
            return f"must be a finite number, got {value}"
        if self.choices and value not in self.choices:
            return f"must be {self.accepts()}, got {_SHORT.repr(value)}"
        if self.kind in (int, float) and not self._in_range(value):
            return f"must be {self.accepts()}, got {_SHORT.repr(value)}"
        return self.check(self.convert(value)) if self.check else None

    def convert(self, value: Any) -> Any:
        """An int for a float setting as float, a list for a tuple setting as tuple; anything else as it is."""
        if self.kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if self.kind is tuple and isinstance(value, list):
            return tuple(value)
        return value

    def _in_range(self, value: float) -> bool:
        low_ok = self.low is None or (value > self.low if self.low_open else value >= self.low)
        return low_ok and (self.high is None or (value < self.high if self.high_open else value <= self.high))


def _wrong_type(kind: type, value: Any) -> str | None:
    """'<type> <value>' when value is not of kind (bool is not a number; a tuple holds strings), else None."""
    if kind is tuple:
        ok = isinstance(value, (tuple, list)) and all(isinstance(item, str) for item in value)
    elif kind in (int, float):
        ok = isinstance(value, (int, float) if kind is float else int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, kind)
    return None if ok else f"{type(value).__name__} {_SHORT.repr(value)}"


@functools.cache
def _fields(cls: type) -> tuple[tuple[dataclasses.Field, Any], ...]:
    """(field, resolved type hint) of each field of a settings class."""
    hints = typing.get_type_hints(cls)
    return tuple((f, hints[f.name]) for f in dataclasses.fields(cls) if f.init)


def _kind(hint: Any) -> tuple[Any, bool]:
    """A type hint -> (bool/int/float/str/tuple or a settings class, whether None is accepted)."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (types.UnionType, typing.Union):
        inner = [a for a in args if a is not type(None)]
        return _kind(inner[0])[0], len(inner) < len(args)
    return (typing.get_origin(hint) or hint), False


def is_settings(cls: Any) -> bool:
    return dataclasses.is_dataclass(cls) and isinstance(cls, type) and hasattr(cls, "SECTION")


def _info(field: dataclasses.Field, hint: Any, prefix: str = "") -> SettingInfo:
    kind, optional = _kind(hint)
    meta = field.metadata
    default = field.default if field.default_factory is dataclasses.MISSING else field.default_factory()
    return SettingInfo(
        name=prefix + field.name, kind=kind, optional=optional, default=default, help=meta.get("help", ""),
        low=meta.get("low"), high=meta.get("high"), low_open=meta.get("low_open", False),
        high_open=meta.get("high_open", False), choices=meta.get("choices", ()), check=meta.get("check"),
        flag=meta.get("flag") or "--" + field.name.replace("_", "-"))


def describe(cls: type) -> list[SettingInfo]:
    """Every setting of cls in field order, nested settings classes flattened ("lora.r")."""
    found = []
    for field, hint in _fields(cls):
        kind, _ = _kind(hint)
        if is_settings(kind):
            found += [dataclasses.replace(info, name=f"{field.name}.{info.name}") for info in describe(kind)]
        else:
            found.append(_info(field, hint))
    return found


def setting_info(cls: type, name: str) -> SettingInfo:
    """The SettingInfo of one setting of cls (dotted for a nested one); KeyError for an unknown name."""
    return {info.name: info for info in describe(cls)}[name]


def check_settings(instance: Any) -> None:
    """Check (then convert, see SettingInfo.convert) every field of a settings instance, frozen or not;
    ConfigError naming the first bad one ("lora.dropout must be a number in [0, 1), got 1.5"). Nested
    settings given as mappings (or None: the defaults) are built with from_mapping."""
    section = type(instance).SECTION
    for field, hint in _fields(type(instance)):
        value, where = getattr(instance, field.name), f"{section}.{field.name}" if section else field.name
        kind, _ = _kind(hint)
        if is_settings(kind):
            if not isinstance(value, kind):
                object.__setattr__(instance, field.name, from_mapping(kind, value))
            continue
        info = _info(field, hint)
        problem = info.problem(value)
        if problem:
            raise ConfigError(f"{where} {problem}")
        object.__setattr__(instance, field.name, info.convert(value))


def from_mapping(cls: type, values: Any) -> Any:
    """cls(**values) for a mapping (a YAML section, parameters; None: the defaults); ConfigError naming the
    section when values is not a mapping or has keys cls does not know (listing the known ones)."""
    values = {} if values is None else values
    section = cls.SECTION or "the configuration"
    if not isinstance(values, Mapping):
        raise ConfigError(f"{section} must be a mapping of settings, got {type(values).__name__}")
    known = sorted(f.name for f, _ in _fields(cls))
    unknown = sorted(str(k) for k in values if k not in known)
    if unknown:
        where = f"{cls.SECTION} " if cls.SECTION else ""
        raise ConfigError(f"unknown {where}setting(s): {', '.join(unknown)} (known: {', '.join(known)})")
    return cls(**values)
