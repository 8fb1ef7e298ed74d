"""Training configuration: one typed dataclass, filled from YAML and command-line overrides, validated.

LoRA settings are a nested ``LoraConfig`` (YAML ``lora:``) and augmentation a nested ``AugmentConfig``
(YAML ``augment:``): each concern's fields and defaults are defined once, by its own class.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import yaml

from ..errors import ConfigError
from ..lora.hooks import LoraConfig
from ..models.blip_internals import ATTENTIONS
from ..settings import check_settings, describe, from_mapping, is_settings, setting
from .augment import AugmentConfig

PRECISIONS = ("fp32", "fp16", "bf16")
FINETUNE_MODES = ("lora", "full")
MAX_YAML_VALUES = 100_000  # more than any real configuration; YAML aliases can expand to billions


@dataclass
class TrainConfig:
    """Everything a training run needs; saved beside every adapter and checkpoint as config.yaml."""

    SECTION: ClassVar[str] = ""  # the top level of the YAML file
    model: str = setting("Salesforce/blip-image-captioning-large", "hub id or local folder of the base BLIP model")
    revision: str = setting("", "hub revision (branch, tag or commit) to pin the base model to")
    train_file: str = setting("", 'training JSONL ({"image": ..., "text": ...} per line)', flag="--train")
    val_file: str = setting("", "validation JSONL", flag="--val")
    val_fraction: float = setting(0.0, "hold out the last fraction of each scene for validation", low=0, high=1,
                                  high_open=True)
    output_dir: str = setting("runs/blip-lora", "output folder: adapters, logs, checkpoints", flag="--out")
    prompt: str = setting("", "text prompt trained in front of every caption (masked from the loss)")
    skip_bad: bool = setting(False, "skip and report bad dataset lines instead of stopping")
    finetune: str = setting("lora", "what to train", choices=FINETUNE_MODES)
    attention: str = setting("sdpa", "vision attention: sdpa (torch's fused kernel) or eager (transformers' own)",
                             choices=ATTENTIONS)
    lora: LoraConfig = setting(factory=LoraConfig, help="LoRA settings")
    # optimisation
    epochs: int = setting(4, "number of epochs", low=0)
    max_steps: int = setting(0, "optimizer steps (overrides epochs when > 0)", low=0)
    batch_size: int = setting(2, "images per micro-batch (per GPU)", low=1)
    grad_accum: int = setting(4, "micro-batches per optimizer step", low=1)
    lr: float = setting(1e-4, "peak learning rate", low=0, low_open=True)
    min_lr_ratio: float = setting(0.0, "the cosine's floor as a fraction of lr", low=0, high=1)
    weight_decay: float = setting(0.01, "AdamW weight decay", low=0)
    warmup_steps: int = setting(100, "linear warm-up steps before cosine decay", low=0)
    grad_clip: float = setting(1.0, "gradient norm clipping (0: off)", low=0)
    label_smoothing: float = setting(0.0, "label smoothing of the caption loss", low=0, high=1, high_open=True)
    precision: str = setting("fp16", "fp16 falls back to fp32 on the CPU", choices=PRECISIONS)
    seed: int = setting(42, "random seed")
    device: str = setting("", "cpu, cuda, cuda:1 ... (empty: cuda when present)")
    num_workers: int = setting(2, "DataLoader worker processes", low=0, flag="--workers")
    augment: AugmentConfig = setting(factory=AugmentConfig, help="training-image augmentation")
    # evaluation and checkpoints
    eval_every: int = setting(0, "validate every N steps (0: every epoch)", low=0)
    group_references: bool = setting(False, "score each image against every phrasing of its scene (file-name "
                                            "prefix)")
    max_new_tokens: int = setting(30, "caption length limit during validation", low=1)
    eval_batch_size: int = setting(16, "images per validation batch", low=1)
    checkpoint_every: int = setting(0, "write a resumable checkpoint every N steps (0: none)", low=0)
    keep_checkpoints: int = setting(2, "how many checkpoints to keep", low=1)
    progress: bool = setting(True, "show a progress bar")

    def __post_init__(self) -> None:
        check_settings(self)
        if self.epochs < 1 and self.max_steps < 1:
            raise ConfigError("epochs or max_steps must be at least 1")

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "lora": self.lora.to_dict(), "augment": dataclasses.asdict(self.augment)}

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults, then the YAML file's values, then overrides (None values ignored); validated.

    Overrides of nested settings use dotted names: ``{"lora.r": 4, "augment.hflip": True}``.
    Unknown keys and wrong types raise ConfigError naming the file and the key.
    """
    values: dict[str, Any] = _read_yaml(Path(path)) if path else {}
    moved = sorted(set(values) & {info.name for info in describe(LoraConfig)})
    if moved:
        raise ConfigError(f"{path}: LoRA settings {moved} belong under 'lora:'")
    sections = {f.name for f in dataclasses.fields(TrainConfig) if is_settings(f.default_factory)}
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        section, _, name = key.rpartition(".")  # "lora.r": one setting of the lora section
        if section and section not in sections:
            raise ConfigError(f"overrides: {key!r} names no section of settings (sections: {sorted(sections)})")
        if section:
            nested = values.get(section)
            values[section] = {**(nested if isinstance(nested, dict) else {}), name: value}
        else:
            values[name] = value
    try:
        return from_mapping(TrainConfig, values)
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
