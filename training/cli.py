"""Entry point of the `blip-lora` command line: one parser, one module per subcommand."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from blip_lora_core.errors import BlipLoraError
from blip_lora_core.models.loading import disable_progress_bars

# Each module in training/commands/ defines `register(subparsers)`, which adds its parser and sets
# `func=run`, where `run(args) -> int`. Registering needs only the base install; a command's run()
# imports what its extra brings.
COMMAND_MODULES = ("train", "caption", "eval", "export", "synth", "bag", "label")
# top-level module -> the pip extra that installs it
EXTRA_OF_MODULE = {"pycocoevalcap": "train", "matplotlib": "train", "tqdm": "train", "rosbags": "bags"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="blip-lora",
        description="Fine-tune BLIP image captioning with hook-based LoRA adapters, and use them.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"blip_lora_training.commands.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    if getattr(args, "progress", None) is False:
        disable_progress_bars()
    try:
        return int(args.func(args) or 0)
    except ModuleNotFoundError as error:
        package = (error.name or "").partition(".")[0]
        extra = EXTRA_OF_MODULE.get(package)
        if extra is None:
            raise
        print(f"blip-lora {args.command}: error: this command needs the [{extra}] extra ({package} is not "
              f"installed): pip install 'blip-lora[{extra}]'", file=sys.stderr)
        return 2
    except BlipLoraError as error:
        print(f"blip-lora {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        detail = f": {interrupt}" if str(interrupt) else ""
        print(f"blip-lora {args.command}: interrupted{detail}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
