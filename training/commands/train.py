"""`blip-lora train`: fine-tune with LoRA (or fully) from a YAML config plus command-line overrides."""

from __future__ import annotations

import argparse
import dataclasses

from blip_lora_core.train.augment import AugmentConfig
from blip_lora_core.train.config import TrainConfig, load_config

from ._settings_args import add_settings_flags, given


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="fine-tune a BLIP model on a JSONL dataset",
        description="Fine-tune BLIP captioning with LoRA adapters. Settings come from TrainConfig's defaults, "
                    "then --config (YAML), then the flags below.")
    parser.add_argument("--config", help="YAML file of training settings (see config/train.yaml)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    parser.add_argument("--no-augment", action="store_true",
                        help="train on the images as they are: every augment.* setting off (default: the config's "
                             "augment section, else AugmentConfig's camera-robust defaults)")
    parser.set_defaults(func=run, settings=add_settings_flags(parser, TrainConfig))


def config_of(args: argparse.Namespace) -> TrainConfig:
    """TrainConfig's defaults, then --config, then the flags given (--no-augment: every augment.* off)."""
    overrides = given(args, args.settings)
    if args.no_augment:
        overrides.update({f"augment.{name}": value for name, value in dataclasses.asdict(AugmentConfig.off()).items()})
    return load_config(args.config, overrides)


def run(args: argparse.Namespace) -> int:
    from blip_lora_core.train.loop import train  # the [train] extra

    result = train(config_of(args), resume=args.resume)
    if result.adapter:
        print(f"adapter: {result.adapter}")
    if result.model_dir:
        print(f"model: {result.model_dir}")
    if result.best:
        print(f"best validation: exact match {result.best['exact_match']:.3f}, BLEU-4 {result.best['bleu4']:.3f}, "
              f"CIDEr {result.best['cider']:.3f} (step {result.best['step']})")
    return 0
