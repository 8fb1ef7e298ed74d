"""Training configuration: one typed dataclass, filled from YAML and command-line overrides, validated.

LoRA settings are a nested ``LoraConfig`` (YAML ``lora:``) and augmentation a nested ``AugmentConfig``
(YAML ``augment:``): each concern's fields and defaults are defined once, by its own class.
"""

from __future__ import annotations

import dataclasses
import math
import reprlib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError
from ..lora.hooks import LoraConfig
from .augment import AugmentConfig

PRECISIONS = ("fp32", "fp16", "bf16")
FINETUNE_MODES = ("lora", "full")
MAX_YAML_VALUES = 100_000  # more than any real configuration; YAML aliases can expand to billions
_SHORT = reprlib.Repr()  # short reprs of bad values in messages
_SHORT.maxstring, _SHORT.maxlevel = 60, 2


@dataclass
class TrainConfig:
    """Everything a training run needs; saved beside every adapter and checkpoint as config.yaml."""

    model: str = "Salesforce/blip-image-captioning-large"
    revision: str = ""
    train_file: str = ""
    val_file: str = ""
    val_fraction: float = 0.0
    output_dir: str = "runs/blip-lora"
    prompt: str = ""
    skip_bad: bool = False
    finetune: str = "lora"
    lora: LoraConfig = field(default_factory=LoraConfig)
    # optimisation
    epochs: int = 4
    max_steps: int = 0
    batch_size: int = 2
    grad_accum: int = 4
    lr: float = 1e-4
    min_lr_ratio: float = 0.0
    weight_decay: float = 0.01
    warmup_steps: int = 100
    grad_clip: float = 1.0
    label_smoothing: float = 0.0
    precision: str = "fp16"
    seed: int = 42
    device: str = ""
    num_workers: int = 2
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # evaluation and checkpoints
    eval_every: int = 0
    group_references: bool = False
    max_new_tokens: int = 30
    eval_batch_size: int = 16
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    progress: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.lora, LoraConfig):
            self.lora = _nested("lora", LoraConfig.from_dict, self.lora)
        if not isinstance(self.augment, AugmentConfig):
            self.augment = _nested("augment", AugmentConfig.from_dict, self.augment)
        _check_types(self)
        checks = [
            (self.finetune in FINETUNE_MODES, f"finetune must be one of {FINETUNE_MODES}"),
            (self.precision in PRECISIONS, f"precision must be one of {PRECISIONS}"),
            (0.0 <= self.val_fraction < 1.0, "val_fraction must be in [0, 1)"),
            (self.epochs >= 1 or self.max_steps >= 1, "epochs or max_steps must be at least 1"),
            (self.batch_size >= 1 and self.grad_accum >= 1, "batch_size and grad_accum must be at least 1"),
            (self.lr > 0 and 0.0 <= self.min_lr_ratio <= 1.0, "lr must be > 0 and min_lr_ratio in [0, 1]"),
            (self.warmup_steps >= 0 and self.weight_decay >= 0, "warmup_steps and weight_decay must be >= 0"),
            (self.grad_clip >= 0 and 0.0 <= self.label_smoothing < 1.0, "grad_clip >= 0, label_smoothing in [0, 1)"),
            (min(self.eval_every, self.checkpoint_every, self.max_steps) >= 0, "step counts must be >= 0"),
            (self.keep_checkpoints >= 1 and self.num_workers >= 0, "keep_checkpoints >= 1, num_workers >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "lora": self.lora.to_dict(), "augment": dataclasses.asdict(self.augment)}

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _check_types(config: TrainConfig) -> None:
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(config):
        value, expected = getattr(config, f.name), hints[f.name]
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
            setattr(config, f.name, value)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{f.name} must be a finite number, got {value}")
        origin = typing.get_origin(expected) or expected
        if origin is types.UnionType:
            origin = tuple(typing.get_origin(a) or a for a in typing.get_args(expected))
        if isinstance(value, bool) and expected is not bool or not isinstance(value, origin):
            raise ConfigError(f"{f.name} must be {getattr(expected, '__name__', expected)}, "
                              f"got {type(value).__name__} {_SHORT.repr(value)}")


def _nested(name: str, build, values: Any):
    """A nested config from a mapping (None: its defaults), with errors naming the section."""
    try:
        return build({} if values is None else values)
    except TypeError as error:  # a wrong type the nested class did not name
        raise ConfigError(f"{name}: {error}") from error


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults, then the YAML file's values, then overrides (None values ignored); validated.

    Overrides of nested settings use dotted names: ``{"lora.r": 4, "augment.hflip": True}``.
    Unknown keys and wrong types raise ConfigError naming the file and the key.
    """
    values: dict[str, Any] = {}
    if path:
        values.update(_read_yaml(Path(path)))
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        moved = sorted(set(unknown) & {f.name for f in dataclasses.fields(LoraConfig)})
        hint = f" (LoRA settings {moved} belong under 'lora:')" if moved else ""
        raise ConfigError(f"{path}: unknown setting(s) {unknown}{hint}; known: {sorted(known)}")
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        section, _, name = key.rpartition(".")
        if section not in ("", "lora", "augment") or (not section and name not in known):
            raise ConfigError(f"overrides: unknown setting {key!r}; known: {sorted(known)}")
        if section:
            nested = values.get(section)
            values[section] = {**(nested if isinstance(nested, dict) else {}), name: value}
        else:
            values[name] = value
    try:
        return TrainConfig(**values)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}" if path else str(error)) from error


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise ConfigError(f"{path}: cannot read YAML configuration ({_yaml_reason(error)})") from error
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the configuration must be a mapping of settings, got {type(data).__name__}")
    _check_size(path, data)
    return data


def _yaml_reason(error: Exception) -> str:
    """One line: the YAML problem and where it is, without PyYAML's multi-line snippet."""
    problem, mark = getattr(error, "problem", None), getattr(error, "problem_mark", None)
    if problem and mark:
        return f"{problem}, line {mark.line + 1}, column {mark.column + 1}"
    return " ".join(str(error).split())


def _check_size(path: Path, data: Any) -> None:
    """ConfigError when the YAML expands to more than MAX_YAML_VALUES values (an alias bomb, a cycle)."""
    stack, count = [data], 0
    while stack:
        item = stack.pop()
        count += 1
        if count > MAX_YAML_VALUES:
            raise ConfigError(f"{path}: the configuration expands to more than {MAX_YAML_VALUES} values "
                              f"(YAML aliases?)")
        if isinstance(item, dict):
            stack.extend(item.items())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
