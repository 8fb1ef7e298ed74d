"""Execution providers for each graph, decided from the list onnxruntime offers (no GPU needed to test it):
TensorRT for the vision encoder and CUDA for the decoder where present, the CPU otherwise or when asked."""

from __future__ import annotations

import dataclasses

import pytest

from blip_lora_core.errors import ConfigError
from blip_lora_core.ort.folder import Manifest, Shapes, TokenIds
from blip_lora_core.ort.providers import CPU, CUDA, TENSORRT, describe_providers, place

GPU = [TENSORRT, CUDA, CPU]
MANIFEST = Manifest(base_model="m", base_revision="", adapter="", adapter_sha256="", opset=17, dtype="fp32",
                    quantize=None, tokens=TokenIds(1, 2, 0), shapes=Shapes(12, 12, 64, 577, 384, 512),
                    exporter="torch.onnx.export (TorchScript)", versions={}, decode_cleanup=True)


def _names(providers):
    return [name for name, _ in providers]


def test_a_gpu_install_puts_tensorrt_on_the_vision_encoder_and_cuda_on_the_decoder():
    placement = place(MANIFEST, None, GPU, max_batch=4, cache_dir="/cache")
    assert _names(placement.vision) == [TENSORRT, CUDA, CPU]
    assert _names(placement.decoder) == [CUDA, CPU]  # its cache grows every step: no TensorRT engine per shape
    assert (placement.device, placement.device_id) == ("cuda", 0)
    trt = placement.vision[0][1]
    assert trt["trt_profile_min_shapes"] == "pixel_values:1x3x384x384"
    assert trt["trt_profile_max_shapes"] == "pixel_values:4x3x384x384"
    assert trt["trt_engine_cache_enable"] and trt["trt_engine_cache_path"] == "/cache"
    assert trt["trt_fp16_enable"] is False  # an fp32 export keeps fp32 numbers
    fp16 = place(dataclasses.replace(MANIFEST, dtype="fp16"), "cuda:1", GPU)
    assert fp16.vision[0][1]["trt_fp16_enable"] is True and fp16.device_id == 1
    assert fp16.vision[0][1]["device_id"] == 1 and fp16.decoder[0] == (CUDA, {"device_id": 1})


def test_cuda_without_tensorrt_and_the_cpu_package():
    cuda_only = place(MANIFEST, "cuda", [CUDA, CPU])
    assert _names(cuda_only.vision) == [CUDA, CPU] and _names(cuda_only.decoder) == [CUDA, CPU]
    cpu = place(MANIFEST, None, [CPU])
    assert _names(cpu.vision) == [CPU] and _names(cpu.decoder) == [CPU] and cpu.device == "cpu"
    # the Azure provider some wheels list is not a GPU: still the CPU
    assert _names(place(MANIFEST, None, ["AzureExecutionProvider", CPU]).vision) == [CPU]


def test_cpu_asked_for_or_an_int8_export_runs_on_the_cpu_beside_a_gpu():
    assert _names(place(MANIFEST, "cpu", GPU).vision) == [CPU]
    int8 = place(dataclasses.replace(MANIFEST, quantize="int8"), None, GPU)
    assert _names(int8.vision) == [CPU] and _names(int8.decoder) == [CPU] and int8.device == "cpu"


@pytest.mark.parametrize("device, available, match", [
    ("cuda", [CPU], "no CUDAExecutionProvider here .*install onnxruntime-gpu"),
    ("mps", GPU, "runs on cpu or cuda"),
    ("gpu0", GPU, "not a torch device"),
])
def test_devices_that_cannot_be_had_are_refused(device, available, match):
    with pytest.raises(ConfigError, match=match):
        place(MANIFEST, device, available)
    with pytest.raises(ConfigError, match="int8 export runs on the CPU"):
        place(dataclasses.replace(MANIFEST, quantize="int8"), "cuda", GPU)


def test_the_description_names_the_providers_the_sessions_run_on():
    assert describe_providers([TENSORRT, CUDA, CPU], [CUDA, CPU]) == "TensorRT (vision) + CUDA (decoder)"
    assert describe_providers([CPU], [CPU]) == "CPU"
    assert describe_providers([CUDA, CPU], [CUDA, CPU]) == "CUDA"
