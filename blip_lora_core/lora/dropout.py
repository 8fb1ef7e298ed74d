"""Dropout for LoRA inputs that is cheap on the CPU.

``torch.nn.functional.dropout`` on the CPU draws one Mersenne-Twister number per element: on BLIP-large,
LoRA dropout on the 96 vision linears' inputs draws 4.2M numbers per image (bench/README.md has the cost
measured). Here one 64-bit draw gives four 16-bit uniforms, so the keep
mask costs a quarter of the draws, and the 1 / (1 - p) scale is left to the caller (the LoRA hook folds it
into its matmul), saving a pass over x. The drop probability is ``p`` rounded to a multiple of 1/65536
(0.05 -> 0.0500031). On other devices (CUDA's Philox generator is fast) it is plain dropout.
"""

from __future__ import annotations

import torch

_LEVELS = 1 << 16


def quantised_p(p: float) -> float:
    """The drop probability actually used on the CPU: p rounded to a multiple of 1/65536."""
    return _threshold(p) / _LEVELS


def _threshold(p: float) -> int:
    """How many of the 65536 16-bit values drop an element: p * 65536 rounded, at most 65535."""
    return min(round(p * _LEVELS), _LEVELS - 1)


def lora_dropout(x: torch.Tensor, p: float) -> tuple[torch.Tensor, float]:
    """Training-mode dropout of x (any shape) as (zeroed, factor): each element zeroed with probability p,
    and factor * zeroed is the dropout output (factor = 1 / (1 - p), or 1.0 where zeroed is already scaled).
    Uses (and advances) the default generator of x's device."""
    if x.device.type != "cpu":
        return torch.nn.functional.dropout(x, p, training=True), 1.0
    threshold = _threshold(p)
    if threshold == 0:
        return x, 1.0
    keep = _uniform16(x.numel()).view(x.shape) >= threshold - _LEVELS // 2
    return torch.where(keep, x, 0), _LEVELS / (_LEVELS - threshold)


def _uniform16(count: int) -> torch.Tensor:
    """count uniform int16 values in [-32768, 32767], four per 64-bit draw of the CPU generator."""
    words = torch.empty((count + 3) // 4, dtype=torch.int64).random_(-(1 << 63), (1 << 63) - 1)
    return words.view(torch.int16)[:count]
