"""`blip-lora bag`: work with ROS 2 recordings (no ROS needed): extract frames, caption a recording."""

from __future__ import annotations

import argparse
from pathlib import Path

from blip_lora_core.errors import ConfigError

from ._model_args import add_model_args, captioner_from_args

BAG_HELP = ("bag folder (with or without metadata.yaml: a recording that was not closed reads as far as it is "
            "intact), or one .db3 or .mcap file, compressed as .zstd or not")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bag", help="extract frames from / caption ROS 2 bags (.db3, .mcap or bag folders)",
        description="Work with ROS 2 bags without ROS: sqlite3 (.db3) and mcap storage, as a bag folder "
                    "(metadata.yaml) or a single file.")
    actions = parser.add_subparsers(dest="bag_command", required=True, metavar="ACTION")
    _register_extract(actions)
    _register_caption(actions)


def _register_extract(actions: argparse._SubParsersAction) -> None:
    parser = actions.add_parser(
        "extract", help="write camera frames as a dataset folder to label",
        description="Write frames of an Image/CompressedImage topic as JPEGs (quality 95) plus an "
                    "annotations.jsonl in the format `train` reads. Captions are empty (\"text\": \"\") "
                    "unless --precaption fills them; every row has \"reviewed\": false. `train` refuses "
                    "empty captions: write or correct them first.")
    parser.add_argument("bag", type=Path, help=BAG_HELP)
    _add_topic(parser)
    parser.add_argument("--out", type=Path, required=True, help="dataset folder to create")
    parser.add_argument("--every", type=float, default=0.0,
                        help="keep at most one frame per this many seconds of header stamp (default 0: all)")
    parser.add_argument("--dedup-threshold", type=float, default=None, metavar="X",
                        help="skip a frame whose 32x32 grayscale thumbnail differs from the last kept "
                             "frame by a mean absolute value (0-255) below X")
    parser.add_argument("--precaption", action="store_true",
                        help="fill the captions with --model/--adapter so a person corrects instead of typing")
    parser.add_argument("--force", action="store_true",
                        help="replace --out if it exists (only a folder holding an annotations.jsonl)")
    _add_strict(parser)
    add_model_args(parser)
    parser.set_defaults(func=run_extract)


def _register_caption(actions: argparse._SubParsersAction) -> None:
    parser = actions.add_parser(
        "caption", help="caption a recording with the node's pipeline; captions as a bag or JSONL",
        description="Run the captioner node's own pipeline (newest frame, rate limit) over a recording. "
                    "By default as fast as possible and deterministic: a clock following the bag's receive "
                    "times applies the rate limit in bag time. --realtime plays the messages at their "
                    "recorded pace into the node's worker thread instead.")
    parser.add_argument("bag", type=Path, help=BAG_HELP)
    _add_topic(parser)
    parser.add_argument("--out", type=Path, required=True,
                        help="captions.jsonl ({stamp, image_stamp, caption} per line), a .mcap or .db3 file, "
                             "or a bag folder: std_msgs/String messages at the bag time each caption would "
                             "be published, to replay beside the camera")
    parser.add_argument("--max-rate-hz", type=float, default=0.0,
                        help="at most this many captions per second of bag time (default 0: unlimited)")
    parser.add_argument("--realtime", action="store_true", help="play the bag at its recorded speed")
    parser.add_argument("--on-change", action="store_true",
                        help="publish a caption only when it differs from the last one (like the node)")
    parser.add_argument("--caption-topic", default="/caption", help="topic of the output bag (default /caption)")
    parser.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap",
                        help="storage of an output bag folder (default mcap; .mcap/.db3 files choose by suffix)")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists")
    _add_strict(parser)
    add_model_args(parser)
    parser.set_defaults(func=run_caption)


def _add_topic(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--topic", default="/camera/image_raw",
                        help="sensor_msgs/Image or CompressedImage topic (default /camera/image_raw)")


def _add_strict(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--strict", action="store_true",
                        help="fail on an undecodable frame (default: skip it, count it and warn)")


def run_extract(args: argparse.Namespace) -> int:
    from blip_lora_core.bags.extract import (  # the [bags] extra
        ExtractOptions,
        Precaption,
        check_extract_output,
        extract_frames,
    )
    from blip_lora_core.bags.reader import check_camera_topic

    options = ExtractOptions(args.topic, every=args.every, dedup_threshold=args.dedup_threshold,
                             strict=args.strict)
    precaption = None
    if args.precaption:  # fail fast, before loading the model
        check_extract_output(args.bag, args.out, args.force)
        check_camera_topic(args.bag, args.topic)
        captioner = captioner_from_args(args)
        meta = {"model": args.model, "adapter": args.adapter, "prompt": args.prompt}
        precaption = Precaption(captioner.caption, batch_size=args.batch_size, meta=meta)
    report = extract_frames(args.bag, args.out, options, force=args.force, precaption=precaption)
    print(f"wrote {report.kept} frames of {report.messages} messages on {args.topic} to {report.out} "
          f"(skipped: {report.skipped_every} by --every, {report.skipped_duplicate} near-duplicates, "
          f"{report.bad_frames} undecodable)")
    if not args.precaption:
        print(f"captions are empty: write them in {report.out / 'annotations.jsonl'} before training")
    return 0


def run_caption(args: argparse.Namespace) -> int:
    from blip_lora_core.bags.caption import ReplayOptions, check_caption_output, replay_captions, write_captions
    from blip_lora_core.bags.reader import check_camera_topic  # the [bags] extra

    if not args.max_rate_hz >= 0:
        raise ConfigError(f"--max-rate-hz must be >= 0, got {args.max_rate_hz}")
    options = ReplayOptions(args.topic, max_rate_hz=args.max_rate_hz, publish_on_change_only=args.on_change,
                            realtime=args.realtime, strict=args.strict)
    check_caption_output(args.out, args.force, args.bag)  # fail fast, before loading the model
    check_camera_topic(args.bag, args.topic)
    captioner = captioner_from_args(args)
    captions, report = replay_captions(args.bag, lambda image: captioner.caption([image])[0], options)
    write_captions(args.out, captions, source=args.bag, topic=args.caption_topic, storage=args.storage,
                   force=args.force)
    repeats = f"{report.unchanged} repeats of the last caption not published (--on-change), " if args.on_change else ""
    print(f"wrote {report.captions} captions of {report.messages} frames on {args.topic} to {args.out} "
          f"({report.dropped} replaced by newer frames, {repeats}{report.decode_errors} undecodable, "
          f"{report.inference_errors} model failures)")
    if report.first_error:
        print(f"first failure: {report.first_error}")
    return 0
