"""Settings declared once (blip_lora_core.settings): the field's declaration checks values, names the setting
in errors and makes the command-line flag, for every settings class of the project."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import pytest

from blip_lora_core.bags.options import ExtractOptions, ReplayOptions
from blip_lora_core.errors import ConfigError
from blip_lora_core.lora.hooks import LoraConfig
from blip_lora_core.models.caption_settings import CaptionSettings
from blip_lora_core.settings import check_settings, describe, from_mapping, setting
from blip_lora_core.train.augment import AugmentConfig
from blip_lora_core.train.config import TrainConfig, load_config
from blip_lora_training.cli import build_parser
from blip_lora_training.commands._settings_args import add_settings_flags, given

SETTINGS_CLASSES = (TrainConfig, LoraConfig, AugmentConfig, CaptionSettings, ExtractOptions, ReplayOptions)


@dataclass(frozen=True)
class _Example:
    SECTION: ClassVar[str] = "example"
    count: int = setting(1, "how many", low=1, high=10)
    ratio: float = setting(0.5, "a fraction", low=0, high=1, high_open=True)
    mode: str | None = setting(None, "a mode", choices=("a", "b"))
    names: tuple[str, ...] = setting(("x",), "names", check=lambda v: None if v else "must name at least one")
    on: bool = setting(False, "a switch")

    def __post_init__(self) -> None:
        check_settings(self)


@pytest.mark.parametrize("values, message", [
    (dict(count=0), "example.count must be an integer in [1, 10], got 0"),
    (dict(count=2.0), "example.count must be an integer, got float 2.0"),
    (dict(count=True), "example.count must be an integer, got bool True"),
    (dict(ratio=1), "example.ratio must be a number in [0, 1), got 1"),
    (dict(ratio=float("nan")), "example.ratio must be a finite number, got nan"),
    (dict(ratio="0.5"), "example.ratio must be a number, got str '0.5'"),
    (dict(mode="c"), "example.mode must be one of a, b, got 'c'"),
    (dict(names=()), "example.names must name at least one"),
    (dict(names=["x", 3]), "example.names must be a list of strings, got list ['x', 3]"),
    (dict(on=1), "example.on must be true or false, got int 1"),
])
def test_one_declaration_checks_type_range_choices_and_more(values, message):
    with pytest.raises(ConfigError) as error:
        _Example(**values)
    assert str(error.value) == message


def test_values_are_converted_and_mappings_name_unknown_keys():
    example = from_mapping(_Example, {"ratio": 0, "names": ["a", "b"], "mode": None})
    assert (example.ratio, example.names) == (0.0, ("a", "b")) and isinstance(example.ratio, float)
    with pytest.raises(ConfigError, match=r"^unknown example setting\(s\): size \(known: count, mode, names, on, "
                                          r"ratio\)$"):
        from_mapping(_Example, {"size": 3})
    with pytest.raises(ConfigError, match="example must be a mapping of settings, got list"):
        from_mapping(_Example, [1])


def test_nested_sections_are_built_from_mappings_and_named_in_errors():
    config = TrainConfig(lora={"r": 4, "alpha": 8}, augment=None)
    assert config.lora == LoraConfig(r=4, alpha=8.0) and config.augment == AugmentConfig()
    with pytest.raises(ConfigError, match=r"^lora\.dropout must be a number in \[0, 1\), got 1\.5$"):
        TrainConfig(lora={"dropout": 1.5})
    with pytest.raises(ConfigError, match=r"^augment\.rotation_degrees must be a number in \[0, 180\], got 200"):
        TrainConfig(augment={"rotation_degrees": 200})


@pytest.mark.parametrize("build, message", [
    (lambda: ExtractOptions(every=-1), "extract.every must be a number >= 0, got -1"),
    (lambda: ExtractOptions(dedup_threshold=300), "extract.dedup_threshold must be a number in [0, 255], got 300"),
    (lambda: ReplayOptions(max_rate_hz=-2), "replay.max_rate_hz must be a number in [0, 1000], got -2"),
    (lambda: CaptionSettings(num_beams=0), "caption.num_beams must be an integer in [1, 16], got 0"),
    (lambda: LoraConfig(targets=("(",)), "lora.targets pattern '(' is not a valid regular expression"),
])
def test_core_errors_name_the_setting_not_a_command_line_flag(build, message):
    with pytest.raises(ConfigError) as error:
        build()
    assert str(error.value).startswith(message) and "--" not in str(error.value)


@pytest.mark.parametrize("cls", SETTINGS_CLASSES)
def test_each_settings_class_declares_help_for_every_setting_and_its_defaults_pass(cls):
    infos = describe(cls)
    assert infos and all(info.help for info in infos)
    defaults = {info.name: info.default for info in infos if "." not in info.name}
    assert dataclasses.asdict(cls()) == {**dataclasses.asdict(cls()), **defaults}


def _flags(command: list[str]) -> dict[str, argparse.Action]:
    parser = build_parser()
    for name in command:
        parser = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[name]
    return {a.dest: a for a in parser._actions}


@pytest.mark.parametrize("command, cls", [
    (["train"], TrainConfig), (["caption"], CaptionSettings), (["eval"], CaptionSettings),
    (["bag", "extract"], ExtractOptions), (["bag", "extract"], CaptionSettings),
    (["bag", "caption"], ReplayOptions), (["bag", "caption"], CaptionSettings),
])
def test_every_setting_has_its_flag_with_the_declared_help_and_default(command, cls):
    actions = _flags(command)
    for info in describe(cls):
        action = actions[info.name]
        assert info.flag in action.option_strings and action.default is None
        assert action.help.startswith(info.help.replace("%", "%%"))
        shown = " ".join(info.default) if isinstance(info.default, tuple) else info.default
        assert action.help.endswith(f"(default: {'none' if shown in (None, '') else shown})")


def test_train_flags_become_the_same_config_as_the_settings():
    args = build_parser().parse_args(["train", "--train", "d.jsonl", "--r", "4", "--targets", "a", "b",
                                      "--no-progress", "--colour-jitter", "0.3", "--min-lr-ratio", "0.1",
                                      "--workers", "0", "--precision", "bf16"])
    config = load_config(None, given(args, args.settings))
    assert config == TrainConfig(train_file="d.jsonl", lora=LoraConfig(r=4, targets=("a", "b")), progress=False,
                                 augment=AugmentConfig(colour_jitter=0.3), min_lr_ratio=0.1, num_workers=0,
                                 precision="bf16")


def test_only_given_flags_count():
    parser = argparse.ArgumentParser()
    dests = add_settings_flags(parser, CaptionSettings)
    assert given(parser.parse_args([]), dests) == {}
    assert given(parser.parse_args(["--beams", "3", "--no-merge"]), dests) == {"num_beams": 3, "merge": False}
