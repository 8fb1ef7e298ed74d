"""LoRA from the demo's synthetic tiny base to the real seed_blocks photos: exact match, BLEU-4, CIDEr, time.

Frames 1-128 of each of the seven scenes train, frames 129-160 validate (consecutive frames are near
duplicates, so the split is by frame number, never random). The five empty-table phrasings count as one
class (``group_references``). The base is the demo's cached base (built when missing); its vocabulary
includes every seed_blocks word, which is checked before training.

    python -m bench.seed_blocks_experiment [--base-out demo_out] [--out runs/seed_blocks] [--text-qv]
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
import time
from dataclasses import replace
from pathlib import Path

from blip_lora_core.atomic import write_jsonl
from blip_lora_core.errors import ConfigError
from blip_lora_core.lora.adapter_io import load_adapter
from blip_lora_core.lora.hooks import DEFAULT_TARGETS
from blip_lora_core.models.loading import load_blip
from blip_lora_core.train.config import TrainConfig
from blip_lora_core.train.data import Sample, read_jsonl, sample_to_row
from blip_lora_core.train.loop import evaluate, predict, train
from blip_lora_core.train.metrics import caption_metrics, references_by_class
from blip_lora_training import demo

from .common import SEED_BLOCKS

TRAIN_FRAMES = range(1, 129)
VAL_FRAMES = range(129, 161)
TEXT_QV = r"text_decoder\..*\.(query|value)"
_FRAME = re.compile(r"_(\d+)$")


def frame_number(sample: Sample) -> int:
    """The frame number at the end of the file stem: image_train/blue_0129.jpg -> 129."""
    found = _FRAME.search(sample.image.stem)
    if not found:
        raise ConfigError(f"{sample.image}: no frame number in the file name")
    return int(found.group(1))


def write_split(data: Path, folder: Path) -> tuple[Path, Path]:
    """folder/train.jsonl (frames 1-128) and folder/val.jsonl (129-160), image paths relative to folder."""
    samples, _ = read_jsonl(data / "annotations.jsonl", check_images=False)
    paths = []
    for name, frames in (("train", TRAIN_FRAMES), ("val", VAL_FRAMES)):
        rows = [sample_to_row(s, relative_to=folder) for s in samples if frame_number(s) in frames]
        paths.append(folder / f"{name}.jsonl")
        write_jsonl(paths[-1], rows)
    return paths[0], paths[1]


def check_vocabulary(model: Path, captions: list[str]) -> None:
    """ConfigError naming the captions with words outside the base's vocabulary (they would be [UNK])."""
    tokenizer = load_blip(str(model), device="cpu").tokenizer
    unknown = [c for c in captions if tokenizer.unk_token_id in tokenizer(c)["input_ids"]]
    if unknown:
        raise ConfigError(f"{model}: vocabulary lacks words of {sorted(set(unknown))}; rebuild the base")


def run(args: argparse.Namespace) -> dict:
    """Build or reuse the base, write the split, LoRA-train, validate; returns the results."""
    out = Path(args.out)
    began = time.perf_counter()
    settings = replace(demo.DemoSettings(), progress=not args.no_progress, threads=args.threads)
    base = demo.pretrain_base(args.base_out, settings)
    base_seconds = time.perf_counter() - began
    train_file, val_file = write_split(Path(args.data), out / "data")
    train_samples, val = read_jsonl(train_file)[0], read_jsonl(val_file)[0]
    check_vocabulary(base, sorted({s.text for s in train_samples + val}))
    targets = list(DEFAULT_TARGETS) + ([TEXT_QV] if args.text_qv else [])
    config = TrainConfig(model=str(base), train_file=str(train_file), val_file=str(val_file),
                         output_dir=str(out / "run"), finetune="lora",
                         lora=dict(targets=targets, r=args.r, alpha=args.alpha, dropout=0.0), lr=args.lr,
                         epochs=args.epochs, batch_size=args.batch, grad_accum=1,
                         warmup_steps=args.warmup, precision="fp32", device="cpu", num_workers=args.workers,
                         group_references=True, max_new_tokens=settings.max_new_tokens, eval_batch_size=64,
                         seed=settings.seed, progress=not args.no_progress, augment=json.loads(args.augment))
    with demo.torch_threads(args.threads):
        before = evaluate(load_blip(str(base), dtype="fp32", device="cpu"), val, config)
        started = time.perf_counter()
        result = train(config)
        train_seconds = time.perf_counter() - started
        pooled = score_adapter(base, result.adapter, val, train_samples + val, config)
    return {"base": str(base), "base_seconds": round(base_seconds, 1), "train_seconds": round(train_seconds, 1),
            "total_seconds": round(time.perf_counter() - began, 1), "targets": targets, "before": before,
            "best": result.best, "final": _last_eval(out / "run" / "eval_log.csv"), "adapter": str(result.adapter),
            "adapter_all_phrasings": pooled,
            "last_loss": result.history[-1]["loss"], "config": config.to_dict()}


def score_adapter(base: Path, adapter: Path, val: list[Sample], pool: list[Sample], config: TrainConfig) -> dict:
    """Metrics of base + adapter on val, every phrasing of a scene in pool (training frames too) a reference.

    The training loop's validation groups references within the validation file only, where the empty
    table has a single phrasing; this scores the four others as right as well.
    """
    bundle = load_blip(str(base), dtype="fp32", device="cpu")
    load_adapter(bundle.model, adapter)
    predictions = predict(bundle, val, prompt=None, max_new_tokens=config.max_new_tokens,
                          batch_size=config.eval_batch_size)
    return caption_metrics(predictions, references_by_class(val, pool=pool))


def _last_eval(path: Path) -> dict:
    """The last validation row the training loop logged (the final adapter's metrics)."""
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return {k: float(v) for k, v in rows[-1].items()} if rows else {}


def _scores(metrics: dict) -> str:
    nan = float("nan")
    return f"{metrics.get('exact_match', nan):.3f} / {metrics.get('bleu4', nan):.3f} / {metrics.get('cider', nan):.3f}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(SEED_BLOCKS), help="seed_blocks folder")
    parser.add_argument("--base-out", default="demo_out", help="the demo's cache folder holding base/")
    parser.add_argument("--out", default="runs/seed_blocks", help="split files, adapter, logs, results.json")
    parser.add_argument("--text-qv", action="store_true", help="also adapt the text decoder's query/value")
    parser.add_argument("--r", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=16.0)
    parser.add_argument("--lr", type=float, default=6e-3)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--augment", default="{}", help="AugmentConfig fields as JSON")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's choice)")
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    demo.quiet_logs()
    results = run(args)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    before, best, final = results["before"], results["best"], results["final"]
    print(f"seed_blocks validation ({before['count']} photos), exact match / BLEU-4 / CIDEr: "
          f"base {_scores(before)}; after LoRA: best {_scores(best)} (step {best.get('step', 0):.0f}), "
          f"final {_scores(final)}; chosen adapter, all five empty-table phrasings as references: "
          f"{_scores(results['adapter_all_phrasings'])}; LoRA training {results['train_seconds']:.0f} s, "
          f"total {results['total_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
