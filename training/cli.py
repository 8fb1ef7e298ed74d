"""Entry point of the `blip-lora` command line: one parser, one module per subcommand."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from blip_lora_core.errors import BlipLoraError

# Each module in training/commands/ defines `register(subparsers)`, which adds its parser and sets
# `func=run`, where `run(args) -> int`.
COMMAND_MODULES = ("train", "caption", "eval", "export", "synth", "bag")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="blip-lora",
        description="Fine-tune BLIP image captioning with hook-based LoRA adapters, and use them.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"blip_lora_training.commands.{name}")
        except ModuleNotFoundError as error:
            if error.name != f"blip_lora_training.commands.{name}":
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    try:
        return int(args.func(args) or 0)
    except BlipLoraError as error:
        print(f"blip-lora {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        detail = f": {interrupt}" if str(interrupt) else ""
        print(f"blip-lora {args.command}: interrupted{detail}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
