"""Data pipeline: images/s the training loader delivers (MicroBatchStream over seed_blocks, BLIP-large's
384x384 preprocessing, the default 2 workers) vs images/s a LoRA training step consumes on BLIP-large."""

from __future__ import annotations

import time

from blip_lora_core.models.labels import TokenSpec
from blip_lora_core.models.preprocess import ImagePreprocessor
from blip_lora_core.train.batches import CaptionCollator, MicroBatchStream
from blip_lora_core.train.data import ImageCaptionDataset, read_jsonl

from .common import MEDIUM, SEED_BLOCKS, Row, bert_like_tokenizer, caption_batch, median, synth_dataset, workdir

BATCH = 2  # the default micro-batch


def loader_images_per_s(n_batches: int, workers: int = 2) -> float:
    """Images/s over n_batches micro-batches after the first (worker start-up excluded)."""
    jsonl = SEED_BLOCKS / "annotations.jsonl"
    if not jsonl.is_file():
        jsonl = synth_dataset(64)
    samples, _ = read_jsonl(jsonl, check_images=False)
    tokenizer = bert_like_tokenizer(30524, 30522, workdir() / "large-tokenizer")
    spec = TokenSpec(bos_id=30522, sep_id=102, pad_id=0, max_length=512)
    dataset = ImageCaptionDataset(samples, ImagePreprocessor(384, 384), seed=0)
    stream = MicroBatchStream(dataset, BATCH, CaptionCollator(tokenizer, spec), seed=0, num_workers=workers)
    batches = stream.iterate()
    next(batches)
    began = time.perf_counter()
    for _ in range(n_batches):
        next(batches)
    return n_batches * BATCH / (time.perf_counter() - began)


def step_images_per_s(quick: bool) -> tuple[float, str]:
    """Images/s of our LoRA step at batch 1 (from lora_step_large when it ran, else measured here)."""
    from . import rows_lora

    seconds = rows_lora.large_step_seconds(quick)
    if seconds is None:
        from .common import large_random_model, small_bundle

        model = small_bundle(MEDIUM).model if quick else large_random_model()
        pair = rows_lora.lora_pair(model)
        step = rows_lora.training_step(pair.ours.train(), caption_batch(model, 1, rows_lora.TOKENS))
        times = []
        for _ in range(3):
            began = time.perf_counter()
            step()
            times.append(time.perf_counter() - began)
        seconds = median(times[1:])
    return 1.0 / seconds, "medium BLIP" if quick else "BLIP-large"


def rows(quick: bool) -> list[Row]:
    loader = [loader_images_per_s(10 if quick else 40) for _ in range(1 if quick else 3)]
    consumed, label = step_images_per_s(quick)
    return [Row("data_pipeline", f"loader img/s vs {label} LoRA step img/s", median(loader), consumed, "img/s",
                ">= 3", len(loader), "seed_blocks 480x270 JPEG -> 384x384, 2 workers, batch 2; step at batch 1, fp32")]


ROWS = {"data_pipeline": rows}
