"""Least-confident first vs random order: how many labels an adapter needs to reach 0.95 exact match on seed_blocks.

The pool is frames 1-128 of the seven scenes (896 photos), validation frames 129-160 (224). Labels are taken
in rounds of a growing schedule (7, 10, 14, 20, ... 896). Random: the next frames of a seeded permutation.
Least-confident first (what `blip-lora label order` does): the frames the current model is least sure of
(the node's caption confidence), near-duplicates of each other and of frames already labelled collapsed; the
current model is the demo's base before the first round, then the adapter of the previous round. After each
round an adapter is trained from the base on every label so far (the README's LoRA settings, a fixed number
of steps, no augmentation: only the order differs between the arms, and a bench/camera_robust.py question
stays out of this one) and scored on validation (every phrasing of a scene counts); a run stops
at the first round that reaches the target. Both orders use the same seeds (training and, for random, the
permutation). Goal (issue 18): least-confident first needs half as many labels.

    python -m bench.label_order [--seeds 0 1 2] [--steps 200] [--out runs/label_order]
    python -m bench.run_all --only label_order
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from blip_lora_core.atomic import write_jsonl
from blip_lora_core.labelling.order import DEFAULT_DUPLICATE_THRESHOLD, least_confident_first, thumbnails
from blip_lora_core.lora.adapter_io import load_adapter
from blip_lora_core.models.captioning import Captioner
from blip_lora_core.models.loading import load_blip
from blip_lora_core.train.augment import AugmentConfig
from blip_lora_core.train.config import TrainConfig
from blip_lora_core.train.data import Sample, read_jsonl, sample_to_row
from blip_lora_core.train.loop import predict, train
from blip_lora_core.train.metrics import caption_metrics, references_by_class
from blip_lora_training import demo

from .common import SEED_BLOCKS, Row, workdir
from .seed_blocks_experiment import write_split

SCHEDULE = (7, 10, 14, 20, 28, 40, 56, 80, 112, 160, 224, 320, 448, 640, 896)
TARGET = 0.95
STRATEGIES = ("least_confident", "random")


@dataclass
class Setting:
    """What one comparison runs on."""

    base: Path
    pool: list[Sample]
    val: list[Sample]
    folder: Path
    steps: int = 200
    schedule: tuple[int, ...] = SCHEDULE
    target: float = TARGET
    references: list[list[str]] = field(default_factory=list)


def _score(setting: Setting, adapter: Path) -> float:
    bundle = load_blip(str(setting.base), dtype="fp32", device="cpu")
    load_adapter(bundle.model, adapter)
    predictions = predict(bundle, setting.val, prompt=None, max_new_tokens=12, batch_size=64)
    return caption_metrics(predictions, setting.references)["exact_match"]


def _train(setting: Setting, labelled: list[int], seed: int, folder: Path) -> Path:
    """An adapter trained from the base on the labelled pool frames (the README's LoRA settings)."""
    data = folder / "labelled.jsonl"
    write_jsonl(data, [sample_to_row(setting.pool[i], relative_to=folder) for i in labelled])
    config = TrainConfig(model=str(setting.base), train_file=str(data), output_dir=str(folder / "run"),
                         lora=dict(r=8, alpha=16, dropout=0.0), max_steps=setting.steps,
                         batch_size=min(16, len(labelled)), grad_accum=1, lr=0.006, warmup_steps=10,
                         precision="fp32", device="cpu", num_workers=0, max_new_tokens=12, progress=False,
                         seed=seed, checkpoint_every=0, augment=AugmentConfig.off())
    return train(config).adapter


def _least_confident(setting: Setting, adapter: Path | None, labelled: list[int], count: int,
                     thumbs: np.ndarray) -> list[int]:
    """The next ``count`` pool frames as `label order` ranks them for base + adapter (near-duplicates of each
    other and of labelled frames collapsed, refilled from the collapsed ones, least confident first, if short)."""
    done = set(labelled)
    todo = [i for i in range(len(setting.pool)) if i not in done]
    captioner = Captioner(load_blip(str(setting.base), dtype="fp32", device="cpu"), max_new_tokens=12,
                          batch_size=64)
    if adapter is not None:
        captioner.set_adapter(adapter)
    results = captioner.caption_file_results([setting.pool[i].image for i in todo])
    confidence = [r.confidence for r in results]
    ranking = least_confident_first(confidence, thumbs[todo], DEFAULT_DUPLICATE_THRESHOLD,
                                    captions=[r.text for r in results], labelled=thumbs[labelled])
    collapsed = sorted(ranking.duplicate_of, key=lambda k: (confidence[k], k))
    return [todo[k] for k in ranking.order + collapsed][:count]


def labels_needed(setting: Setting, strategy: str, seed: int, log=None) -> dict:
    """{"labels": the first schedule count reaching the target (None: never), "curve": [[n, exact match]]}."""
    log = log or _stderr
    permutation = np.random.default_rng(seed).permutation(len(setting.pool)).tolist()
    thumbs = thumbnails([s.image for s in setting.pool]) if strategy == "least_confident" else None
    labelled: list[int] = []
    adapter: Path | None = None
    curve = []
    for n in setting.schedule:
        count = n - len(labelled)
        if strategy == "random":
            labelled += permutation[len(labelled):n]
        else:
            labelled += _least_confident(setting, adapter, labelled, count, thumbs)
        folder = setting.folder / strategy / f"seed{seed}" / f"n{n:04d}"
        adapter = _train(setting, labelled, seed, folder)
        score = _score(setting, adapter)
        curve.append([n, score])
        log(f"[label_order] {strategy} seed {seed}: {n} labels -> exact match {score:.3f}")
        if score >= setting.target:
            return {"labels": n, "curve": curve}
    return {"labels": None, "curve": curve}


def setting_for(base: Path, data: Path, folder: Path, **values) -> Setting:
    """The seed_blocks split (pool: frames 1-128, validation: 129-160) under folder."""
    train_file, val_file = write_split(data, folder / "data")
    pool, val = read_jsonl(train_file)[0], read_jsonl(val_file)[0]
    return Setting(base, pool, val, folder, references=references_by_class(val, pool=pool + val), **values)


def compare(setting: Setting, seeds: list[int], log=None) -> dict:
    began = time.perf_counter()
    runs = {s: {str(seed): labels_needed(setting, s, seed, log) for seed in seeds} for s in STRATEGIES}
    return {"seeds": seeds, "steps": setting.steps, "target": setting.target, "runs": runs,
            "seconds": round(time.perf_counter() - began, 1)}


def _median_labels(runs: dict) -> float:
    """The median over seeds of the labels needed (a run that never reached the target counts as infinite)."""
    return statistics.median(r["labels"] if r["labels"] is not None else float("inf") for r in runs.values())


def _row(results: dict) -> Row:
    ours, theirs = (_median_labels(results["runs"][s]) for s in STRATEGIES)
    per_seed = "; ".join(f"{s}: " + ", ".join(str(r["labels"]) for r in results["runs"][s].values())
                         for s in STRATEGIES)
    return Row("label_order", f"labels to reach exact match {results['target']} on seed_blocks validation",
               ours if ours != float("inf") else float("nan"), theirs if theirs != float("inf") else float("nan"),
               "labels", "<= 0.50", len(results["seeds"]),
               f"least-confident first vs random order, median over seeds {results['seeds']} ({per_seed}); "
               f"adapter trained {results['steps']} steps per round", extra=results)


def rows(quick: bool) -> list[Row]:
    """For bench.run_all (quick: one seed, 60 steps, up to 56 labels)."""
    base = demo.pretrain_base(workdir() / "demo", replace(demo.DemoSettings(), progress=False))
    values = dict(steps=60, schedule=SCHEDULE[:7]) if quick else {}
    setting = setting_for(base, SEED_BLOCKS, workdir() / "label_order", **values)
    with demo.torch_threads(1):
        return [_row(compare(setting, [0] if quick else [0, 1, 2]))]


def _stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(SEED_BLOCKS), help="seed_blocks folder")
    parser.add_argument("--base-out", default="demo_out", help="the demo's cache folder holding base/")
    parser.add_argument("--out", default="runs/label_order")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=200, help="training steps per round")
    args = parser.parse_args(argv)
    demo.quiet_logs()
    base = demo.pretrain_base(args.base_out, replace(demo.DemoSettings(), progress=False))
    setting = setting_for(base, Path(args.data), Path(args.out), steps=args.steps)
    with demo.torch_threads(1):
        results = compare(setting, args.seeds)
    Path(args.out, "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    row = _row(results)
    print(f"labels to reach {TARGET} exact match (median over seeds): least-confident first {row.ours:g}, "
          f"random {row.baseline:g} (ratio {row.ratio:.2f}, goal <= 0.50); {row.notes}")
    return 0


ROWS = {"label_order": rows}

if __name__ == "__main__":
    sys.exit(main())
