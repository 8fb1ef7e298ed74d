"""`blip-lora label`: order frames least-confident first, push them to Label Studio, pull the reviewed captions.

push and pull need only the standard library (urllib); order loads a model like `caption` does.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from blip_lora_core.errors import ConfigError, DataError
from blip_lora_core.labelling.order import DEFAULT_DUPLICATE_THRESHOLD

from ._model_args import add_model_args, captioner_from_args

DEFAULT_URL = "http://localhost:8080"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "label", help="label frames in Label Studio: order least-confident first, push, pull",
        description="Label a dataset's frames in Label Studio: `order` pre-captions them least-confident first, "
                    "`push` makes them tasks with the pre-captions as predictions, `pull` writes the reviewed "
                    "captions back as a dataset JSONL.")
    actions = parser.add_subparsers(dest="label_command", required=True, metavar="ACTION")
    _register_order(actions)
    _register_push(actions)
    _register_pull(actions)


def _register_order(actions: argparse._SubParsersAction) -> None:
    parser = actions.add_parser(
        "order", help="pre-caption frames and sort them least-confident first, near-duplicates collapsed",
        description="Caption every frame not yet reviewed with --model/--adapter and write them least-confident "
                    "first (the confidence the node publishes), with the caption as \"text\", the confidence "
                    "under \"precaption\" and \"reviewed\": false. Rows with \"reviewed\": true are left out. "
                    "Of frames that look almost the same only the least confident is kept.")
    parser.add_argument("data", type=Path, help="dataset JSONL (captions may be empty), e.g. from `bag extract`")
    parser.add_argument("--out", type=Path, required=True, help="JSONL to write, in labelling order")
    parser.add_argument("--duplicate-threshold", type=float, default=DEFAULT_DUPLICATE_THRESHOLD, metavar="X",
                        help="collapse a frame whose 16x16 RGB thumbnail differs from a kept frame's by a mean "
                             f"absolute value (0-255) below X (default {DEFAULT_DUPLICATE_THRESHOLD:g}; 0: keep all)")
    parser.add_argument("--limit", type=int, default=0, help="write only the first N frames (default 0: all)")
    add_model_args(parser)
    parser.set_defaults(func=run_order)


def _add_server(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=os.environ.get("LABEL_STUDIO_URL", DEFAULT_URL),
                        help=f"Label Studio server (default: $LABEL_STUDIO_URL or {DEFAULT_URL})")
    parser.add_argument("--token", default=os.environ.get("LABEL_STUDIO_API_KEY", ""),
                        help="personal access token or legacy token (default: $LABEL_STUDIO_API_KEY)")


def _register_push(actions: argparse._SubParsersAction) -> None:
    parser = actions.add_parser(
        "push", help="make the frames Label Studio tasks, pre-captions as predictions",
        description="Create (or update) the project --project with a captioning config (image + text area) and "
                    "import the dataset's frames in file order, each row's caption as a prediction (model "
                    "version: the adapter; score: the confidence), so a labeller corrects instead of typing. "
                    "Frames already in the project are not imported again.")
    parser.add_argument("data", type=Path, help="dataset JSONL, e.g. from `label order` or `bag extract`")
    parser.add_argument("--project", required=True, help="project title (created when there is none)")
    _add_server(parser)
    parser.set_defaults(func=run_push)


def _register_pull(actions: argparse._SubParsersAction) -> None:
    parser = actions.add_parser(
        "pull", help="write the reviewed captions of a project (or a JSON export) as a dataset JSONL",
        description="Write one row per reviewed task, its image path pointing at the local frame. Skipped or "
                    "cancelled and unlabelled tasks are left out and counted. Of several annotations on a task "
                    "a ground-truth one wins, else the most recently updated one.")
    parser.add_argument("--project", default=None, help="project title (with --url and --token)")
    parser.add_argument("--from-export", type=Path, default=None, metavar="EXPORT.json",
                        help="read a Label Studio JSON export file instead of the server")
    parser.add_argument("--out", type=Path, required=True, help="dataset JSONL to write")
    _add_server(parser)
    parser.set_defaults(func=run_pull)


def run_order(args: argparse.Namespace) -> int:
    from blip_lora_core.atomic import write_jsonl
    from blip_lora_core.labelling.order import order_rows
    from blip_lora_core.train.data import read_jsonl

    if args.limit < 0 or not args.duplicate_threshold >= 0:
        raise ConfigError("--limit and --duplicate-threshold must be >= 0")
    _check_not_input(args.out, args.data)
    samples, _ = read_jsonl(args.data, require_text=False)
    captioner = captioner_from_args(args)
    meta = {"model": args.model, "adapter": args.adapter, "prompt": args.prompt}
    rows, report = order_rows(samples, captioner, meta, relative_to=args.out.absolute().parent,
                              threshold=args.duplicate_threshold, limit=args.limit)
    write_jsonl(args.out, rows)
    print(f"wrote {report.written} frames to {args.out}, least confident first (of {report.frames}: "
          f"{report.reviewed} already reviewed, {report.duplicates} near-duplicates collapsed)")
    if rows:
        print(f"confidence {rows[0]['precaption']['confidence']:.3f} (first) to "
              f"{rows[-1]['precaption']['confidence']:.3f} (last)")
    return 0


def run_push(args: argparse.Namespace) -> int:
    from blip_lora_core.labelling.roundtrip import push, read_frames
    from blip_lora_core.labelling.studio import LabelStudio

    client = LabelStudio(args.url, args.token)
    frames = read_frames(args.data)
    report = push(client, args.project, frames)
    print(report.summary())
    return 0


def run_pull(args: argparse.Namespace) -> int:
    from blip_lora_core.labelling.roundtrip import pull, pull_project
    from blip_lora_core.labelling.studio import LabelStudio
    from blip_lora_core.labelling.tasks import check_export

    if (args.project is None) == (args.from_export is None):
        raise ConfigError("give either --project (pull from the server) or --from-export EXPORT.json")
    if args.from_export is not None:
        _check_not_input(args.out, args.from_export)
        report = pull(check_export(_read_json(args.from_export), str(args.from_export)), args.out)
    else:
        report = pull_project(LabelStudio(args.url, args.token), args.project, args.out)
    print(f"wrote {args.out}: {report.summary()}")
    return 0


def _check_not_input(out: Path, given: Path) -> None:
    """ConfigError when --out would overwrite the input: inputs are never modified."""
    if out.absolute().resolve() == given.absolute().resolve():
        raise ConfigError(f"--out {out} is the input file: write somewhere else")


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise DataError(f"{path}: cannot read: {error.strerror or error}") from None
    except (ValueError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: not valid JSON ({' '.join(str(error).split())[:200]})") from None
