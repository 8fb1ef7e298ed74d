"""Inference overhead of an adapter: the vision encoder and a whole 20-token caption, with the adapter
merged into the weights and with it running as hooks, each against the base model (batch 1, fp32)."""

from __future__ import annotations

import copy

import torch

from blip_lora_core.lora.adapter_io import load_adapter
from blip_lora_core.lora.hooks import merge_lora
from blip_lora_core.models.loading import build_on_meta

from .common import MEDIUM, Row, interleave, large_random_model, median, random_adapter, shared_copy, workdir

NEW_TOKENS = 20


def _models(quick: bool):
    """(label, base, merged copy, hooked twin sharing base's weights)."""
    if quick:
        from .common import small_bundle

        base, label = small_bundle(MEDIUM).model, "medium BLIP"
    else:
        base, label = large_random_model(), "BLIP-large"
    adapter = random_adapter(base, workdir() / f"infer-{label}.safetensors")
    merged = copy.deepcopy(base)
    load_adapter(merged, adapter)
    merge_lora(merged)
    hooked = shared_copy(base, lambda: build_on_meta(base.config))
    load_adapter(hooked, adapter)
    return label, base.eval(), merged.eval(), hooked.eval()


def _encoder(model, pixels):
    def run():
        with torch.inference_mode():
            model.vision_model(pixel_values=pixels)
    return run


def _caption(model, pixels):
    def run():
        with torch.inference_mode():
            out = model.generate(pixel_values=pixels, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                                 num_beams=1, do_sample=False)
        assert out.shape[1] == NEW_TOKENS + 1, out.shape
    return run


def rows(quick: bool) -> list[Row]:
    label, base, merged, hooked = _models(quick)
    size = base.config.vision_config.image_size
    pixels = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    out = []
    for part, make, repeats in (("vision encoder", _encoder, 4),
                                (f"{NEW_TOKENS}-token caption", _caption, 3)):
        times = interleave({"base": make(base, pixels), "merged": make(merged, pixels),
                            "hooked": make(hooked, pixels)}, repeats, warmup=1)
        key = "encoder" if part == "vision encoder" else "caption"
        for variant, goal in (("merged", "<= 1.02"), ("hooked", "<= 1.10")):
            how = "weights folded in" if variant == "merged" else "r=16 forward hooks on every vision linear"
            out.append(Row(f"infer_{key}_{variant}", f"{part}, {variant} adapter vs base, {label}",
                           median(times[variant]), median(times["base"]), "s", goal, repeats,
                           f"batch 1, fp32, inference_mode; {how}",
                           extra={"times": times}))
    return out


ROWS = {"infer_overhead": rows}
