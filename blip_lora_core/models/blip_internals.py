"""Every reach into transformers' BLIP internals, in one place; ``tests/test_compat.py`` runs the tests that
use them on each supported transformers line (4.57 and 5.x).

What the project reads beyond transformers' public API (from_pretrained, forward, generate, configs):

* ``BlipAttention`` (the vision encoder's attention): its ``qkv`` and ``projection`` linears, ``num_heads``,
  ``head_dim``, ``scale`` and ``dropout``, and its forward's keywords ``head_mask`` (transformers 4 passes the
  encoder's mask there) and ``output_attentions`` (transformers 4). The SDPA attention below computes with them.
* ``BlipVisionModel``'s call: ``output_attentions``, given or from its config. Transformers 4.57 and 5 record
  attention maps by wrapping or hooking the layers instead of asking them, so the SDPA attention learns
  from a hook on the vision model that maps are wanted and then runs transformers' own code. Transformers
  4 leaves each wrapped layer's forward behind as an instance attribute, which ``set_attention`` drops.
* the text decoder (``BlipTextLMHeadModel``): ``bert.embeddings`` (word and position embeddings, LayerNorm),
  each ``bert.encoder.layer`` (``attention`` and ``crossattention``: ``self.query/key/value`` and ``output``;
  ``intermediate``, ``output``) and ``cls`` (the LM head). The static-cache decoder (static_decoder.py)
  reproduces the decoder's eager computation from them: ``text_decoder_parts``.

Attention: ``set_attention(model, "sdpa")`` makes each ``BlipAttention`` a ``SdpaBlipAttention`` (its
subclass: same parameters and state-dict keys, LoRA hooks on qkv/projection still apply);
``set_attention(model, "eager")`` gives transformers' own code back. Model loading takes it as an option
(``load_blip(..., attention=...)``).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch
from torch import nn
from transformers.models.blip.modeling_blip import BlipAttention, BlipVisionModel

ATTENTIONS = ("sdpa", "eager")
_WATCHING = "_blip_lora_watches_attention_maps"  # set on a vision model once its two hooks are in
_maps = threading.local()  # per thread, a stack: whether the vision model call in progress records attention maps


class SdpaBlipAttention(BlipAttention):
    """BLIP's vision attention through ``torch.nn.functional.scaled_dot_product_attention``: the flash or
    memory-efficient kernels, no (B, heads, T, T) probabilities materialised (577 x 577 per head for
    BLIP-large), the same qkv and projection linears.

    Transformers' own forward runs instead when it gives something SDPA does not: a head mask, attention
    maps (asked of the layer, or recorded by the vision model), and on the CPU in bf16/fp16 or under CPU
    autocast, where oneDNN's half-precision matmuls beat the CPU flash kernel.
    """

    def forward(self, hidden_states: torch.Tensor, head_mask: torch.Tensor | None = None,
                **kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
        """hidden_states (B, T, E) -> (output (B, T, E), None); transformers' (output, probabilities) when it
        falls back."""
        if head_mask is not None or kwargs.get("output_attentions") or _maps_wanted() or _eager_is_faster(
                hidden_states):
            if head_mask is not None:
                kwargs["head_mask"] = head_mask
            return super().forward(hidden_states, **kwargs)
        batch, tokens, embed = hidden_states.shape
        qkv = self.qkv(hidden_states).reshape(batch, tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        context = nn.functional.scaled_dot_product_attention(
            qkv[0], qkv[1], qkv[2], dropout_p=self.dropout.p if self.training else 0.0, scale=self.scale)
        return self.projection(context.transpose(1, 2).reshape(batch, tokens, embed)), None


def set_attention(model: nn.Module, attention: str) -> int:
    """Make every vision attention layer of model "sdpa" (SdpaBlipAttention) or "eager" (transformers'
    BlipAttention); returns how many layers changed. ValueError for another name."""
    if attention not in ATTENTIONS:
        raise ValueError(f"attention must be one of {', '.join(ATTENTIONS)}, got {attention!r}")
    target = SdpaBlipAttention if attention == "sdpa" else BlipAttention
    changed = 0
    for module in model.modules():
        if isinstance(module, BlipAttention) and type(module) is not target:
            module.__class__ = target
            _drop_stale_forward(module)
            changed += 1
        if isinstance(module, BlipVisionModel):
            _watch_attention_maps(module)
    return changed


def _drop_stale_forward(module: BlipAttention) -> None:
    """Transformers 4 records attention maps by wrapping each layer's forward and then "restores" it as an
    instance attribute: a method bound to the class the layer had then, which would outlive a class change."""
    bound = vars(module).get("forward")
    if getattr(bound, "__self__", None) is module:
        del module.forward


def attention_of(model: nn.Module) -> str:
    """"sdpa" when the model's vision attention runs through SdpaBlipAttention, else "eager"."""
    return "sdpa" if any(isinstance(m, SdpaBlipAttention) for m in model.modules()) else "eager"


def _watch_attention_maps(vision: BlipVisionModel) -> None:
    """Hooks that tell SdpaBlipAttention, for the duration of a vision model call, whether it records maps
    (installed once; they copy with the model, and with eager attention they only keep a flag)."""
    if not getattr(vision, _WATCHING, False):
        vision.register_forward_pre_hook(_enter, with_kwargs=True)
        vision.register_forward_hook(_leave, with_kwargs=True, always_call=True)
        setattr(vision, _WATCHING, True)


def _enter(module: BlipVisionModel, args: tuple, kwargs: dict) -> None:
    wanted = kwargs.get("output_attentions")
    _stack().append(bool(getattr(module.config, "output_attentions", False) if wanted is None else wanted))


def _leave(module: BlipVisionModel, args: tuple, kwargs: dict, output) -> None:
    _stack().pop()


def _stack() -> list[bool]:
    if not hasattr(_maps, "stack"):
        _maps.stack = []
    return _maps.stack


def _maps_wanted() -> bool:
    stack = getattr(_maps, "stack", None)
    return bool(stack and stack[-1])


def _eager_is_faster(hidden_states: torch.Tensor) -> bool:
    if hidden_states.device.type != "cpu":
        return False
    return hidden_states.dtype != torch.float32 or torch.is_autocast_enabled("cpu")


# ------------------------------------------------------------------ the text decoder, for static_decoder.py


@dataclass(frozen=True)
class AttentionParts:
    """One attention block of a BERT layer: query/key/value linears and the output block
    ((context, residual) -> hidden: dense, dropout, LayerNorm)."""

    query: nn.Module
    key: nn.Module
    value: nn.Module
    output: nn.Module


@dataclass(frozen=True)
class TextLayerParts:
    """One BERT layer of BLIP's text decoder: causal self-attention, cross-attention on the image, feed forward
    (``intermediate`` then ``output``: (intermediate, residual) -> hidden)."""

    self_attention: AttentionParts
    cross_attention: AttentionParts
    intermediate: nn.Module
    output: nn.Module


@dataclass(frozen=True)
class TextDecoderParts:
    """What the static decoder computes with: embeddings (word, position, their LayerNorm), the layers and
    the LM head ((B, T, hidden) -> (B, T, vocab))."""

    word_embeddings: nn.Module
    position_embeddings: nn.Module
    embeddings_norm: nn.Module
    layers: tuple[TextLayerParts, ...]
    lm_head: nn.Module


def text_decoder_parts(model) -> TextDecoderParts:
    """The modules of a BlipForConditionalGeneration's text decoder (read afresh: quantizing replaces them)."""
    bert = model.text_decoder.bert
    layers = tuple(TextLayerParts(_attention_parts(layer.attention), _attention_parts(layer.crossattention),
                                  layer.intermediate, layer.output) for layer in bert.encoder.layer)
    embed = bert.embeddings
    return TextDecoderParts(embed.word_embeddings, embed.position_embeddings, embed.LayerNorm, layers,
                            model.text_decoder.cls)


def _attention_parts(block) -> AttentionParts:
    return AttentionParts(block.self.query, block.self.key, block.self.value, block.output)
