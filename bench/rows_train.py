"""Whole training throughput in images/s: `blip-lora train` (our train()) vs what a user would write
instead: peft plus a plain PyTorch loop (BlipProcessor in a DataLoader, model(..., labels=...).loss, AdamW,
torch.autocast for bf16).

Same synthetic dataset on disk (480x270 JPEGs like seed_blocks), same model folder, LoRA layers, rank,
alpha, dropout, batch size, accumulation, learning rate, weight decay, clipping, precision and number of
optimizer steps. Throughput is the steady state: images after the first `warm` optimizer steps divided by
the time they took (model loading and saving excluded on both sides).
"""

from __future__ import annotations

import logging
import math
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from .common import MEDIUM, TINY, Row, large_model_dir, median, small_model_dir, synth_dataset, workdir

HYPER = dict(lr=1e-4, weight_decay=0.01, grad_clip=1.0, warmup_steps=5)
LORA = dict(r=16, alpha=32.0, dropout=0.05)


@dataclass(frozen=True)
class Setup:
    """One comparison's run shape: precision, batch, accumulation, steps per run, loader workers per side."""

    precision: str = "fp32"
    batch_size: int = 2
    grad_accum: int = 4
    steps: int = 6
    warm: int = 2
    ours_workers: int = 2
    plain_workers: int = 0

    @property
    def images_per_step(self) -> int:
        return self.batch_size * self.grad_accum


def ours_images_per_s(model_dir: Path, data: Path, setup: Setup, seed: int) -> float:
    """Our train() on the dataset; steady-state images/s from its per-step log."""
    from blip_lora_core.train.augment import AugmentConfig
    from blip_lora_core.train.config import load_config
    from blip_lora_core.train.loop import train

    out = workdir() / f"train-ours-{seed}-{time.monotonic_ns()}"
    config = load_config(None, dict(model=str(model_dir), train_file=str(data), output_dir=str(out),
                                    max_steps=setup.steps, num_workers=setup.ours_workers, progress=False, seed=seed,
                                    precision=setup.precision, batch_size=setup.batch_size,
                                    grad_accum=setup.grad_accum, lora=LORA, **HYPER,
                                    augment=AugmentConfig.off()))  # the plain loop does not augment either
    logging.getLogger("blip_lora_core").setLevel(logging.WARNING)
    history = train(config).history
    first, last = history[setup.warm - 1], history[-1]
    images = (last["step"] - first["step"]) * setup.images_per_step
    return images / (last["elapsed_s"] - first["elapsed_s"])


class _PlainDataset(torch.utils.data.Dataset):
    """(PIL image, caption) pairs straight from the JSONL, as in the Hugging Face captioning tutorials."""

    def __init__(self, jsonl: Path):
        import json

        rows = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
        self.items = [(jsonl.parent / r["image"], r["text"]) for r in rows]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        from PIL import Image

        path, text = self.items[index]
        return Image.open(path).convert("RGB"), text


class _PlainCollate:
    """BlipProcessor on the batch: pixel_values, input_ids padded to the longest, labels = input_ids (pad -100)."""

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, items):
        images, texts = zip(*items, strict=True)
        batch = self.processor(images=list(images), text=list(texts), padding=True, return_tensors="pt")
        labels = batch["input_ids"].clone()
        labels[batch["attention_mask"] == 0] = -100
        batch["labels"] = labels
        return batch


def plain_images_per_s(model_dir: Path, data: Path, setup: Setup, seed: int) -> float:
    """peft + a plain loop over the same data and hyperparameters; steady-state images/s."""
    import peft
    from transformers import BlipForConditionalGeneration, BlipProcessor

    from blip_lora_core.lora.hooks import DEFAULT_TARGETS, find_targets

    random.seed(seed)
    torch.manual_seed(seed)
    processor = BlipProcessor.from_pretrained(str(model_dir))
    model = BlipForConditionalGeneration.from_pretrained(str(model_dir))
    targets = find_targets(model, DEFAULT_TARGETS)
    model = peft.get_peft_model(model, peft.LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"],
                                                       lora_dropout=LORA["dropout"], target_modules=targets))
    loader = torch.utils.data.DataLoader(_PlainDataset(data), batch_size=setup.batch_size, shuffle=True,
                                         num_workers=setup.plain_workers, collate_fn=_PlainCollate(processor))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=HYPER["lr"], weight_decay=HYPER["weight_decay"])
    steps = setup.steps
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / HYPER["warmup_steps"]) * 0.5 * (1 + math.cos(math.pi * s / steps)))
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if setup.precision == "bf16" else nullcontext()
    model.train()
    stamps, micro, accum = [], 0, setup.grad_accum
    while len(stamps) < steps:
        for batch in loader:
            with autocast:
                loss = model(**batch).loss
            (loss / accum).backward()
            micro += 1
            if micro % accum == 0:
                torch.nn.utils.clip_grad_norm_(params, HYPER["grad_clip"])
                optimizer.step()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
                stamps.append(time.perf_counter())
                if len(stamps) == steps:
                    break
    images = (steps - setup.warm) * setup.images_per_step
    return images / (stamps[-1] - stamps[setup.warm - 1])


def compare(model_dir: Path, data: Path, setup: Setup, runs: int) -> dict:
    """Whole runs, alternating ours / plain (order flipped every other round); images/s of each."""
    results: dict[str, list[float]] = {"ours": [], "plain": []}
    for run in range(runs):
        for side in (["ours", "plain"] if run % 2 == 0 else ["plain", "ours"]):
            measure = ours_images_per_s if side == "ours" else plain_images_per_s
            results[side].append(measure(model_dir, data, setup, seed=run))
    return results


def _row(name: str, label: str, model_dir: Path, setup: Setup, runs: int, note: str) -> Row:
    data = synth_dataset(64, fmt="jpg")
    result = compare(model_dir, data, setup, runs)
    return Row(name, f"training throughput, {label}", median(result["ours"]), median(result["plain"]), "img/s",
               ">= 1.2", runs, f"peft + plain loop; batch {setup.batch_size} x accum {setup.grad_accum}, "
               f"{setup.precision}, {setup.steps} steps/run ({setup.warm} warm-up); {note}",
               extra={"ours": result["ours"], "plain": result["plain"]})


DEFAULT_WORKERS = "ours 2 loader workers (default), plain loop DataLoader defaults (0 workers)"


def row_tiny(quick: bool) -> list[Row]:
    model_dir, runs = small_model_dir(TINY), 1 if quick else 3
    rows = [_row("train_tiny", "tiny BLIP", model_dir, Setup(steps=8 if quick else 14), runs, DEFAULT_WORKERS)]
    if not quick:
        rows.append(_row("train_tiny_same_workers", "tiny BLIP", model_dir,
                         Setup(steps=14, plain_workers=2), runs, "both 2 loader workers"))
    return rows


def row_medium(quick: bool) -> list[Row]:
    model_dir, runs, steps = small_model_dir(MEDIUM), 1 if quick else 3, 4 if quick else 6
    label = "medium BLIP (ViT-S vision, 224 px)"
    return [_row("train_medium", label, model_dir, Setup(steps=steps), runs, DEFAULT_WORKERS),
            _row("train_medium_bf16", label, model_dir, Setup(precision="bf16", steps=steps), runs, DEFAULT_WORKERS)]


def row_large(quick: bool) -> list[Row]:
    if quick:  # the quick run keeps to small models
        return []
    model_dir, label = large_model_dir(), "BLIP-large (random weights)"
    shape = dict(batch_size=2, grad_accum=1, steps=3, warm=1)  # config/train.yaml's batch size
    return [_row("train_large_bf16", label, model_dir, Setup(precision="bf16", **shape), 2, DEFAULT_WORKERS),
            _row("train_large", label, model_dir, Setup(**shape), 2, DEFAULT_WORKERS)]


ROWS = {"train_tiny": row_tiny, "train_medium": row_medium, "train_large": row_large}
