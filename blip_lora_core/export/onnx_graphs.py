"""The two graphs of an ONNX export, as torch modules that trace into ONNX: the same computation as the
static-cache decoder (its step functions), with a cache that grows by concatenation instead of a static one.
Every K/V tensor is its own graph input/output, one per text layer (names: blip_lora_core/ort/folder.py), so
no step cuts or stacks an all-layer tensor.

VisionGraph:  pixel_values (B, 3, S, S) -> cross_key_i, cross_value_i (B, heads, N, head_dim) for each layer i
DecoderGraph: input_ids (B, T), past_key_i / past_value_i (B, heads, P, head_dim) per layer, cross_key_i /
              cross_value_i per layer -> logits (B, vocab) float32 of the last position, present_key_i /
              present_value_i (B, heads, P + T, head_dim) per layer

Prefill is T = 1 + prompt tokens with P = 0; each later step is T = 1. Positions are P .. P + T - 1.
"""

from __future__ import annotations

import torch
from torch import nn

from ..models.blip_internals import text_decoder_parts
from ..models.static_decoder import causal_mask, cross_kv, embed_tokens, split_heads, text_layer
from ..ort.folder import cross_names, past_names, present_names


def vision_io(layers: int) -> tuple[list[str], list[str], dict]:
    """Input names, output names and dynamic axes of the vision graph."""
    outputs = cross_names(layers)
    return ["pixel_values"], outputs, {"pixel_values": {0: "batch"}, **{name: {0: "batch"} for name in outputs}}


def decoder_io(layers: int) -> tuple[list[str], list[str], dict]:
    """Input names, output names and dynamic axes of the decoder graph (batch, tokens fed, cache lengths)."""
    past, present, cross = past_names(layers), present_names(layers), cross_names(layers)
    axes = {"input_ids": {0: "batch", 1: "tokens"}, "logits": {0: "batch"},
            **{name: {0: "batch", 2: "past"} for name in past},
            **{name: {0: "batch", 2: "total"} for name in present},
            **{name: {0: "batch"} for name in cross}}
    return ["input_ids", *past, *cross], ["logits", *present], axes


class VisionGraph(nn.Module):
    """The vision encoder and every text layer's cross-attention K/V projection: once per image."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        text = model.config.text_config
        self.heads, self.head_dim = text.num_attention_heads, text.hidden_size // text.num_attention_heads

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        pairs = cross_kv(self.model, text_decoder_parts(self.model), pixel_values, self.heads, self.head_dim)
        return tuple(tensor for pair in pairs for tensor in pair)


class DecoderGraph(nn.Module):
    """One run of the text decoder on new tokens after a cache of P positions (see the module docstring).
    forward(input_ids, past_key_0, past_value_0, ..., cross_key_0, cross_value_0, ...)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        text = model.config.text_config
        self.heads, self.head_dim = text.num_attention_heads, text.hidden_size // text.num_attention_heads

    def forward(self, input_ids: torch.Tensor, *caches: torch.Tensor) -> tuple[torch.Tensor, ...]:
        parts = text_decoder_parts(self.model)
        layers = len(parts.layers)
        past_kv, cross = caches[:2 * layers], caches[2 * layers:]
        past = past_kv[0].shape[2]
        pos = torch.arange(input_ids.shape[1], device=input_ids.device) + past
        hidden = embed_tokens(parts, input_ids, pos)
        mask = causal_mask(pos, torch.arange(past + input_ids.shape[1], device=input_ids.device), hidden.dtype)
        present: list[torch.Tensor] = []
        for index, layer in enumerate(parts.layers):
            own = layer.self_attention
            keys = torch.cat([past_kv[2 * index], split_heads(own.key(hidden), self.heads, self.head_dim)], dim=2)
            values = torch.cat([past_kv[2 * index + 1], split_heads(own.value(hidden), self.heads, self.head_dim)],
                               dim=2)
            present += [keys, values]
            hidden = text_layer(layer, hidden, (keys, values), (cross[2 * index], cross[2 * index + 1]), mask,
                                self.heads, self.head_dim)
        logits = parts.lm_head(hidden[:, -1:])[:, -1].float()
        return (logits, *present)
