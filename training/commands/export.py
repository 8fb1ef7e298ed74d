"""`blip-lora export`: a merged model folder (save_pretrained) or a peft adapter folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from blip_lora_core.lora.adapter_io import load_adapter
from blip_lora_core.lora.hooks import remove_lora
from blip_lora_core.lora.peft_interop import export_peft
from blip_lora_core.models.caption_settings import BLIP_LARGE
from blip_lora_core.models.loading import load_blip, save_bundle


def register(subparsers) -> None:
    parser = subparsers.add_parser("export", help="export an adapter as a merged model or a peft adapter",
                                   description="merged: base model with the adapter folded into its weights, "
                                               "saved with save_pretrained (loads anywhere, no blip-lora needed). "
                                               "peft: adapter_config.json + adapter_model.safetensors.")
    parser.add_argument("--adapter", required=True, help="LoRA adapter file (.safetensors)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--format", choices=["merged", "peft"], default="merged")
    parser.add_argument("--model", default=BLIP_LARGE, help="base model (for --format merged)")
    parser.add_argument("--revision", default=None)
    parser.add_argument("--dtype", default="fp32", help="weights dtype of the merged model")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if args.format == "peft":
        export_peft(args.adapter, out)
        print(f"peft adapter: {out}")
        return 0
    bundle = load_blip(args.model, dtype=args.dtype, device="cpu", revision=args.revision)
    load_adapter(bundle.model, args.adapter)
    remove_lora(bundle.model, keep_merged=True)
    save_bundle(bundle, out)
    print(f"merged model: {out}")
    return 0
