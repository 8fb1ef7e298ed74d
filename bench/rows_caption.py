"""Captioning throughput in images/s: `blip-lora caption`'s path (Captioner: batches of 8, adapter merged,
inference_mode) vs a plain loop: BlipProcessor and generate() one image at a time on a peft-loaded adapter.

Both caption the same decoded seed_blocks images with a fixed caption length (min_new_tokens =
max_new_tokens, so random weights cannot stop early), greedy, fp32, and decode the tokens to text.
"""

from __future__ import annotations

import copy

import torch

from blip_lora_core.models.captioning import Captioner
from blip_lora_core.lora.peft_interop import export_peft

from .common import MEDIUM, Row, interleave, median, random_adapter, seed_block_images, small_bundle, workdir

NEW_TOKENS = 20


def _plain(bundle, adapter, processor):
    """A function captioning images one by one with generate() on a peft model."""
    import peft

    folder = export_peft(adapter, workdir() / f"peft-{bundle.name}")
    model = peft.PeftModel.from_pretrained(copy.deepcopy(bundle.model), str(folder)).eval()

    def caption(images) -> list[str]:
        texts = []
        for image in images:
            inputs = processor(images=image, return_tensors="pt")
            ids = model.generate(**inputs, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS)
            texts.append(processor.decode(ids[0], skip_special_tokens=True))
        return texts

    return caption


def _processor(bundle):
    from transformers import BlipImageProcessor, BlipProcessor

    p = bundle.preprocess
    image_processor = BlipImageProcessor(size={"height": p.height, "width": p.width}, image_mean=list(p.mean),
                                         image_std=list(p.std))
    return BlipProcessor(image_processor=image_processor, tokenizer=bundle.tokenizer)


def _compare(bundle, label: str, n_images: int, repeats: int) -> Row:
    adapter = random_adapter(bundle.model, workdir() / f"caption-{bundle.name}.safetensors")
    plain = _plain(bundle, adapter, _processor(bundle))
    captioner = Captioner(bundle, max_new_tokens=NEW_TOKENS, batch_size=8)
    captioner.set_adapter(adapter, merge=True)
    bundle.model.generation_config.min_new_tokens = NEW_TOKENS
    images = seed_block_images(n_images)
    times = interleave({"ours": lambda: captioner.caption(images), "plain": lambda: plain(images)},
                       repeats, warmup=1 if repeats > 1 else 0)
    ours, theirs = n_images / median(times["ours"]), n_images / median(times["plain"])
    return Row("caption_throughput", f"captioning throughput, {label}", ours, theirs, "img/s", ">= 1.0", repeats,
               f"{n_images} seed_blocks images, {NEW_TOKENS} tokens, greedy, fp32; Captioner batch 8 merged vs "
               f"per-image generate() with peft", extra={"times": times})


def rows(quick: bool) -> list[Row]:
    # BLIP-large is left out: at about 8 s per image on 2 cores it would take most of the run's budget;
    # infer_caption_* show the per-caption cost on BLIP-large.
    return [_compare(small_bundle(MEDIUM), "medium BLIP", 8 if quick else 16, 1 if quick else 3)]


ROWS = {"caption_throughput": rows}
