"""Entry point of the `blip-lora` command line: one parser, one module per subcommand."""

from __future__ import annotations

import argparse
import functools
import importlib
import importlib.metadata
import logging
import os
import re
import sys
import traceback

from blip_lora_core.errors import BlipLoraError

# Each module in training/commands/ defines `register(subparsers)`, which adds its parser and sets
# `func=run`, where `run(args) -> int`. Registering needs only the base install; a command's run()
# imports what its extra brings. A command line that names its command imports that command's module
# only, so `blip-lora caption --model EXPORT` runs where torch is not installed.
COMMAND_MODULES = ("train", "caption", "eval", "export", "synth", "bag", "label")
DEV_EXTRAS = ("test",)  # extras for developing blip-lora, not for running a command
_EXTRA_REQUIREMENT = re.compile(r"""([A-Za-z0-9][A-Za-z0-9._-]*).*;\s*extra\s*==\s*["']([^"']+)["']""")


@functools.cache
def extra_of_module() -> dict[str, str]:
    """Top-level module -> the pip extra that installs it, read from the installed package's metadata (the
    extras are written once, in pyproject.toml). Module names are the distribution names in lower case
    with - as _ (true of every extra's dependency)."""
    found = {}
    for requirement in importlib.metadata.requires("blip-lora") or []:
        match = _EXTRA_REQUIREMENT.match(requirement)
        if match and match[2] not in DEV_EXTRAS:
            found[match[1].lower().replace("-", "_")] = match[2]
    return found


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or of the command ``only`` alone."""
    parser = argparse.ArgumentParser(
        prog="blip-lora",
        description="Fine-tune BLIP image captioning with hook-based LoRA adapters, and use them.",
    )
    parser.add_argument("-v", "--verbose", "--debug", dest="verbose", action="store_true",
                        help="log debug messages; on an error, also print the traceback with its causes")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES if only not in COMMAND_MODULES else (only,):
        importlib.import_module(f"blip_lora_training.commands.{name}").register(subparsers)
    return parser


def _quiet_progress_bars() -> None:
    """No progress bars from transformers (its weight-loading bar) or huggingface_hub, whether they are imported
    yet or not (the ONNX path imports neither)."""
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # read when huggingface_hub is imported
    if {"transformers", "huggingface_hub"} & set(sys.modules):  # imported already: switch them off
        from blip_lora_core.models.loading import disable_progress_bars

        disable_progress_bars()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    args = build_parser(command).parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    if getattr(args, "progress", None) is False:
        _quiet_progress_bars()
    try:
        return int(args.func(args) or 0)
    except ModuleNotFoundError as error:
        package = (error.name or "").partition(".")[0]
        extra = extra_of_module().get(package)
        if extra is None:
            raise
        print(f"blip-lora {args.command}: error: this command needs the [{extra}] extra ({package} is not "
              f"installed): pip install 'blip-lora[{extra}]'", file=sys.stderr)
        return 2
    except BlipLoraError as error:
        if args.verbose:  # the whole chain: what went wrong underneath (a YAML parser's, safetensors' error)
            traceback.print_exception(error, file=sys.stderr)
        print(f"blip-lora {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        detail = f": {interrupt}" if str(interrupt) else ""
        print(f"blip-lora {args.command}: interrupted{detail}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
