"""CaptionSettings: how a Captioner loads and captions, one frozen dataclass shared by the CLI, the node's
parameters and the bag tools, so the defaults live here and nowhere else. Imports no torch: the ONNX Runtime
captioner uses it too."""

from __future__ import annotations

import re
from dataclasses import dataclass, fields, replace
from typing import Any

from ..errors import ConfigError

BLIP_LARGE = "Salesforce/blip-image-captioning-large"
"""The default model of every command and of the node."""
QUANTIZE_CHOICES = ("int8",)
DTYPE_ALIASES = {"fp32": "float32", "float32": "float32", "fp16": "float16", "float16": "float16",
                 "bf16": "bfloat16", "bfloat16": "bfloat16"}
"""dtype names a setting accepts -> the torch dtype's name."""
DTYPE_NAMES = tuple(DTYPE_ALIASES)
# torch's device types (torch.device accepts these, with an optional :index)
_DEVICE = re.compile(r"(cpu|cuda|mps|xpu|hip|xla|hpu|mtia|maia|ipu|ve|fpga|lazy|vulkan|opengl|opencl|ideep|mkldnn|"
                     r"meta|privateuseone)(:\d+)?")


def device_type(device: str) -> str:
    """'cuda:1' -> 'cuda'; ConfigError for what is not a device name (checked without importing torch)."""
    if not isinstance(device, str) or not _DEVICE.fullmatch(device):
        raise ConfigError(f"caption setting device {device!r} is not a torch device (cpu, cuda, cuda:1, ...)")
    return device.partition(":")[0]


@dataclass(frozen=True)
class CaptionSettings:
    """prompt: text every caption starts with (stripped from the output); None or "": none.
    max_new_tokens: caption length limit. num_beams: 1 is greedy (the fast static-cache path), more is
    beam search through generate(). device/dtype: where and in what precision the model is loaded (None:
    cuda when present; fp16 on a GPU, fp32 on the CPU). merge: fold the adapter into the weights instead of
    running it as hooks. quantize: None, or "int8" (dynamic int8 linears on the CPU, merged weights only;
    device None then means cpu).
    batch_size: images per forward pass. fast: use the static-cache decoder wherever it applies."""

    prompt: str | None = None
    max_new_tokens: int = 30
    num_beams: int = 1
    device: str | None = None
    dtype: str | None = None
    merge: bool = True
    quantize: str | None = None
    batch_size: int = 8
    fast: bool = True

    def __post_init__(self) -> None:
        for name in ("prompt", "device", "dtype", "quantize"):  # "" (ROS parameters, flags) means the default
            if getattr(self, name) == "":
                object.__setattr__(self, name, None)
        for name, low, high in (("max_new_tokens", 1, 512), ("num_beams", 1, 64), ("batch_size", 1, 4096)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ConfigError(f"caption setting {name} must be an integer in [{low}, {high}], got {value!r}")
        if self.dtype is not None and self.dtype not in DTYPE_NAMES:
            raise ConfigError(f"caption setting dtype must be one of {', '.join(DTYPE_NAMES)}, got {self.dtype!r}")
        if self.device is not None:
            device_type(self.device)
        self._check_quantize()

    def _check_quantize(self) -> None:
        if self.quantize is None:
            return
        if self.quantize not in QUANTIZE_CHOICES:
            raise ConfigError(f"caption setting quantize must be empty or one of {', '.join(QUANTIZE_CHOICES)}, "
                              f"got {self.quantize!r}")
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
        unknown = sorted(set(changes) - {f.name for f in fields(self)})
        if unknown:
            raise ConfigError(f"unknown caption setting(s) {', '.join(unknown)}")
        return replace(self, **changes)
