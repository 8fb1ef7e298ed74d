"""blip-lora: hook-based LoRA for BLIP-1 image captioning (Hugging Face BlipForConditionalGeneration).

    from blip_lora_core import LoraConfig, inject_lora, save_adapter, load_adapter, merge_lora
"""

from .errors import AdapterError, BagError, BlipLoraError, ConfigError, DataError, ImageDecodeError, TrainingError
from .lora.adapter_io import AdapterInfo, adapter_filename, load_adapter, read_adapter, save_adapter
from .lora.hooks import (
    LoraConfig,
    inject_lora,
    is_merged,
    lora_disabled,
    lora_state_dict,
    merge_lora,
    remove_lora,
    trainable_parameters,
    unmerge_lora,
)
from .lora.peft_interop import export_peft, import_peft

__all__ = [
    "AdapterError", "AdapterInfo", "BagError", "BlipLoraError", "ConfigError", "DataError", "ImageDecodeError",
    "LoraConfig", "TrainingError", "adapter_filename", "export_peft", "import_peft", "inject_lora", "is_merged",
    "load_adapter", "lora_disabled", "lora_state_dict", "merge_lora", "read_adapter", "remove_lora",
    "save_adapter", "trainable_parameters", "unmerge_lora",
]
