"""CaptionSettings: how a Captioner loads and captions, one frozen settings dataclass shared by the CLI, the
node's parameters and the bag tools, so the defaults, ranges and help live here and nowhere else. Imports no
torch: the ONNX Runtime captioner uses it too."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from ..errors import ConfigError
from ..settings import check_settings, describe, setting

BLIP_LARGE = "Salesforce/blip-image-captioning-large"
"""The default model of every command and of the node."""
QUANTIZE_CHOICES = ("int8",)
ATTENTIONS = ("sdpa", "eager")
"""The vision attention implementations (models/blip_internals.py)."""
DTYPE_ALIASES = {"fp32": "float32", "float32": "float32", "fp16": "float16", "float16": "float16",
                 "bf16": "bfloat16", "bfloat16": "bfloat16"}
"""dtype names a setting accepts -> the torch dtype's name."""
DTYPE_NAMES = tuple(DTYPE_ALIASES)
# torch's device types (torch.device accepts these, with an optional :index)
_DEVICE = re.compile(r"(cpu|cuda|mps|xpu|hip|xla|hpu|mtia|maia|ipu|ve|fpga|lazy|vulkan|opengl|opencl|ideep|mkldnn|"
                     r"meta|privateuseone)(:\d+)?")
_EMPTY_IS_NONE = ("prompt", "device", "dtype", "quantize")  # "" (ROS parameters, flags) means the default


def _device_problem(device: str) -> str | None:
    """Why ``device`` is not a torch device name, or None (checked without importing torch)."""
    if not isinstance(device, str) or not _DEVICE.fullmatch(device):
        return f"{device!r} is not a torch device (cpu, cuda, cuda:1, ...)"
    return None


def device_type(device: str) -> str:
    """'cuda:1' -> 'cuda'; ConfigError for what is not a device name."""
    problem = _device_problem(device)
    if problem:
        raise ConfigError(f"caption setting device {problem}")
    return device.partition(":")[0]


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
        if device_type(self.device) != "cpu":
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
