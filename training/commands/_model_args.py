"""Command-line options shared by the commands that load a model for captioning (flags: CaptionSettings)."""

from __future__ import annotations

import argparse
from typing import Any

from blip_lora_core.models.caption_settings import BLIP_LARGE, CaptionSettings
from blip_lora_core.runtime.captioners import load_captioner

from ._settings_args import add_settings_flags, given


def add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=BLIP_LARGE,
                        help="hub id or local folder of the base model, or an ONNX export folder (blip-lora export "
                             "--format onnx: runs on ONNX Runtime, no torch)")
    parser.add_argument("--revision", default=None, help="hub revision to pin the model to")
    parser.add_argument("--adapter", default=None, help="LoRA adapter file (.safetensors); none: zero-shot")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no progress bars (transformers' weight-loading bar included)")
    parser.set_defaults(caption_settings=add_settings_flags(parser, CaptionSettings))


def settings_from_args(args: argparse.Namespace) -> CaptionSettings:
    """The command line's caption settings, validated (ConfigError on a bad value)."""
    return CaptionSettings(**given(args, args.caption_settings))


def captioner_from_args(args: argparse.Namespace) -> Any:
    """The torch Captioner, or the ONNX Runtime one for an exported folder (runtime/captioners.py)."""
    return load_captioner(args.model, settings_from_args(args), adapter=args.adapter, revision=args.revision)
