"""`blip-lora bag`: work with ROS 2 recordings (no ROS needed): extract frames, caption a recording."""

from __future__ import annotations

import argparse
from pathlib import Path

from blip_lora_core.bags.options import ExtractOptions, ReplayOptions

from ._model_args import add_model_args, captioner_from_args
from ._settings_args import add_settings_flags, given


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
        description="Write frames of an Image/CompressedImage topic as JPEGs plus an "
                    "annotations.jsonl in the format `train` reads. Captions are empty (\"text\": \"\") "
                    "unless --precaption fills them; every row has \"reviewed\": false. `train` refuses "
                    "empty captions: write or correct them first.")
    parser.add_argument("bag", type=Path, help="bag folder, .db3 or .mcap file")
    parser.add_argument("--out", type=Path, required=True, help="dataset folder to create")
    parser.add_argument("--precaption", action="store_true",
                        help="fill the captions with --model/--adapter so a person corrects instead of typing")
    parser.add_argument("--force", action="store_true",
                        help="replace --out if it exists (only a folder holding an annotations.jsonl)")
    parser.set_defaults(func=run_extract, options=add_settings_flags(parser, ExtractOptions))
    add_model_args(parser)


def _register_caption(actions: argparse._SubParsersAction) -> None:
    parser = actions.add_parser(
        "caption", help="caption a recording with the node's pipeline; captions as a bag or JSONL",
        description="Run the captioner node's own pipeline (newest frame, rate limit) over a recording. "
                    "By default as fast as possible and deterministic: a clock following the bag's receive "
                    "times applies the rate limit in bag time. --realtime plays the messages at their "
                    "recorded pace into the node's worker thread instead.")
    parser.add_argument("bag", type=Path, help="bag folder, .db3 or .mcap file")
    parser.add_argument("--out", type=Path, required=True,
                        help="captions.jsonl ({stamp, image_stamp, caption} per line), a .mcap or .db3 file, "
                             "or a bag folder: std_msgs/String messages at the bag time each caption would "
                             "be published, to replay beside the camera")
    parser.add_argument("--caption-topic", default="/caption", help="topic of the output bag (default /caption)")
    parser.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap",
                        help="storage of an output bag folder (default mcap; .mcap/.db3 files choose by suffix)")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists")
    parser.set_defaults(func=run_caption, options=add_settings_flags(parser, ReplayOptions))
    add_model_args(parser)


def run_extract(args: argparse.Namespace) -> int:
    from blip_lora_core.bags.extract import Precaption, check_extract_output, extract_frames  # the [bags] extra
    from blip_lora_core.bags.reader import check_camera_topic

    options = ExtractOptions(**given(args, args.options))
    precaption = None
    if args.precaption:  # fail fast, before loading the model
        check_extract_output(args.bag, args.out, args.force)
        check_camera_topic(args.bag, options.topic)
        captioner = captioner_from_args(args)
        meta = {"model": args.model, "adapter": args.adapter, "prompt": captioner.prompt}
        precaption = Precaption(captioner.caption, batch_size=captioner.settings.batch_size, meta=meta)
    report = extract_frames(args.bag, args.out, options, force=args.force, precaption=precaption)
    print(f"wrote {report.kept} frames of {report.messages} messages on {options.topic} to {report.out} "
          f"(skipped: {report.skipped_every} by --every, {report.skipped_duplicate} near-duplicates, "
          f"{report.bad_frames} undecodable)")
    if not args.precaption:
        print(f"captions are empty: write them in {report.out / 'annotations.jsonl'} before training")
    return 0


def run_caption(args: argparse.Namespace) -> int:
    from blip_lora_core.bags.caption import check_caption_output, replay_captions, write_captions  # [bags] extra
    from blip_lora_core.bags.reader import check_camera_topic

    options = ReplayOptions(**given(args, args.options))
    check_caption_output(args.out, args.force, args.bag)  # fail fast, before loading the model
    check_camera_topic(args.bag, options.topic)
    captioner = captioner_from_args(args)
    captions, report = replay_captions(args.bag, lambda image: captioner.caption([image])[0], options)
    write_captions(args.out, captions, source=args.bag, topic=args.caption_topic, storage=args.storage,
                   force=args.force)
    print(f"wrote {report.captions} captions of {report.messages} frames on {options.topic} to {args.out} "
          f"({report.dropped} replaced by newer frames, {report.decode_errors} undecodable, "
          f"{report.inference_errors} model failures)")
    if report.first_error:
        print(f"first failure: {report.first_error}")
    return 0
