"""Everything that depends on transformers internals or on its version, in one place.

Supported: transformers 4.40-4.57 and 5.x; tests/test_compat.py checks the attention patch on each line.

Scaled-dot-product attention for BLIP's vision encoder: transformers' ``BlipAttention`` computes
softmax(Q K^T) V with two matmuls and materialises the (B, heads, 577, 577) probabilities for BLIP-large;
it has no SDPA implementation to select. Patched layers call ``torch.nn.functional.scaled_dot_product_attention``
instead (flash or memory-efficient kernels on CUDA, the flash kernel on the CPU) through the same ``qkv``
and ``projection`` linears, so LoRA hooks on them keep working. Two cases keep the eager code: CPU
attention in bf16/fp16 (oneDNN's bf16 matmuls beat the CPU flash kernel there) and calls that record
attention maps (``output_attentions=True``), which SDPA does not return.
"""

from __future__ import annotations

import types
from pathlib import Path

import torch
import transformers
from torch import nn
from transformers import BertTokenizerFast
from transformers.models.blip.modeling_blip import BlipAttention

TRANSFORMERS_MAJOR = int(transformers.__version__.split(".")[0])

try:  # transformers 5 records attention maps through a context variable
    from transformers.utils.output_capturing import _active_collector
except ImportError:  # transformers 4 asks each layer with output_attentions=True instead
    _active_collector = None


def dtype_kwarg(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """from_pretrained's dtype argument: ``dtype`` from transformers 5, ``torch_dtype`` before."""
    return {"dtype" if TRANSFORMERS_MAJOR >= 5 else "torch_dtype": dtype}


def wordpiece_tokenizer(tokens: list[str], vocab_file: Path, **kwargs) -> BertTokenizerFast:
    """A BertTokenizerFast over tokens (already written to vocab_file, one per line, in id order).

    transformers 5 ignores BertTokenizerFast(vocab_file=...), so the vocabulary goes in as a dict there.
    """
    if TRANSFORMERS_MAJOR >= 5:
        return BertTokenizerFast(vocab={t: i for i, t in enumerate(tokens)}, **kwargs)
    return BertTokenizerFast(vocab_file=str(vocab_file), **kwargs)


def use_fast_attention(model: nn.Module) -> int:
    """Route every BlipAttention of model through SDPA where it is faster; returns how many were patched."""
    patched = 0
    for module in model.modules():
        if isinstance(module, BlipAttention):
            module.forward = types.MethodType(_sdpa_forward, module)
            patched += 1
    return patched


def use_eager_attention(model: nn.Module) -> int:
    """Undo use_fast_attention: transformers' own attention code again; returns how many were restored."""
    restored = 0
    for module in model.modules():
        if isinstance(module, BlipAttention) and "forward" in vars(module):
            del module.forward
            restored += 1
    return restored


def _eager_is_better(hidden_states: torch.Tensor, kwargs: dict) -> bool:
    if kwargs.get("output_attentions"):  # transformers 4
        return True
    if _active_collector is not None and "attentions" in (_active_collector.get() or {}):
        return True
    if hidden_states.device.type != "cpu":
        return False
    return hidden_states.dtype != torch.float32 or torch.is_autocast_enabled("cpu")


def _sdpa_forward(self: BlipAttention, hidden_states: torch.Tensor, **kwargs) -> tuple[torch.Tensor, None]:
    """hidden_states (B, T, E) -> (output (B, T, E), None): attention maps are not materialised."""
    if _eager_is_better(hidden_states, kwargs):
        return type(self).forward(self, hidden_states, **kwargs)
    batch, tokens, embed = hidden_states.shape
    qkv = self.qkv(hidden_states).reshape(batch, tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
    context = nn.functional.scaled_dot_product_attention(
        qkv[0], qkv[1], qkv[2], dropout_p=self.dropout.p if self.training else 0.0, scale=self.scale)
    return self.projection(context.transpose(1, 2).reshape(batch, tokens, embed)), None
