"""Settings dataclasses filled from mappings (YAML sections, parameter dictionaries)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from .errors import ConfigError


def dataclass_kwargs(cls: type, section: str, values: Any) -> dict[str, Any]:
    """values as keyword arguments for the dataclass cls; ConfigError naming the section when values is not
    a mapping or has keys cls does not know (listing the known ones)."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"{section} must be a mapping, got {type(values).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(str(k) for k in values if k not in known)
    if unknown:
        raise ConfigError(f"unknown {section} option(s): {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    return dict(values)
