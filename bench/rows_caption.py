"""Captioning on the product path (Captioner, what `blip-lora caption` and the node run).

- caption_throughput: Captioner (batches of 8, adapter merged, inference_mode) vs a plain loop:
  BlipProcessor and generate() one image at a time on a peft-loaded adapter.
- caption_fast: one caption at batch 1 on BLIP-large (random weights): the Captioner's static-cache
  decoder in fp32, bf16 and int8 vs the same Captioner on plain generate() in fp32.
- caption_precision: the tiny base LoRA-trained on seed_blocks: captions of the 224 validation photos in
  fp32 (fast path), bf16 and int8, each against fp32 generate(): speed and exact match of the captions.

Rows with random weights fix the caption length (min_new_tokens = max_new_tokens: equal tokens on both
sides); all are greedy and decode the tokens to text.
"""

from __future__ import annotations

import copy
import dataclasses
import functools

import torch

from blip_lora_core.lora.peft_interop import export_peft
from blip_lora_core.models.captioning import Captioner
from blip_lora_core.models.quantize import cpu_has_bf16

from .common import (
    MEDIUM,
    SEED_BLOCKS,
    Row,
    interleave,
    large_bundle,
    median,
    random_adapter,
    seed_block_images,
    small_bundle,
    workdir,
)

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
    bundle.model.text_decoder.generation_config.min_new_tokens = NEW_TOKENS  # what BLIP's generate() reads
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


def _variants(bundle, new_tokens: int, batch_size: int) -> dict[str, Captioner]:
    """fp32 generate() (the baseline), fp32 / bf16 / int8 on the static-cache decoder; one fp32 model shared."""
    fast = Captioner(bundle, max_new_tokens=new_tokens, batch_size=batch_size)
    bf16 = dataclasses.replace(bundle, model=copy.deepcopy(bundle.model).to(torch.bfloat16))
    return {"generate": Captioner(bundle, fast.settings.with_changes(fast=False)), "fp32": fast,
            "bf16": Captioner(bf16, fast.settings),
            "int8": Captioner(bundle, fast.settings.with_changes(quantize="int8"))}


def _ids(captioner: Captioner, images) -> torch.Tensor:
    model = captioner.model
    return captioner.generate_ids(captioner.bundle.preprocess.batch(images).to(model.device, model.dtype))


def fast_rows(quick: bool) -> list[Row]:
    """Caption latency at batch 1, 20 tokens: fp32 / bf16 / int8 on the fast path vs fp32 generate()."""
    bundle = small_bundle(MEDIUM) if quick else large_bundle()
    label = "medium BLIP" if quick else "BLIP-large (random weights)"
    bundle.model.text_decoder.generation_config.min_new_tokens = NEW_TOKENS
    images = seed_block_images(1)
    captioners = _variants(bundle, NEW_TOKENS, 1)
    reference = _ids(captioners["generate"], images)
    same = {name: torch.equal(_ids(c, images), reference) for name, c in captioners.items()}
    if not same["fp32"]:
        raise AssertionError("the fp32 fast path's tokens differ from generate()'s: a bug")
    repeats = 3 if quick else 4
    times = interleave({name: (lambda c=c: c.caption(images)) for name, c in captioners.items()}, repeats)
    base = median(times["generate"])
    rows = []
    for name, goal in (("fp32", ">= 1.3"), ("bf16", ">= 2"), ("int8", ">= 2")):
        support = "" if name != "bf16" else f"; CPU {'has' if cpu_has_bf16() else 'lacks'} AVX512-BF16/AMX"
        rows.append(Row(f"caption_fast_{name}", f"20-token captions/s at batch 1, {label}", 1 / median(times[name]),
                        1 / base, "captions/s", goal, repeats,
                        f"Captioner {captioners[name].describe()} vs Captioner generate() fp32 ({base:.2f} s); "
                        f"tokens {'equal to' if same[name] else 'differ from'} fp32 generate()'s{support}",
                        extra={"times": times}))
    return rows


@functools.cache
def seed_blocks_model(quick: bool):
    """(base folder, adapter, validation samples): the demo's tiny base LoRA-trained on seed_blocks (once a run;
    rows_onnx uses it too)."""
    from blip_lora_core.train.data import read_jsonl

    from . import seed_blocks_experiment as experiment

    out = workdir() / "seed_blocks"
    args = experiment.parse_args(["--data", str(SEED_BLOCKS), "--base-out", str(workdir() / "demo"),
                                  "--out", str(out), "--no-progress", "--epochs", "2" if quick else "8"])
    results = experiment.run(args)
    return results["base"], results["adapter"], read_jsonl(out / "data" / "val.jsonl")[0]


def precision_rows(quick: bool) -> list[Row]:
    """Speed and exact match vs fp32 generate() of fp32 / bf16 / int8 captions on seed_blocks validation photos."""
    from blip_lora_core.models.images import load_image
    from blip_lora_core.models.loading import load_blip

    base, adapter, val = seed_blocks_model(quick)
    bundle = load_blip(base, device="cpu", dtype="fp32")
    captioners = _variants(bundle, 12, 32)
    for captioner in captioners.values():
        captioner.set_adapter(adapter)
    images = [load_image(s.image) for s in val]
    captions = {name: c.caption(images) for name, c in captioners.items()}
    repeats = 1 if quick else 3
    times = interleave({name: (lambda c=c: c.caption(images)) for name, c in captioners.items()}, repeats,
                       warmup=0)
    base_rate = len(images) / median(times["generate"])
    rows = []
    for name in ("fp32", "bf16", "int8"):
        match = sum(a == b for a, b in zip(captions[name], captions["generate"], strict=True))
        rows.append(Row(f"caption_precision_{name}", "seed_blocks validation captions/s, tiny base + adapter",
                        len(images) / median(times[name]), base_rate, "img/s", "", repeats,
                        f"{captioners[name].describe()} vs fp32 generate(); batch 32, up to 12 tokens; exact match "
                        f"with fp32 captions {match}/{len(images)} = {match / len(images):.3f}"))
    return rows


ROWS = {"caption_throughput": rows, "caption_fast": fast_rows, "caption_precision": precision_rows}
