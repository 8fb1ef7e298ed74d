"""`blip-lora eval`: caption a JSONL dataset and score it (exact match, BLEU-4, CIDEr), with a gallery."""

from __future__ import annotations

import argparse
import json

from blip_lora_core.atomic import atomic_write_text
from blip_lora_core.train.config import TrainConfig
from blip_lora_core.train.data import read_jsonl

from ._model_args import add_model_args, captioner_from_args
from ._settings_args import add_settings_flags


def register(subparsers) -> None:
    parser = subparsers.add_parser("eval", help="score captions against a JSONL dataset",
                                   description="Caption every image of a JSONL dataset and score the captions.")
    parser.add_argument("data", help="JSONL dataset with reference captions")
    add_model_args(parser)
    add_settings_flags(parser, TrainConfig, only=("group_references",))
    parser.add_argument("--gallery", default=None, help="write an HTML page of images, references and captions")
    parser.add_argument("--out", default=None, help="write metrics and predictions as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from blip_lora_core.train.gallery import GalleryRow, write_gallery  # the [train] extra
    from blip_lora_core.train.metrics import caption_metrics, references_by_class

    samples, _ = read_jsonl(args.data)
    captioner = captioner_from_args(args)
    predictions = captioner.caption_files([s.image for s in samples])
    references = references_by_class(samples) if args.group_references else [[s.text] for s in samples]
    metrics = caption_metrics(predictions, references)
    print(f"exact match {metrics['exact_match']:.3f}  BLEU-4 {metrics['bleu4']:.3f}  "
          f"CIDEr {metrics['cider']:.3f}  ({metrics['count']} images)")
    if args.gallery:
        rows = [GalleryRow(s.image, refs, {"prediction": p})
                for s, refs, p in zip(samples, references, predictions, strict=True)]
        print(f"gallery: {write_gallery(args.gallery, rows)}")
    if args.out:
        details = [{"image": s.image_as_written, "references": r, "prediction": p}
                   for s, r, p in zip(samples, references, predictions, strict=True)]
        atomic_write_text(args.out, json.dumps({"metrics": metrics, "predictions": details}, indent=2))
    return 0
