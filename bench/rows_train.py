"""Whole training throughput in images/s: `blip-lora train` (our train()) vs what a user would write
instead: peft plus a plain PyTorch loop (BlipProcessor in a DataLoader, model(..., labels=...).loss, AdamW).

Same synthetic dataset on disk (480x270 JPEGs like seed_blocks), same model folder, LoRA layers, rank,
alpha, dropout, batch size, accumulation, learning rate, weight decay, clipping, precision (fp32) and number
of optimizer steps. Throughput is the steady state: images after the first WARM_STEPS optimizer steps
divided by the time they took (model loading and saving excluded on both sides).
"""

from __future__ import annotations

import logging
import math
import random
import time
from pathlib import Path

import torch

from .common import MEDIUM, TINY, Row, median, small_model_dir, synth_dataset, workdir

WARM_STEPS = 2
HYPER = dict(batch_size=2, grad_accum=4, lr=1e-4, weight_decay=0.01, grad_clip=1.0, r=16, alpha=32.0,
             dropout=0.05, warmup_steps=5, precision="fp32")


def ours_images_per_s(model_dir: Path, data: Path, steps: int, workers: int, seed: int) -> float:
    """Our train() on the dataset; steady-state images/s from its per-step log."""
    from blip_lora_core.train import train
    from blip_lora_core.train_config import load_config

    out = workdir() / f"train-ours-{seed}-{time.monotonic_ns()}"
    config = load_config(None, dict(model=str(model_dir), train_file=str(data), output_dir=str(out), max_steps=steps,
                                    num_workers=workers, progress=False, seed=seed, **HYPER))
    logging.getLogger("blip_lora_core").setLevel(logging.WARNING)
    history = train(config).history
    first, last = history[WARM_STEPS - 1], history[-1]
    images = (last["step"] - first["step"]) * HYPER["batch_size"] * HYPER["grad_accum"]
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
        images, texts = zip(*items)
        batch = self.processor(images=list(images), text=list(texts), padding=True, return_tensors="pt")
        labels = batch["input_ids"].clone()
        labels[batch["attention_mask"] == 0] = -100
        batch["labels"] = labels
        return batch


def plain_images_per_s(model_dir: Path, data: Path, steps: int, workers: int, seed: int) -> float:
    """peft + a plain loop over the same data and hyperparameters; steady-state images/s."""
    import peft
    from transformers import BlipForConditionalGeneration, BlipProcessor

    from blip_lora_core.lora import find_targets, DEFAULT_TARGETS

    random.seed(seed)
    torch.manual_seed(seed)
    processor = BlipProcessor.from_pretrained(str(model_dir))
    model = BlipForConditionalGeneration.from_pretrained(str(model_dir))
    targets = find_targets(model, DEFAULT_TARGETS)
    model = peft.get_peft_model(model, peft.LoraConfig(r=HYPER["r"], lora_alpha=HYPER["alpha"],
                                                       lora_dropout=HYPER["dropout"], target_modules=targets))
    loader = torch.utils.data.DataLoader(_PlainDataset(data), batch_size=HYPER["batch_size"], shuffle=True,
                                         num_workers=workers, collate_fn=_PlainCollate(processor))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=HYPER["lr"], weight_decay=HYPER["weight_decay"])
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / HYPER["warmup_steps"]) * 0.5 * (1 + math.cos(math.pi * s / steps)))
    model.train()
    stamps, micro, accum = [], 0, HYPER["grad_accum"]
    while len(stamps) < steps:
        for batch in loader:
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
    images = (steps - WARM_STEPS) * HYPER["batch_size"] * accum
    return images / (stamps[-1] - stamps[WARM_STEPS - 1])


def compare(model_dir: Path, data: Path, steps: int, runs: int, ours_workers: int, plain_workers: int) -> dict:
    """Whole runs, alternating ours / plain (order flipped every other round); images/s of each."""
    results: dict[str, list[float]] = {"ours": [], "plain": []}
    for run in range(runs):
        order = ["ours", "plain"] if run % 2 == 0 else ["plain", "ours"]
        for side in order:
            if side == "ours":
                results[side].append(ours_images_per_s(model_dir, data, steps, ours_workers, seed=run))
            else:
                results[side].append(plain_images_per_s(model_dir, data, steps, plain_workers, seed=run))
    return results


def _rows(name: str, label: str, size, steps: int, runs: int, variants: list[tuple[str, int, int, str]]) -> list[Row]:
    model_dir = small_model_dir(size)
    data = synth_dataset(64, fmt="jpg")
    rows = []
    for suffix, ours_workers, plain_workers, note in variants:
        result = compare(model_dir, data, steps, runs, ours_workers, plain_workers)
        rows.append(Row(name + suffix, f"training throughput, {label}", median(result["ours"]),
                        median(result["plain"]), "img/s", ">= 1.2", runs,
                        f"peft + plain loop; batch 2 x accum 4, fp32, {steps} steps/run; {note}",
                        extra={"ours": result["ours"], "plain": result["plain"]}))
    return rows


def row_tiny(quick: bool) -> list[Row]:
    variants = [("", 2, 0, "ours 2 loader workers (default), plain loop DataLoader defaults (0 workers)"),
                ("_same_workers", 2, 2, "both 2 loader workers")]
    return _rows("train_tiny", "tiny BLIP", TINY, 8 if quick else 14, 1 if quick else 3, variants[:1] if quick else variants)


def row_medium(quick: bool) -> list[Row]:
    variants = [("", 2, 0, "ours 2 loader workers (default), plain loop DataLoader defaults (0 workers)")]
    return _rows("train_medium", "medium BLIP (ViT-S vision, 224 px)", MEDIUM, 4 if quick else 6, 1 if quick else 3,
                 variants)


ROWS = {"train_tiny": row_tiny, "train_medium": row_medium}
