"""`blip-lora synth`: write a synthetic toy-cube dataset in the seed_blocks format."""

from __future__ import annotations

import argparse
from pathlib import Path

from blip_lora_training import synth


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "synth",
        help="render a synthetic toy-cube dataset",
        description="Render toy-cube scenes and write images/ plus annotations.jsonl (seed_blocks format).",
    )
    parser.add_argument("--out", type=Path, required=True, help="dataset folder to write (replaced atomically)")
    parser.add_argument("-n", "--count", type=int, default=500, help="number of images (default 500)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--domain", choices=sorted(synth.DOMAINS), default="table", help="camera/light/table")
    parser.add_argument("--colours", type=_colours, default=synth.DEFAULT_COLOURS,
                        help=f"comma-separated cube colours (default {','.join(synth.DEFAULT_COLOURS)}; "
                             f"known: {','.join(synth.COLOURS)})")
    parser.add_argument("--max-stack", type=int, default=2, help="tallest stack (default 2)")
    parser.add_argument("--size", type=_size, default=(160, 120), help="image size WxH (default 160x120)")
    parser.add_argument("--holdout", type=_pairs, default=(),
                        help="held-out top/bottom pairs, e.g. red/blue,green/red")
    parser.add_argument("--only-holdout", action="store_true",
                        help="write only the stacks that contain a held-out pair (the test split)")
    parser.add_argument("--format", choices=("png", "jpg"), default="png", help="image format (default png)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    jsonl = synth.write_dataset(
        args.out, args.count, seed=args.seed, domain=args.domain, colours=args.colours,
        max_stack=args.max_stack, holdout_pairs=args.holdout, only_pairs=args.only_holdout,
        size=args.size, image_format=args.format,
    )
    scenes = synth.select_scenes(args.colours, args.max_stack, args.holdout, args.only_holdout)
    print(f"wrote {args.count} images of {len(scenes)} scenes (domain {args.domain}, "
          f"{args.size[0]}x{args.size[1]}) to {jsonl}")
    return 0


def _colours(text: str) -> tuple[str, ...]:
    colours = tuple(c.strip() for c in text.split(",") if c.strip())
    unknown = [c for c in colours if c not in synth.COLOURS]
    if not colours or unknown:
        raise argparse.ArgumentTypeError(f"unknown colour(s) {unknown}; known: {','.join(synth.COLOURS)}")
    return colours


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"size must look like 160x120, got {text!r}") from error
    return width, height


def _pairs(text: str) -> tuple[tuple[str, str], ...]:
    pairs = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        parts = item.split("/")
        if len(parts) != 2 or any(p not in synth.COLOURS for p in parts):
            raise argparse.ArgumentTypeError(f"holdout pairs look like red/blue (top/bottom), got {item!r}")
        pairs.append((parts[0], parts[1]))
    return tuple(pairs)
