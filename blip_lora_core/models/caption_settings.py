"""CaptionSettings: how a Captioner loads and captions, one frozen settings dataclass shared by the CLI, the
node's parameters and the bag tools, so the defaults, ranges and help live here and nowhere else."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch

from ..errors import ConfigError
from ..settings import check_settings, describe, setting
from .blip_internals import ATTENTIONS
from .loading import DTYPE_NAMES

QUANTIZE_CHOICES = ("int8",)
_EMPTY_IS_NONE = ("prompt", "device", "dtype", "quantize")  # "" (ROS parameters, flags) means the default


def _device_problem(device: str) -> str | None:
    try:
        torch.device(device)
    except (RuntimeError, TypeError):
        return f"{device!r} is not a torch device (cpu, cuda, cuda:1, ...)"
    return None


@dataclass(frozen=True)
class CaptionSettings:
    """How a Captioner loads the model and captions (see each field's help). prompt, device, dtype and quantize
    may be unset (None; "" means the same): no prompt, cuda when present, fp16 on a GPU and fp32 on the CPU, no
    quantization."""

    SECTION: ClassVar[str] = "caption"
    prompt: str | None = setting(None, 'text every caption starts with, e.g. "a picture of" (stripped from the '
                                       "output); unset: no prompt")
    max_new_tokens: int = setting(30, "longest caption, in tokens (at most the model's text positions minus the "
                                      "start token and the prompt)", low=1, high=512)
    num_beams: int = setting(1, "beam search width; 1: greedy (the fast static-cache decoder)", low=1, high=16,
                             flag="--beams")
    device: str | None = setting(None, "torch device (cpu, cuda, cuda:1, ...); unset: cuda when present, else cpu",
                                 check=_device_problem)
    dtype: str | None = setting(None, "weights dtype; unset: fp16 on a GPU, fp32 on the CPU (bf16 pays off on "
                                      "CPUs with AVX512-BF16 or AMX)", choices=DTYPE_NAMES)
    merge: bool = setting(True, "fold the adapter into the weights (no overhead) instead of running it as hooks")
    quantize: str | None = setting(None, "int8: dynamic int8 linear layers (CPU, fp32, merged adapter); unset: "
                                         "no quantization", choices=QUANTIZE_CHOICES)
    batch_size: int = setting(8, "images per forward pass", low=1, high=4096)
    fast: bool = setting(True, "greedy captions on the static-cache decoder (same tokens as generate(), faster)")
    attention: str = setting("sdpa", "vision attention: sdpa (torch's fused kernel; transformers' code where a "
                                     "head mask or attention maps are asked for) or eager (transformers' own)",
                             choices=ATTENTIONS)

    def __post_init__(self) -> None:
        for name in _EMPTY_IS_NONE:
            if getattr(self, name) == "":
                object.__setattr__(self, name, None)
        check_settings(self)
        self._check_quantize()

    def _check_quantize(self) -> None:
        """What quantization asks of the other settings (the CPU, fp32 weights, a merged adapter)."""
        if self.quantize is None:
            return
        if self.device is None:
            object.__setattr__(self, "device", "cpu")  # quantized linears run on the CPU, even beside a GPU
        if torch.device(self.device).type != "cpu":
            raise ConfigError(f"quantize {self.quantize} runs on the CPU only, not on device {self.device!r}")
        if self.dtype not in (None, "fp32", "float32"):
            raise ConfigError(f"quantize {self.quantize} quantizes fp32 weights: use dtype fp32, not {self.dtype!r}")
        if not self.merge:
            raise ConfigError(f"quantize {self.quantize} needs merge: the adapter is quantized with the weights")

    def with_changes(self, **changes: Any) -> CaptionSettings:
        """A validated copy with some fields changed (ConfigError naming an unknown one)."""
        unknown = sorted(set(changes) - {info.name for info in describe(CaptionSettings)})
        if unknown:
            raise ConfigError(f"unknown caption setting(s): {', '.join(unknown)}")
        return replace(self, **changes)
