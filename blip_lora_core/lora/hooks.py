"""LoRA injected through forward hooks.

Each targeted ``nn.Linear`` keeps its class and its state-dict keys (``...qkv.weight`` stays
``...qkv.weight``); the adapter adds two parameters beside them, ``lora_A`` (r x in) and ``lora_B``
(out x r), and a forward hook adds ``scaling * B @ A @ dropout(x)`` to the layer's output.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ..errors import AdapterError
from ..settings import check_settings, from_mapping, setting
from .dropout import lora_dropout

DEFAULT_TARGETS = (r"vision_model\..*",)
_FROZEN_FLAGS = "_lora_requires_grad_before"


def _pattern_problem(patterns: tuple[str, ...]) -> str | None:
    """Why the target patterns are not usable: none given, or one is not a regular expression."""
    if not patterns:
        return "must name at least one pattern"
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as error:
            return f"pattern {pattern!r} is not a valid regular expression: {error}"
    return None


@dataclass(frozen=True)
class LoraConfig:
    """LoRA hyperparameters and which layers to adapt (YAML ``lora:``).

    targets: regular expressions matched in full against module names; only ``nn.Linear`` modules
    are taken. The default adapts every linear layer of the vision encoder. The defaults (r 16, alpha 32,
    dropout 0.05) are the project's training defaults for BLIP-large.
    """

    SECTION: ClassVar[str] = "lora"
    r: int = setting(16, "LoRA rank", low=1)
    alpha: float = setting(32.0, "LoRA alpha (scaling = alpha / r)", low=0, low_open=True)
    dropout: float = setting(0.05, "dropout on the LoRA branch", low=0, high=1, high_open=True)
    rslora: bool = setting(False, "rank-stabilised scaling: alpha / sqrt(r)")
    targets: tuple[str, ...] = setting(DEFAULT_TARGETS, "module-name patterns of the nn.Linear layers to adapt",
                                       check=_pattern_problem)

    def __post_init__(self) -> None:
        check_settings(self)

    @property
    def scaling(self) -> float:
        """alpha / r, or alpha / sqrt(r) with rank-stabilised scaling."""
        return self.alpha / (math.sqrt(self.r) if self.rslora else self.r)

    def to_dict(self) -> dict:
        return {**asdict(self), "targets": list(self.targets)}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> LoraConfig:
        """Build from a mapping (e.g. YAML's ``lora:``); unknown keys are a ConfigError naming them."""
        return from_mapping(cls, values)


class _LoraState:
    """What a hooked layer carries besides its two adapter parameters.

    Only this module reads or writes it. base_weight: a CPU copy of the weight from before merging, kept
    when merging with keep_base=True, so that unmerging restores the base exactly (no fp16/bf16 drift).
    """

    def __init__(self, scaling: float, dropout: float, handle: torch.utils.hooks.RemovableHandle):
        self.scaling = scaling
        self.dropout = dropout
        self.handle = handle
        self.merged = False
        self.enabled = True
        self.base_weight: torch.Tensor | None = None


def _lora_hook(module: nn.Linear, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
    """output (..., out) += scaling * dropout(x) (..., in) @ A.T (in, r) @ B.T (r, out), in place.

    The base layer's backward does not need its output, so one addmm_ adds the update without copying it.
    """
    state: _LoraState = module._lora
    if state.merged or not state.enabled:
        return output
    x, alpha = args[0], state.scaling
    if state.dropout > 0.0 and module.training:
        x, factor = lora_dropout(x, state.dropout)
        alpha *= factor
    a, b = module.lora_A, module.lora_B
    if a.dtype != x.dtype and not torch.is_autocast_enabled(x.device.type):  # fp32 adapter on a bf16 base
        a = a.to(x.dtype)
    down = nn.functional.linear(x, a).to(output.dtype)
    b = b.to(output.dtype)
    if output.is_contiguous():
        output.view(-1, output.shape[-1]).addmm_(down.view(-1, down.shape[-1]), b.t(), alpha=alpha)
        return output
    flat = torch.addmm(output.reshape(-1, output.shape[-1]), down.reshape(-1, down.shape[-1]), b.t(), alpha=alpha)
    return flat.view(output.shape)


def find_targets(model: nn.Module, patterns: tuple[str, ...]) -> list[str]:
    """Names of the nn.Linear modules whose full name matches one of the patterns, in model order."""
    compiled = [re.compile(p) for p in patterns]
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and any(c.fullmatch(name) for c in compiled)
    ]


def lora_layers(model: nn.Module) -> dict[str, nn.Linear]:
    """The hooked layers of a model, by module name."""
    return {name: m for name, m in model.named_modules() if hasattr(m, "_lora")}


def inject_lora(model: nn.Module, config: LoraConfig, *, layer_names: list[str] | None = None,
                dtype: torch.dtype | None = None) -> list[str]:
    """Hook LoRA into the targeted layers and freeze everything else; returns the adapted layer names.

    layer_names, when given, is the exact list to adapt (as read from an adapter file); otherwise the
    config's patterns select the layers. A: kaiming-uniform, B: zeros, so the output is unchanged.
    dtype of A and B: the layer weight's by default; fp32 to train on a bf16 or fp16 base.
    """
    if lora_layers(model):
        raise AdapterError("the model already has LoRA layers: call remove_lora first")
    names = layer_names if layer_names is not None else find_targets(model, config.targets)
    if not names:
        raise AdapterError(f"no nn.Linear layer matches the LoRA targets {list(config.targets)}")
    modules = dict(model.named_modules())
    for name in names:
        module = modules.get(name)
        if not isinstance(module, nn.Linear):
            raise AdapterError(f"layer {name!r} is not an nn.Linear in this model (found {type(module).__name__})")
        if config.r > min(module.in_features, module.out_features):
            raise AdapterError(f"LoRA rank r={config.r} exceeds layer {name}'s smallest dimension "
                               f"(weight {tuple(module.weight.shape)}): a rank that large is no low-rank update")
    setattr(model, _FROZEN_FLAGS, {n: p.requires_grad for n, p in model.named_parameters()})
    for param in model.parameters():
        param.requires_grad_(False)
    for name in names:
        _hook_layer(modules[name], config, dtype)
    return list(names)


def _hook_layer(module: nn.Linear, config: LoraConfig, dtype: torch.dtype | None) -> None:
    weight = module.weight
    factory = {"device": weight.device, "dtype": dtype or weight.dtype}
    module.lora_A = nn.Parameter(torch.empty(config.r, module.in_features, **factory))
    module.lora_B = nn.Parameter(torch.zeros(module.out_features, config.r, **factory))
    if weight.device.type != "meta":
        nn.init.kaiming_uniform_(module.lora_A, a=math.sqrt(5))
    handle = module.register_forward_hook(_lora_hook)
    module._lora = _LoraState(config.scaling, float(config.dropout), handle)


def remove_lora(model: nn.Module, *, keep_merged: bool = False) -> None:
    """Unhook and delete every adapter and restore the original requires_grad flags.

    By default merged adapters are unmerged first, giving back the base model; keep_merged=True merges
    them (if not yet) and keeps them in the weights: a plain model that carries the adapted weights.
    """
    if keep_merged:
        merge_lora(model)
    for module in lora_layers(model).values():
        if module._lora.merged and not keep_merged:
            _unmerge_layer(module)
        module._lora.handle.remove()
        del module.lora_A, module.lora_B, module._lora
    flags = getattr(model, _FROZEN_FLAGS, {})
    for name, param in model.named_parameters():
        param.requires_grad_(flags.get(name, param.requires_grad))
    if hasattr(model, _FROZEN_FLAGS):
        delattr(model, _FROZEN_FLAGS)


def _delta(module: nn.Linear) -> torch.Tensor:
    """scaling * B @ A in fp32, shape (out, in); raises if not finite."""
    delta = module._lora.scaling * (module.lora_B.float() @ module.lora_A.float())
    if not torch.isfinite(delta).all():
        raise AdapterError(f"LoRA update of a layer is not finite (shape {tuple(delta.shape)})")
    return delta


@torch.no_grad()
def merge_lora(model: nn.Module, *, keep_base: bool = False) -> int:
    """Fold every adapter into its weight (W += scaling * B A, computed in fp32); returns layers merged.

    Merging twice is a no-op: already merged layers are skipped. keep_base=True keeps a CPU copy of each
    base weight so that unmerging (or remove_lora) restores it bit for bit, however often adapters swap.
    """
    merged = 0
    for name, module in lora_layers(model).items():
        if module._lora.merged:
            continue
        try:
            delta = _delta(module)
        except AdapterError as error:
            raise AdapterError(f"cannot merge layer {name}: its LoRA update is not finite") from error
        new_weight = module.weight.float() + delta
        if not torch.isfinite(new_weight).all():
            raise AdapterError(f"cannot merge layer {name}: merged weight is not finite")
        if keep_base:
            module._lora.base_weight = module.weight.detach().to("cpu", copy=True)
        module.weight.copy_(new_weight.to(module.weight.dtype))
        module._lora.merged = True
        merged += 1
    return merged


@torch.no_grad()
def _unmerge_layer(module: nn.Linear) -> None:
    state: _LoraState = module._lora
    if state.base_weight is not None:
        module.weight.copy_(state.base_weight)
        state.base_weight = None
    else:
        module.weight.copy_((module.weight.float() - _delta(module)).to(module.weight.dtype))
    state.merged = False


def unmerge_lora(model: nn.Module) -> int:
    """Take merged adapters out of their weights again: the kept base weight, else W -= scaling * B A in fp32.

    Returns the number of layers unmerged.
    """
    layers = [m for m in lora_layers(model).values() if m._lora.merged]
    for module in layers:
        _unmerge_layer(module)
    return len(layers)


def is_merged(model: nn.Module) -> bool:
    """True when every adapter of the model is merged into its weight."""
    layers = lora_layers(model).values()
    return bool(layers) and all(m._lora.merged for m in layers)


@contextmanager
def lora_disabled(model: nn.Module) -> Iterator[None]:
    """Run the base model without its (unmerged) adapters inside the block."""
    layers = list(lora_layers(model).values())
    if any(m._lora.merged for m in layers):
        raise AdapterError("cannot disable merged adapters: call unmerge_lora first")
    for module in layers:
        module._lora.enabled = False
    try:
        yield
    finally:
        for module in layers:
            module._lora.enabled = True


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """{'<layer>.lora_A': (r, in), '<layer>.lora_B': (out, r)} for every adapted layer, detached."""
    tensors = {}
    for name, module in lora_layers(model).items():
        tensors[f"{name}.lora_A"] = module.lora_A.detach()
        tensors[f"{name}.lora_B"] = module.lora_B.detach()
    return tensors


def check_lora_fits(model: nn.Module, layers: list[str], tensors: dict[str, torch.Tensor], r: int) -> None:
    """AdapterError naming the layer and shapes unless tensors ({'<layer>.lora_A': (r, in), ...}) fit the
    model's nn.Linear layers at rank r, and any LoRA the model already has covers exactly these layers."""
    modules = dict(model.named_modules())
    for name in layers:
        module = modules.get(name)
        if not isinstance(module, nn.Linear):
            found = "no such layer" if module is None else f"a {type(module).__name__}"
            raise AdapterError(f"layer {name} is not an nn.Linear in this model ({found})")
        out_f, in_f = module.weight.shape
        a, b = tensors.get(f"{name}.lora_A"), tensors.get(f"{name}.lora_B")
        if a is None or b is None:
            raise AdapterError(f"layer {name}: the adapter lacks lora_{'A' if a is None else 'B'}")
        if a.shape != (r, in_f) or b.shape != (out_f, r):
            raise AdapterError(f"layer {name}: adapter has lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)} "
                               f"at r={r}, but the model's weight is {(out_f, in_f)}")
    existing = lora_layers(model)
    if existing:
        extra, missing = sorted(set(existing) - set(layers)), sorted(set(layers) - set(existing))
        if extra or missing:
            raise AdapterError(f"the model's LoRA layers differ from the adapter's "
                               f"(model only: {extra[:3]}, adapter only: {missing[:3]}): call remove_lora first")
        for name, module in existing.items():
            if module.lora_A.shape[0] != r:
                raise AdapterError(f"layer {name}: the model's LoRA has rank {module.lora_A.shape[0]} "
                                   f"(lora_A {tuple(module.lora_A.shape)}), the adapter rank {r}")


@torch.no_grad()
def load_lora_tensors(model: nn.Module, config: LoraConfig, layers: list[str],
                      tensors: dict[str, torch.Tensor]) -> None:
    """Put checked adapter tensors into the model, injecting LoRA into `layers` first if it has none.

    Merged layers are unmerged, loaded and merged again (keeping their base copy if they had one).
    Call check_lora_fits first: this function assumes the tensors fit.
    """
    if not lora_layers(model):
        inject_lora(model, config, layer_names=layers)
    hooked = lora_layers(model)
    merged = [m._lora.merged for m in hooked.values()]
    keep_base = any(m._lora.base_weight is not None for m in hooked.values())
    unmerge_lora(model)
    for name, module in hooked.items():
        module.lora_A.copy_(tensors[f"{name}.lora_A"])
        module.lora_B.copy_(tensors[f"{name}.lora_B"])
        module._lora.scaling = config.scaling
        module._lora.dropout = float(config.dropout)
    if any(merged):
        merge_lora(model, keep_base=keep_base)


@torch.no_grad()
def base_weight_values(module: nn.Linear, flat_index: torch.Tensor) -> torch.Tensor:
    """fp32 values of a layer's base weight at flat positions (k,), with any merged LoRA update taken out."""
    state: _LoraState | None = getattr(module, "_lora", None)
    if state is not None and state.base_weight is not None:
        return state.base_weight.reshape(-1)[flat_index.cpu()].float().to(flat_index.device)
    weight = module.weight.detach()
    values = weight.reshape(-1)[flat_index].float()
    if state is not None and state.merged:
        rows, cols = flat_index // weight.shape[1], flat_index % weight.shape[1]
        delta = (module.lora_B.float()[rows] * module.lora_A.float()[:, cols].t()).sum(-1)
        values = values - state.scaling * delta
    return values


@dataclass(frozen=True)
class ParameterCount:
    trainable: int
    total: int

    def __str__(self) -> str:
        share = 100.0 * self.trainable / self.total if self.total else 0.0
        return f"trainable params: {self.trainable:,} || all params: {self.total:,} || trainable: {share:.4f}%"


def trainable_parameters(model: nn.Module) -> ParameterCount:
    """Count trainable and all parameters (shared tensors counted once)."""
    seen: dict[int, nn.Parameter] = {}
    for param in model.parameters():
        seen.setdefault(id(param), param)
    trainable = sum(p.numel() for p in seen.values() if p.requires_grad)
    return ParameterCount(trainable, sum(p.numel() for p in seen.values()))
