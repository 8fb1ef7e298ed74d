"""Command-line options shared by the commands that load a model for captioning (defaults: CaptionSettings)."""

from __future__ import annotations

import argparse
from typing import Any

from blip_lora_core.models.caption_settings import BLIP_LARGE, QUANTIZE_CHOICES, CaptionSettings
from blip_lora_core.runtime.captioners import load_captioner

DEFAULTS = CaptionSettings()


def add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=BLIP_LARGE,
                        help="hub id or local folder of the base model, or an ONNX export folder (blip-lora export "
                             "--format onnx: runs on ONNX Runtime, no torch)")
    parser.add_argument("--revision", default=None, help="hub revision to pin the model to")
    parser.add_argument("--adapter", default=None, help="LoRA adapter file (.safetensors); none: zero-shot")
    parser.add_argument("--merge", action=argparse.BooleanOptionalAction, default=DEFAULTS.merge,
                        help="fold the adapter into the weights (no overhead) instead of running it as hooks")
    parser.add_argument("--prompt", default=DEFAULTS.prompt,
                        help='text prompt, e.g. "a picture of" (stripped from output)')
    parser.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size, help="images per forward pass")
    parser.add_argument("--beams", type=int, default=DEFAULTS.num_beams,
                        help="beam search width (1: greedy, on the fast static-cache decoder)")
    parser.add_argument("--max-new-tokens", type=int, default=DEFAULTS.max_new_tokens, help="caption length limit")
    parser.add_argument("--device", default=DEFAULTS.device, help="cpu, cuda, ... (default: cuda when present)")
    parser.add_argument("--dtype", default=DEFAULTS.dtype,
                        help="fp32, fp16, bf16 (default: fp16 on GPU, fp32 on CPU; bf16 pays off on CPUs with "
                             "AVX512-BF16 or AMX)")
    parser.add_argument("--quantize", default=DEFAULTS.quantize, choices=QUANTIZE_CHOICES,
                        help="int8: dynamic int8 linear layers (CPU, fp32, merged adapter); default: none")
    parser.add_argument("--fast", action=argparse.BooleanOptionalAction, default=DEFAULTS.fast,
                        help="greedy captions on the static-cache decoder (same tokens as generate(), faster)")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no progress bars (transformers' weight-loading bar included)")


def settings_from_args(args: argparse.Namespace) -> CaptionSettings:
    """The command line's caption settings, validated (ConfigError on a bad value)."""
    return CaptionSettings(prompt=args.prompt, max_new_tokens=args.max_new_tokens, num_beams=args.beams,
                           device=args.device, dtype=args.dtype, merge=args.merge, quantize=args.quantize,
                           batch_size=args.batch_size, fast=args.fast)


def captioner_from_args(args: argparse.Namespace) -> Any:
    """The torch Captioner, or the ONNX Runtime one for an exported folder (runtime/captioners.py)."""
    return load_captioner(args.model, settings_from_args(args), adapter=args.adapter, revision=args.revision)
