"""Int8 dynamic quantization of a BLIP model's linear layers for CPU inference, and the CPU's bf16 support.

Uses torch's own ``torch.ao.quantization.quantize_dynamic`` (int8 weights per tensor, activations quantized
per batch on the fly, fbgemm/x86 kernels with VNNI): it exists in every torch the project supports
(pyproject.toml: torch >= 2.2), runs eagerly and needs no extra package. torch marks it deprecated in favour of torchao;
this module is the one place that calls it, so moving to torchao touches nothing else.
"""

from __future__ import annotations

import copy
import functools
import warnings
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError
from ..lora.hooks import remove_lora


def quantize_int8(model: nn.Module) -> nn.Module:
    """A copy of model whose nn.Linear layers hold int8 weights (dynamic activation quantization).

    The copy shares nothing with model, which keeps its float weights and hooks (for adapter swaps); a
    merged adapter stays in the copy's weights, its hooks do not. CPU only.
    """
    try:
        from torch.ao.quantization import quantize_dynamic
    except ImportError as error:  # a torch without the eager quantization API
        raise ConfigError(f"quantize int8 needs torch.ao.quantization.quantize_dynamic: {error}") from error
    if next(model.parameters()).device.type != "cpu":
        raise ConfigError("quantize int8 runs on the CPU only: load the model with device cpu")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.ao\..*")
        warnings.filterwarnings("ignore", message=r".*torch\.ao\.quantization is deprecated.*")
        warnings.filterwarnings("ignore", message=r".*quantize_per_tensor.*deprecated.*")
        plain = copy.deepcopy(model)
        remove_lora(plain, keep_merged=True)
        return quantize_dynamic(plain, {nn.Linear}, dtype=torch.qint8, inplace=True).eval()


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX-BF16 in /proc/cpuinfo's flags)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))
