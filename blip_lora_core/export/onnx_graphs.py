"""The two graphs of an ONNX export, as torch modules that trace into ONNX: the same computation as the
static-cache decoder (its step functions), with a cache that grows by concatenation instead of a static one.

VisionGraph:  pixel_values (B, 3, S, S) -> cross_keys, cross_values (layers, B, heads, N, head_dim)
DecoderGraph: input_ids (B, T), past_keys / past_values (layers, B, heads, P, head_dim), cross_keys /
              cross_values -> logits (B, vocab) float32 of the last position, present_keys / present_values
              (layers, B, heads, P + T, head_dim)

Prefill is T = 1 + prompt tokens with P = 0; each later step is T = 1. Positions are P .. P + T - 1.
"""

from __future__ import annotations

import torch
from torch import nn

from ..models.blip_internals import text_decoder_parts
from ..models.static_decoder import causal_mask, cross_kv, embed_tokens, split_heads, text_layer

VISION_INPUTS = ["pixel_values"]
VISION_OUTPUTS = ["cross_keys", "cross_values"]
DECODER_INPUTS = ["input_ids", "past_keys", "past_values", "cross_keys", "cross_values"]
DECODER_OUTPUTS = ["logits", "present_keys", "present_values"]
# the dimensions that vary: batch everywhere, tokens fed, cache length
VISION_AXES = {"pixel_values": {0: "batch"}, "cross_keys": {1: "batch"}, "cross_values": {1: "batch"}}
DECODER_AXES = {"input_ids": {0: "batch", 1: "tokens"}, "past_keys": {1: "batch", 3: "past"},
                "past_values": {1: "batch", 3: "past"}, "cross_keys": {1: "batch"}, "cross_values": {1: "batch"},
                "logits": {0: "batch"}, "present_keys": {1: "batch", 3: "total"},
                "present_values": {1: "batch", 3: "total"}}


class VisionGraph(nn.Module):
    """The vision encoder and every text layer's cross-attention K/V projection: once per image."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        text = model.config.text_config
        self.heads, self.head_dim = text.num_attention_heads, text.hidden_size // text.num_attention_heads

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = cross_kv(self.model, text_decoder_parts(self.model), pixel_values, self.heads, self.head_dim)
        return torch.stack([k for k, _ in pairs]), torch.stack([v for _, v in pairs])


class DecoderGraph(nn.Module):
    """One run of the text decoder on new tokens after a cache of P positions (see the module docstring)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        text = model.config.text_config
        self.heads, self.head_dim = text.num_attention_heads, text.hidden_size // text.num_attention_heads

    def forward(self, input_ids: torch.Tensor, past_keys: torch.Tensor, past_values: torch.Tensor,
                cross_keys: torch.Tensor, cross_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        parts = text_decoder_parts(self.model)
        past = past_keys.shape[3]
        pos = torch.arange(input_ids.shape[1], device=input_ids.device) + past
        hidden = embed_tokens(parts, input_ids, pos)
        mask = causal_mask(pos, torch.arange(past + input_ids.shape[1], device=input_ids.device), hidden.dtype)
        keys, values = [], []
        for index, layer in enumerate(parts.layers):
            own = layer.self_attention
            new_keys = split_heads(own.key(hidden), self.heads, self.head_dim)
            new_values = split_heads(own.value(hidden), self.heads, self.head_dim)
            keys.append(torch.cat([past_keys[index], new_keys], dim=2))
            values.append(torch.cat([past_values[index], new_values], dim=2))
            hidden = text_layer(layer, hidden, (keys[-1], values[-1]), (cross_keys[index], cross_values[index]),
                                mask, self.heads, self.head_dim)
        logits = parts.lm_head(hidden[:, -1:])[:, -1].float()
        return logits, torch.stack(keys), torch.stack(values)
