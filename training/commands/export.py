"""`blip-lora export`: a merged model folder (save_pretrained), a peft adapter folder, or an ONNX folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from blip_lora_core.errors import ConfigError
from blip_lora_core.models.caption_settings import BLIP_LARGE

FORMATS = ("merged", "peft", "onnx")


def register(subparsers) -> None:
    parser = subparsers.add_parser("export", help="export an adapter as a merged model, a peft adapter or ONNX",
                                   description="merged: base model with the adapter folded into its weights, "
                                               "saved with save_pretrained (loads anywhere, no blip-lora needed). "
                                               "peft: adapter_config.json + adapter_model.safetensors. "
                                               "onnx: the model (adapter merged) as ONNX graphs with tokenizer, "
                                               "preprocessing and manifest, for ONNX Runtime without torch "
                                               "(blip-lora caption --model OUT).")
    parser.add_argument("--adapter", default=None, help="LoRA adapter file (.safetensors); optional for onnx")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--format", choices=FORMATS, default="merged")
    parser.add_argument("--model", default=BLIP_LARGE, help="base model (for --format merged and onnx)")
    parser.add_argument("--revision", default=None)
    parser.add_argument("--dtype", default="fp32",
                        help="weights dtype of the merged model; onnx: fp32 or fp16 (for GPUs)")
    parser.add_argument("--quantize", default=None, choices=("int8",),
                        help="onnx: int8 dynamic quantization of the fp32 graphs (for CPUs)")
    parser.add_argument("--opset", type=int, default=None, help="onnx: the ONNX opset (default 17)")
    parser.add_argument("--force", action="store_true", help="onnx: replace an ONNX export already in --out")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no progress bars (transformers' weight-loading bar included)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if args.format == "onnx":
        return _onnx(args, out)
    if args.quantize or args.opset or args.force:
        raise ConfigError("--quantize, --opset and --force are options of --format onnx")
    if not args.adapter:
        raise ConfigError(f"--format {args.format} needs --adapter")
    if args.format == "peft":
        from blip_lora_core.lora.peft_interop import export_peft

        export_peft(args.adapter, out)
        print(f"peft adapter: {out}")
        return 0
    from blip_lora_core.lora.adapter_io import load_adapter
    from blip_lora_core.lora.hooks import remove_lora
    from blip_lora_core.models.loading import load_blip, save_bundle

    bundle = load_blip(args.model, dtype=args.dtype, device="cpu", revision=args.revision)
    load_adapter(bundle.model, args.adapter)
    remove_lora(bundle.model, keep_merged=True)
    save_bundle(bundle, out)
    print(f"merged model: {out}")
    return 0


def _onnx(args: argparse.Namespace, out: Path) -> int:
    from blip_lora_core.export.onnx_export import DEFAULT_OPSET, export_onnx  # the [onnx] extra

    manifest = export_onnx(args.model, out, adapter=args.adapter, revision=args.revision, dtype=args.dtype,
                           quantize=args.quantize, opset=args.opset or DEFAULT_OPSET, force=args.force)
    size = sum(entry["bytes"] for entry in manifest.files.values())
    adapter = f" + {manifest.adapter} (sha256 {manifest.adapter_sha256[:12]})" if manifest.adapter else ""
    print(f"onnx export: {out} ({size / 2**20:.1f} MiB; {manifest.base_model}{adapter}; {manifest.dtype}, "
          f"quantize {manifest.quantize or 'none'}, opset {manifest.opset}; checked with onnx.checker)")
    return 0
