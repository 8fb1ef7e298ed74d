"""Adapter files: LoRA tensors in safetensors (never pickle) with metadata that describes them.

A file holds ``<layer>.lora_A`` (r, in) and ``<layer>.lora_B`` (out, r) for every adapted layer, a
``base_probe`` tensor (layers, 8) of base weights sampled at fixed positions, and string metadata:
rank, alpha, dropout, scaling rule, target patterns and layer names, base model name and revision,
and a fingerprint of the adapted layers' shapes. Loading checks all of it before touching the model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes
from torch import nn

from ..atomic import atomic_write_bytes
from ..errors import AdapterError, ConfigError
from .hooks import LoraConfig, base_weight_values, check_lora_fits, load_lora_tensors, lora_layers, lora_state_dict

log = logging.getLogger(__name__)

FORMAT = "blip-lora-adapter"
FORMAT_VERSION = "1"
PROBE_KEY = "base_probe"
_PROBE_POINTS = 8
_PROBE_RTOL, _PROBE_ATOL = 2e-2, 1e-2  # fp16 / bf16 copies of a base still match


@dataclass(frozen=True)
class AdapterInfo:
    """What an adapter file says about itself."""

    config: LoraConfig
    layers: list[str]
    base_model: str = ""
    base_revision: str = ""
    fingerprint: str = ""
    extra: dict = field(default_factory=dict)


def adapter_filename(config: LoraConfig, *, batch_size: int, epochs: int, lr: float,
                     when: datetime | None = None) -> str:
    """lora_r16_a32_bs2_ep4_lr0.0001_20250607_161536.safetensors"""
    stamp = (when or datetime.now()).strftime("%Y%m%d_%H%M%S")
    return f"lora_r{config.r}_a{config.alpha:g}_bs{batch_size}_ep{epochs}_lr{lr:g}_{stamp}.safetensors"


def layer_shapes(model: nn.Module, layers: list[str]) -> dict[str, tuple[int, int]]:
    """(out, in) of each named nn.Linear."""
    modules = dict(model.named_modules())
    return {name: tuple(modules[name].weight.shape) for name in layers}


def fingerprint(shapes: dict[str, tuple[int, int]]) -> str:
    """A short hash of the adapted layers' names and shapes, in order."""
    text = "\n".join(f"{name}:{out}x{inp}" for name, (out, inp) in shapes.items())
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _probe_index(numel: int) -> torch.Tensor:
    return torch.linspace(0, numel - 1, _PROBE_POINTS).long()


@torch.no_grad()
def base_probe(model: nn.Module, layers: list[str]) -> torch.Tensor:
    """(layers, 8) fp32 samples of each layer's base weight, with any merged LoRA update taken out."""
    modules = dict(model.named_modules())
    rows = []
    for name in layers:
        module = modules[name]
        index = _probe_index(module.weight.numel()).to(module.weight.device)
        rows.append(base_weight_values(module, index).cpu())
    return torch.stack(rows)


def save_adapter(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    config: LoraConfig,
    base_model: str = "",
    base_revision: str = "",
    extra: dict | None = None,
) -> Path:
    """Write the model's adapters to a safetensors file atomically; returns the path."""
    layers = list(lora_layers(model))
    if not layers:
        raise AdapterError("the model has no LoRA layers to save")
    tensors = {key: t.to("cpu", copy=True).contiguous() for key, t in lora_state_dict(model).items()}
    tensors[PROBE_KEY] = base_probe(model, layers)
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "r": str(config.r),
        "alpha": repr(float(config.alpha)),
        "dropout": repr(float(config.dropout)),
        "scaling": "alpha/sqrt(r)" if config.rslora else "alpha/r",
        "targets": json.dumps(list(config.targets)),
        "layers": json.dumps(layers),
        "base_model": base_model or "",
        "base_revision": base_revision or "",
        "fingerprint": fingerprint(layer_shapes(model, layers)),
        "extra": json.dumps(extra or {}, sort_keys=True, default=str),
    }
    return atomic_write_bytes(path, safetensors_bytes(tensors, metadata=metadata))


def read_adapter(path: str | os.PathLike) -> tuple[AdapterInfo, dict[str, torch.Tensor]]:
    """Read and check an adapter file on its own (no model): format, metadata, tensor names and shapes."""
    path = Path(path)
    if not path.is_file():
        raise AdapterError(f"{path}: no such adapter file")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        _refuse_pickles(path)
        raise AdapterError(f"{path}: not a readable safetensors adapter file ({error})") from error
    info = _parse_metadata(path, metadata)
    _check_tensors(path, info, tensors)
    return info, tensors


def _refuse_pickles(path: Path) -> None:
    """AdapterError for a file that safetensors cannot read and that looks like a pickle or torch.save
    file (never unpickled: unpickling can run code). Only asked after safetensors failed: a valid
    safetensors header length can start with the byte 0x80 too."""
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic[:1] == b"\x80" or magic == b"PK\x03\x04":
        raise AdapterError(f"{path}: not a readable safetensors adapter file (it is a pickle or torch.save file; "
                           f"blip-lora never unpickles files, that can run code)")


def _parse_metadata(path: Path, metadata: dict[str, str]) -> AdapterInfo:
    if metadata.get("format") != FORMAT:
        raise AdapterError(f"{path}: not a blip-lora adapter (metadata format is {metadata.get('format')!r})")
    _check_format_version(path, metadata.get("format_version", FORMAT_VERSION))
    try:
        targets = json.loads(metadata["targets"])
        if not isinstance(targets, list) or metadata["scaling"] not in ("alpha/r", "alpha/sqrt(r)"):
            raise ValueError(f"targets {metadata['targets'][:80]!r}, scaling {metadata['scaling'][:80]!r}")
        config = LoraConfig(
            r=int(metadata["r"]),
            alpha=float(metadata["alpha"]),
            dropout=float(metadata["dropout"]),
            rslora=metadata["scaling"] == "alpha/sqrt(r)",
            targets=tuple(targets),
        )
        layers = json.loads(metadata["layers"])
        extra = json.loads(metadata.get("extra", "{}"))
    except (KeyError, ValueError, TypeError, RecursionError, ConfigError) as error:
        raise AdapterError(f"{path}: adapter metadata is missing or invalid ({str(error)[:200]})") from error
    if not isinstance(layers, list) or not layers or not all(isinstance(n, str) for n in layers):
        raise AdapterError(f"{path}: adapter metadata 'layers' must be a non-empty list of layer names")
    return AdapterInfo(config, layers, metadata.get("base_model", ""), metadata.get("base_revision", ""),
                       metadata.get("fingerprint", ""), extra if isinstance(extra, dict) else {})


def _check_format_version(path: Path, version: str) -> None:
    """AdapterError for a version this code cannot read: a newer one (written by a newer blip-lora) or not a
    whole number. Files without the key predate it and are version 1."""
    if not version.isdigit():
        raise AdapterError(f"{path}: adapter metadata format_version {version[:20]!r} is not a whole number")
    if int(version) > int(FORMAT_VERSION):
        raise AdapterError(f"{path}: adapter format version {int(version)} is newer than the version "
                           f"{FORMAT_VERSION} this blip-lora reads: upgrade blip-lora to load it")


def _check_tensors(path: Path, info: AdapterInfo, tensors: dict[str, torch.Tensor]) -> None:
    expected = {f"{n}.lora_{s}" for n in info.layers for s in "AB"} | {PROBE_KEY}
    missing, unexpected = sorted(expected - tensors.keys()), sorted(tensors.keys() - expected)
    if missing or unexpected:
        raise AdapterError(f"{path}: tensors do not match the metadata's layers "
                           f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    r = info.config.r
    for name in info.layers:
        a, b = tensors[f"{name}.lora_A"], tensors[f"{name}.lora_B"]
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != r or b.shape[1] != r:
            raise AdapterError(f"{path}: layer {name}: lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)} "
                               f"do not have rank r={r}")
        if not (a.is_floating_point() and b.is_floating_point()):
            raise AdapterError(f"{path}: layer {name}: adapter tensors must be floating point")
        if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
            raise AdapterError(f"{path}: layer {name}: adapter tensors hold NaN or infinite values")
    if tensors[PROBE_KEY].shape != (len(info.layers), _PROBE_POINTS):
        raise AdapterError(f"{path}: base_probe has shape {tuple(tensors[PROBE_KEY].shape)}, "
                           f"expected {(len(info.layers), _PROBE_POINTS)}")


def load_adapter(model: nn.Module, path: str | os.PathLike, *, check_base: bool = True) -> AdapterInfo:
    """Load an adapter file into a model, injecting LoRA first when the model has none.

    Everything is checked before the model is touched: every layer exists and is an nn.Linear of the
    right shape, an already injected model has exactly these layers at this rank, and (check_base)
    the base weights are the ones the adapter was trained on. Any mismatch raises AdapterError naming
    the layer and the shapes; there is never a partial load.
    """
    path = Path(path)
    info, tensors = read_adapter(path)
    try:
        check_lora_fits(model, info.layers, tensors, info.config.r)
    except AdapterError as error:
        raise AdapterError(f"{path}: {error} (the adapter was made for "
                           f"{info.base_model or 'an unknown base model'})") from error
    found = fingerprint(layer_shapes(model, info.layers))
    if info.fingerprint and info.fingerprint != found:
        raise AdapterError(f"{path}: layer fingerprint {info.fingerprint} does not match the model's {found}")
    if check_base:
        _check_base_weights(path, model, info, tensors[PROBE_KEY])
    load_lora_tensors(model, info.config, info.layers, tensors)
    return info


def _check_base_weights(path: Path, model: nn.Module, info: AdapterInfo, probe: torch.Tensor) -> None:
    found, probe = base_probe(model, info.layers), probe.float()
    tolerance = _PROBE_RTOL * probe.abs() + _PROBE_ATOL * probe.abs().amax(dim=1, keepdim=True)
    close = ((found - probe).abs() <= tolerance).all(dim=1)
    if not close.all():
        name = info.layers[int((~close).nonzero()[0])]
        raise AdapterError(f"{path}: the model's weights differ from the base the adapter was trained on "
                           f"({info.base_model or 'unknown'}), first at layer {name}; "
                           f"pass check_base=False to load it anyway")
