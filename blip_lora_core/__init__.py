"""blip-lora: hook-based LoRA for BLIP-1 image captioning (Hugging Face BlipForConditionalGeneration).

    from blip_lora_core import LoraConfig, inject_lora, save_adapter, load_adapter, merge_lora

The names below are imported on first use (module ``__getattr__``), so importing a torch-free part of the
core (the image decoder, the caption pipeline, the ONNX Runtime captioner) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> the module (relative to this package) that defines it
_EXPORTS = {
    **dict.fromkeys(("AdapterError", "BagError", "BlipLoraError", "ConfigError", "DataError", "ImageDecodeError",
                     "TrainingError"), ".errors"),
    **dict.fromkeys(("AdapterInfo", "adapter_filename", "load_adapter", "read_adapter", "save_adapter"),
                    ".lora.adapter_io"),
    **dict.fromkeys(("LoraConfig", "inject_lora", "is_merged", "lora_disabled", "lora_state_dict", "merge_lora",
                     "remove_lora", "trainable_parameters", "unmerge_lora"), ".lora.hooks"),
    **dict.fromkeys(("export_peft", "import_peft"), ".lora.peft_interop"),
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # the next lookup skips __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
