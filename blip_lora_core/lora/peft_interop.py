"""Share adapters with peft: export to and import from a peft LoRA adapter folder.

A peft folder holds ``adapter_config.json`` and ``adapter_model.safetensors`` whose keys are
``base_model.model.<layer>.lora_A.weight`` (r, in) and ``...lora_B.weight`` (out, r). This module reads
and writes that format itself; peft is not needed (the tests prove compatibility with the real peft).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from ..atomic import atomic_write_bytes, atomic_write_text
from ..errors import AdapterError, ConfigError
from .adapter_io import AdapterInfo, read_adapter, save_adapter
from .hooks import LoraConfig, check_lora_fits, load_lora_tensors, lora_layers, remove_lora

PEFT_PREFIX = "base_model.model."
_UNSUPPORTED = {"use_dora": False, "bias": "none", "modules_to_save": None, "layers_to_transform": None}


def export_peft(adapter_file: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Write our adapter file as a peft adapter folder; returns the folder."""
    info, tensors = read_adapter(adapter_file)
    out_dir = Path(out_dir)
    peft_tensors = {}
    for name in info.layers:
        for side in "AB":
            peft_tensors[f"{PEFT_PREFIX}{name}.lora_{side}.weight"] = tensors[f"{name}.lora_{side}"].contiguous()
    alpha = int(info.config.alpha) if float(info.config.alpha).is_integer() else info.config.alpha
    config = {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": info.base_model or None,
        "revision": info.base_revision or None,
        "r": info.config.r,
        "lora_alpha": alpha,
        "lora_dropout": info.config.dropout,
        "use_rslora": info.config.rslora,
        "target_modules": list(info.layers),
        "bias": "none",
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "modules_to_save": None,
        "inference_mode": True,
    }
    atomic_write_bytes(out_dir / "adapter_model.safetensors", safetensors_bytes(peft_tensors))
    atomic_write_text(out_dir / "adapter_config.json", json.dumps(config, indent=2))
    return out_dir


def read_peft(folder: str | os.PathLike) -> tuple[AdapterInfo, dict[str, torch.Tensor]]:
    """A peft LoRA folder -> our AdapterInfo and {'<layer>.lora_A': (r, in), '<layer>.lora_B': (out, r)}."""
    folder = Path(folder)
    config = _read_peft_config(folder / "adapter_config.json")
    weights = folder / "adapter_model.safetensors"
    try:
        raw = load_file(str(weights))
    except (SafetensorError, OSError) as error:
        raise AdapterError(f"{weights}: not a readable safetensors file ({error})") from error
    tensors, layers = {}, []
    for key, tensor in raw.items():
        if not key.startswith(PEFT_PREFIX) or not key.endswith((".lora_A.weight", ".lora_B.weight")):
            raise AdapterError(f"{weights}: unsupported peft tensor {key!r} (only LoRA A/B weights are)")
        name, side = key[len(PEFT_PREFIX):].rsplit(".", 2)[0], key[-8]
        tensors[f"{name}.lora_{side}"] = tensor
        if side == "A":
            layers.append(name)
    try:
        lora = LoraConfig(r=int(config["r"]), alpha=float(config["lora_alpha"]),
                          dropout=float(config.get("lora_dropout", 0.0)),
                          rslora=bool(config.get("use_rslora", False)),
                          targets=tuple(_escape(n) for n in layers) or ("",))
    except (KeyError, TypeError, ValueError, ConfigError) as error:
        raise AdapterError(f"{folder / 'adapter_config.json'}: invalid LoRA settings ({error})") from error
    info = AdapterInfo(lora, layers, config.get("base_model_name_or_path") or "", config.get("revision") or "")
    return info, tensors


def _escape(name: str) -> str:
    return name.replace(".", r"\.")


def _read_peft_config(path: Path) -> dict:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise AdapterError(f"{path}: cannot read peft adapter config ({error})") from error
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        found = config.get("peft_type") if isinstance(config, dict) else None
        raise AdapterError(f"{path}: not a peft LoRA adapter (peft_type {found!r})")
    for key, plain in _UNSUPPORTED.items():
        if config.get(key, plain) not in (plain, [], {}):
            raise AdapterError(f"{path}: peft option {key}={config[key]!r} is not supported by blip-lora")
    return config


def import_peft(folder: str | os.PathLike, model: torch.nn.Module, out_file: str | os.PathLike) -> Path:
    """Convert a peft LoRA folder into our adapter file for model (which supplies shapes and base probe)."""
    info, tensors = read_peft(folder)
    if lora_layers(model):
        raise AdapterError("import_peft needs a model without LoRA layers")
    if not info.layers:
        raise AdapterError(f"{folder}: the peft adapter holds no LoRA tensors: nothing to import")
    try:
        check_lora_fits(model, info.layers, tensors, info.config.r)
    except AdapterError as error:
        raise AdapterError(f"{folder}: peft {error}") from error
    load_lora_tensors(model, info.config, info.layers, tensors)
    try:
        return save_adapter(model, out_file, config=info.config, base_model=info.base_model,
                            base_revision=info.base_revision, extra={"imported_from": "peft"})
    finally:
        remove_lora(model)
