"""LoRA training step (forward + backward + AdamW step): our forward hooks vs peft's LoRA wrapper.

Both sides adapt the same layers of one model whose base weights they share (no copy), start from the
same A and B, use the same rank, alpha, dropout, batch, loss, optimizer and attention code (SDPA, as
`load_blip` sets it up); only the LoRA mechanism differs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from blip_lora_core.lora.hooks import LoraConfig, find_targets, inject_lora, lora_layers
from blip_lora_core.models.blip_internals import set_attention
from blip_lora_core.models.loading import build_on_meta

from .common import Row, caption_batch, interleave, large_random_model, median, shared_copy

LORA = LoraConfig(r=16, alpha=32.0, dropout=0.05)  # the training defaults (config/train.yaml)
TOKENS = 12  # "[DEC] a blue cube on top of a green cube [SEP]" and similar


@dataclass
class LoraPair:
    """One base model adapted twice: by our hooks (ours) and by peft (theirs), weights shared."""

    ours: nn.Module
    theirs: nn.Module
    layers: int


def lora_pair(model: nn.Module, config: LoraConfig = LORA, seed: int = 0) -> LoraPair:
    """Hook our LoRA into model and peft's into a weight-sharing twin, with identical A and B."""
    import peft

    twin = shared_copy(model, lambda: build_on_meta(model.config))
    set_attention(model, "sdpa")  # as load_blip does
    set_attention(twin, "sdpa")
    names = find_targets(model, config.targets)
    torch.manual_seed(seed)
    inject_lora(model, config, layer_names=names)
    peft_config = peft.LoraConfig(r=config.r, lora_alpha=config.alpha, lora_dropout=config.dropout,
                                  use_rslora=config.rslora, target_modules=names)
    theirs = peft.get_peft_model(twin, peft_config)
    modules = dict(theirs.base_model.model.named_modules())
    with torch.no_grad():
        for name, layer in lora_layers(model).items():
            modules[name].lora_A["default"].weight.copy_(layer.lora_A)
            modules[name].lora_B["default"].weight.copy_(layer.lora_B)
    return LoraPair(model, theirs, len(names))


def training_step(model: nn.Module, batch: dict[str, torch.Tensor], lr: float = 1e-4) -> Callable[[], float]:
    """A closure running one step (the summed token loss, backward, AdamW, zero_grad); returns the loss."""
    from blip_lora_core.models.labels import token_loss_sum

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr)

    def step() -> float:
        loss = token_loss_sum(model, batch, 0.0)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step


def compare_steps(pair: LoraPair, batch: dict[str, torch.Tensor], repeats: int, warmup: int = 1) -> dict:
    """Seconds per step on each side (interleaved), and whether the first losses agreed."""
    pair.ours.train()
    pair.theirs.train()
    ours, theirs = training_step(pair.ours, batch), training_step(pair.theirs, batch)
    with torch.random.fork_rng():
        torch.manual_seed(1)
        first_ours = ours()
    with torch.random.fork_rng():
        torch.manual_seed(1)
        first_theirs = theirs()
    times = interleave({"ours": ours, "peft": theirs}, repeats, max(warmup - 1, 0))
    return {"ours": times["ours"], "peft": times["peft"],
            "same_loss": abs(first_ours - first_theirs) <= 1e-4 * max(1.0, abs(first_ours))}


def _row(name: str, what: str, result: dict, pair: LoraPair, batch_size: int) -> Row:
    agree = "same first loss" if result["same_loss"] else "FIRST LOSSES DIFFER"
    return Row(name, what, median(result["ours"]), median(result["peft"]), "s/step", "<= 1.00",
               len(result["ours"]), f"peft LoRA; {pair.layers} layers, r={LORA.r}, batch {batch_size}, fp32; {agree}",
               extra={"ours_s": result["ours"], "peft_s": result["peft"]})


def row_tiny(quick: bool) -> list[Row]:
    from blip_lora_core.models.loading import load_blip

    from .common import TINY, small_model_dir

    model = load_blip(str(small_model_dir(TINY)), device="cpu", dtype="fp32").model
    pair = lora_pair(model)
    batch = caption_batch(model, 2, TOKENS)
    result = compare_steps(pair, batch, repeats=10 if quick else 40, warmup=3)
    return [_row("lora_step_tiny", "LoRA train step, tiny BLIP", result, pair, 2)]


_LARGE_STEP: dict = {}


def large_step_seconds(quick: bool) -> float | None:
    """Our median LoRA step on BLIP-large at batch 1, if lora_step_large ran in this process."""
    return _LARGE_STEP.get(quick)


def row_large(quick: bool) -> list[Row]:
    if quick:  # the quick run keeps to small models: the medium one stands in for BLIP-large
        from blip_lora_core.models.loading import load_blip

        from .common import MEDIUM, small_model_dir

        model, label, repeats = load_blip(str(small_model_dir(MEDIUM)), device="cpu").model, "medium BLIP", 5
    else:
        model, label, repeats = large_random_model(), "BLIP-large (random weights)", 3
    pair = lora_pair(model)
    batch = caption_batch(model, 1, TOKENS)
    result = compare_steps(pair, batch, repeats=repeats, warmup=1)
    _LARGE_STEP[quick] = median(result["ours"])
    return [_row("lora_step_large", f"LoRA train step, {label}", result, pair, 1)]


ROWS = {"lora_step_tiny": row_tiny, "lora_step_large": row_large}
