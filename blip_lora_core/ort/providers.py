"""Which ONNX Runtime execution providers run each graph: TensorRT and CUDA where present, the CPU otherwise.

The vision encoder has fixed shapes but for the batch, which suits TensorRT (one optimisation profile for
batches 1..max_batch, its engine cached on disk). The text decoder's cache grows by one position per token,
a new shape each step, which would make TensorRT build engine after engine: it runs on CUDA. Both keep the
CPU provider last, for any node the others do not take. An int8 export (MatMulInteger, dynamic
quantization) runs on the CPU. Pure logic over the list ``onnxruntime.get_available_providers()`` gives,
so it is tested without a GPU.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..models.caption_settings import device_type
from .folder import Manifest

TENSORRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
SHORT_NAMES = {TENSORRT: "TensorRT", CUDA: "CUDA", CPU: "CPU"}


@dataclass(frozen=True)
class Placement:
    """Where the graphs run: providers per graph (name, options) in priority order, and the device their
    outputs live on (``cuda`` with a device id, or ``cpu``) so the cache never leaves it between steps."""

    vision: list[tuple[str, dict[str, Any]]]
    decoder: list[tuple[str, dict[str, Any]]]
    device: str = "cpu"
    device_id: int = 0
    notes: list[str] = field(default_factory=list)


def default_cache_dir() -> Path:
    """Where TensorRT engines are cached: $BLIP_LORA_TRT_CACHE, else ~/.cache/blip-lora/tensorrt."""
    return Path(os.environ.get("BLIP_LORA_TRT_CACHE") or Path.home() / ".cache" / "blip-lora" / "tensorrt")


def place(manifest: Manifest, device: str | None, available: Sequence[str], *, max_batch: int = 8,
          cache_dir: str | Path | None = None) -> Placement:
    """Providers for an export on ``device`` (None: the best present; 'cpu'; 'cuda' or 'cuda:N').

    ConfigError when a CUDA device is asked for and onnxruntime has no CUDA provider (the CPU package is
    installed, not onnxruntime-gpu), when the device is neither cpu nor cuda, or for an int8 export on CUDA.
    """
    kind = device_type(device) if device else None
    if kind not in (None, "cpu", "cuda"):
        raise ConfigError(f"device {device!r}: the ONNX Runtime captioner runs on cpu or cuda")
    cpu = [(CPU, {})]
    if manifest.quantize:
        if kind == "cuda":
            raise ConfigError(f"an {manifest.quantize} export runs on the CPU: use device cpu, or export without "
                              "--quantize for the GPU")
        return Placement(cpu, cpu, notes=[f"{manifest.quantize} export: CPU"])
    if kind == "cpu" or (kind is None and CUDA not in available):
        return Placement(cpu, cpu)
    if CUDA not in available:
        raise ConfigError(f"device {device!r}: onnxruntime offers no {CUDA} here (available: "
                          f"{', '.join(available) or 'none'}); install onnxruntime-gpu for CUDA and TensorRT")
    device_id = int(device.partition(":")[2] or 0) if device else 0
    cuda = [(CUDA, {"device_id": device_id})]
    vision = cuda + cpu
    if TENSORRT in available:
        vision = [(TENSORRT, _tensorrt_options(manifest, device_id, max_batch, cache_dir))] + vision
    return Placement(vision, cuda + cpu, "cuda", device_id)


def _tensorrt_options(manifest: Manifest, device_id: int, max_batch: int,
                      cache_dir: str | Path | None) -> dict[str, Any]:
    """TensorRT for the vision encoder: one profile for batches 1..max_batch, engines cached on disk, fp16
    kernels for an fp16 export only (an fp32 export keeps fp32 numbers)."""
    size = manifest.shapes.image_size

    def shape(batch: int) -> str:
        return f"pixel_values:{batch}x3x{size}x{size}"

    return {"device_id": device_id, "trt_fp16_enable": manifest.dtype == "fp16",
            "trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache_dir or default_cache_dir()),
            "trt_timing_cache_enable": True, "trt_profile_min_shapes": shape(1),
            "trt_profile_opt_shapes": shape(1), "trt_profile_max_shapes": shape(max_batch)}


def describe_providers(vision: Sequence[str], decoder: Sequence[str]) -> str:
    """The providers sessions actually run on (first of each), e.g. 'TensorRT (vision) + CUDA (decoder)'."""
    first_vision, first_decoder = (SHORT_NAMES.get(p[0], p[0]) if p else "none" for p in (vision, decoder))
    if first_vision == first_decoder:
        return first_vision
    return f"{first_vision} (vision) + {first_decoder} (decoder)"
