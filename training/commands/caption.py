"""`blip-lora caption`: caption image files, folders or globs; JSONL or CSV out."""

from __future__ import annotations

import argparse
import csv
import glob
import io
import sys
from pathlib import Path

from blip_lora_core.atomic import atomic_write_text, jsonl_text
from blip_lora_core.errors import DataError

from ._model_args import add_model_args, captioner_from_args

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def register(subparsers) -> None:
    parser = subparsers.add_parser("caption", help="caption images with a base model and optional adapter",
                                   description="Caption images. Without --adapter the base model runs zero-shot.")
    parser.add_argument("inputs", nargs="+", help="image files, folders (searched recursively) or glob patterns")
    add_model_args(parser)
    parser.add_argument("--out", default=None, help="output file, .jsonl or .csv (default: JSONL on stdout)")
    parser.set_defaults(func=run)


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Files, folders and globs -> sorted unique image paths; DataError when something matches nothing."""
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            matches = [p for p in sorted(path.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES]
        elif path.is_file():
            matches = [path]
        else:
            matches = [Path(p) for p in sorted(glob.glob(item, recursive=True))
                       if Path(p).suffix.lower() in IMAGE_SUFFIXES]
        if not matches:
            raise DataError(f"{item}: no images found")
        found.extend(matches)
    return list(dict.fromkeys(found))


def run(args: argparse.Namespace) -> int:
    paths = expand_inputs(args.inputs)
    captioner = captioner_from_args(args)
    captions = captioner.caption_files(paths)
    rows = [{"image": str(path), "caption": caption} for path, caption in zip(paths, captions, strict=True)]
    text = _format(rows, args.out)
    if args.out:
        atomic_write_text(args.out, text)
        print(f"wrote {len(rows)} captions to {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _format(rows: list[dict], out: str | None) -> str:
    if out and out.lower().endswith(".csv"):
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=["image", "caption"])
        writer.writeheader()
        writer.writerows(rows)
        return buffer.getvalue()
    return jsonl_text(rows)
