"""Learning-rate schedule: a pure function of the optimizer step, so resuming needs only the step."""

from __future__ import annotations

import math


def lr_factor(step: int, total_steps: int, warmup_steps: int, min_ratio: float = 0.0) -> float:
    """Multiplier of the peak learning rate for optimizer step `step` in [0, total_steps).

    Linear warm-up over the first warmup_steps steps ((step + 1) / warmup), then cosine decay that
    reaches min_ratio exactly at the last step, total_steps - 1.
    """
    if not 0 <= step < total_steps:
        raise ValueError(f"step {step} is outside [0, {total_steps})")
    last = total_steps - 1
    warmup = min(warmup_steps, last)
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / (last - warmup) if last > warmup else 1.0
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
