"""Command-line options shared by the commands that load a model for captioning."""

from __future__ import annotations

import argparse

from blip_lora_core.models.captioning import Captioner
from blip_lora_core.models.loading import BLIP_LARGE


def add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=BLIP_LARGE, help="hub id or local folder of the base model")
    parser.add_argument("--revision", default=None, help="hub revision to pin the model to")
    parser.add_argument("--adapter", default=None, help="LoRA adapter file (.safetensors); none: zero-shot")
    parser.add_argument("--merge", action=argparse.BooleanOptionalAction, default=True,
                        help="fold the adapter into the weights (no overhead) instead of running it as hooks")
    parser.add_argument("--prompt", default=None, help='text prompt, e.g. "a picture of" (stripped from output)')
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward pass")
    parser.add_argument("--beams", type=int, default=1, help="beam search width (1: greedy)")
    parser.add_argument("--max-new-tokens", type=int, default=30, help="caption length limit")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when present)")
    parser.add_argument("--dtype", default=None, help="fp32, fp16, bf16 (default: fp16 on GPU, fp32 on CPU)")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no progress bars (transformers' weight-loading bar included)")


def captioner_from_args(args: argparse.Namespace) -> Captioner:
    return Captioner.from_pretrained(
        args.model, adapter=args.adapter, device=args.device, dtype=args.dtype, merge_adapter=args.merge,
        prompt=args.prompt, max_new_tokens=args.max_new_tokens, num_beams=args.beams, revision=args.revision,
        batch_size=args.batch_size)
