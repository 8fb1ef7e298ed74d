"""Command-line options shared by the commands that load a model for captioning (flags: CaptionSettings)."""

from __future__ import annotations

import argparse

from blip_lora_core.models.caption_settings import CaptionSettings
from blip_lora_core.models.captioning import Captioner
from blip_lora_core.models.loading import BLIP_LARGE

from ._settings_args import add_settings_flags, given


def add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=BLIP_LARGE, help="hub id or local folder of the base model")
    parser.add_argument("--revision", default=None, help="hub revision to pin the model to")
    parser.add_argument("--adapter", default=None, help="LoRA adapter file (.safetensors); none: zero-shot")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no progress bars (transformers' weight-loading bar included)")
    parser.set_defaults(caption_settings=add_settings_flags(parser, CaptionSettings))


def settings_from_args(args: argparse.Namespace) -> CaptionSettings:
    """The command line's caption settings, validated (ConfigError on a bad value)."""
    return CaptionSettings(**given(args, args.caption_settings))


def captioner_from_args(args: argparse.Namespace) -> Captioner:
    return Captioner.from_pretrained(args.model, settings_from_args(args), adapter=args.adapter,
                                     revision=args.revision)
