"""Command-line flags made from settings classes (blip_lora_core.settings): one flag per setting, its help,
default and accepted values read from the setting's declaration. The flags' defaults are None, so only
the flags given count (``given``): the settings class supplies its defaults and does all the checking."""

from __future__ import annotations

import argparse
from typing import Any

from blip_lora_core.settings import SettingInfo, describe


def add_settings_flags(parser: argparse.ArgumentParser, cls: type, *, only: tuple[str, ...] | None = None) -> list[str]:
    """Add a flag for each setting of cls (nested settings too: their dest is "lora.r"), or for those named
    in only; returns the dests, for ``given``."""
    dests = []
    for info in describe(cls):
        if only is not None and info.name not in only:
            continue
        parser.add_argument(info.flag, dest=info.name, default=None, help=_help(info), **_kind_arguments(info))
        dests.append(info.name)
    return dests


def given(args: argparse.Namespace, dests: list[str]) -> dict[str, Any]:
    """The settings among dests that were given on the command line, by (dotted) name."""
    return {dest: getattr(args, dest) for dest in dests if getattr(args, dest) is not None}


def _kind_arguments(info: SettingInfo) -> dict[str, Any]:
    if info.kind is bool:
        return {"action": argparse.BooleanOptionalAction}
    metavar = info.name.rpartition(".")[2].upper()
    if info.kind is tuple:
        return {"nargs": "+", "metavar": metavar}
    if info.choices:
        metavar = "{" + ",".join(map(str, info.choices)) + "}"
    return {"type": info.kind, "metavar": metavar}


def _help(info: SettingInfo) -> str:
    """The setting's help, what it accepts (when more than its type) and its default."""
    text = info.help
    if info.kind is not bool and (info.low is not None or info.high is not None):
        text += f"; {info.accepts()}"
    default = info.default
    if isinstance(default, tuple):
        default = " ".join(default)
    shown = "none" if default in (None, "") else default
    return f"{text} (default: {shown})".replace("%", "%%")
