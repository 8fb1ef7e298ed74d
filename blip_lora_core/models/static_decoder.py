"""Greedy BLIP captioning with a static KV cache: the same tokens as ``generate()``, fewer operations per token.

Every decoding step has the same shapes: self-attention K/V caches preallocated to the whole caption's
length and masked by position, cross-attention K/V computed once per image. On CUDA the whole caption
(vision encoder, prefill, every step) is captured as one CUDA graph per (batch bucket, prompt length,
new tokens) and replayed; batches are padded to the next bucket (1, 2, 4, 8, ...) so a few graphs serve
every batch size. On the CPU it runs eagerly, at the exact batch size, and stops once every row has ended.

It reads the text decoder's submodules (embeddings, per-layer query/key/value, attention output, feed
forward, LM head: ``blip_internals.text_decoder_parts``) and reproduces transformers' eager attention
(matmul, scale, additive mask, softmax, matmul); ``blocker()`` names what it does not reproduce (beams,
sampling, other logits processors), in which case callers use ``generate()``.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .._compat import TRANSFORMERS_MAJOR
from .blip_internals import AttentionParts, TextDecoderParts, text_decoder_parts

log = logging.getLogger(__name__)

# generation_config fields whose non-default values change greedy decoding in ways this decoder does not copy
_UNSUPPORTED = {"do_sample": False, "num_beams": 1, "repetition_penalty": 1.0, "no_repeat_ngram_size": 0,
                "encoder_repetition_penalty": 1.0, "encoder_no_repeat_ngram_size": 0, "bad_words_ids": None,
                "suppress_tokens": None, "begin_suppress_tokens": None, "forced_bos_token_id": None,
                "forced_eos_token_id": None, "sequence_bias": None, "exponential_decay_length_penalty": None,
                "min_length": 0, "stop_strings": None, "max_time": None, "num_return_sequences": 1}
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


def blocker(model, num_beams: int, prompt_length: int, max_new_tokens: int) -> str | None:
    """Why the static decoder cannot stand in for ``model.generate()`` here, or None when it can."""
    if TRANSFORMERS_MAJOR < 5:  # its generate() stops and pads differently; tokens are checked on 5.x only
        return f"transformers {TRANSFORMERS_MAJOR}.x"
    if num_beams != 1:
        return f"beam search ({num_beams} beams)"
    config = model.text_decoder.generation_config  # BLIP's generate() hands decoding to the text decoder
    for name, default in _UNSUPPORTED.items():
        value = getattr(config, name, default)
        if value is not None and value != default:
            return f"generation_config.{name}={value!r}"
    limit = model.config.text_config.max_position_embeddings
    if 1 + prompt_length + max_new_tokens > limit:
        return f"{1 + prompt_length + max_new_tokens} tokens exceed the {limit} positions"
    return None


def bucket(batch: int, buckets: Sequence[int] = BATCH_BUCKETS) -> int:
    """The smallest bucket holding ``batch`` rows (batch itself beyond the largest)."""
    return next((b for b in buckets if b >= batch), batch)


@dataclass
class _Plan:
    """Buffers (and on CUDA a graph) for one (batch, prompt length, new tokens) shape."""

    pixels: torch.Tensor  # (B, 3, S, S)
    prompt: torch.Tensor  # (B, 1 + P) long: [DEC] prompt
    keys: torch.Tensor  # (layers, B, heads, L, head_dim), L = 1 + P + new tokens
    values: torch.Tensor
    out: torch.Tensor  # (B, L) long
    log_probs: torch.Tensor  # (B, L) float32: log p of each generated token (0 at the prompt and after [SEP])
    graph: torch.cuda.CUDAGraph | None = None
    live: int = 0  # rows holding real images this call; the rest pad the batch to its bucket


class StaticGreedyDecoder:
    """Greedy captions of a BlipForConditionalGeneration with a static KV cache (see the module docstring).

    graphs: capture CUDA graphs (default: on CUDA devices). batch_buckets: pad batches to these sizes
    (default: BATCH_BUCKETS with graphs, none without). The model's weights may change in place between
    calls (merging an adapter); after modules or hooks change, make a new decoder (graphs record them).
    """

    def __init__(self, model, *, graphs: bool | None = None, batch_buckets: Sequence[int] | None = None,
                 max_plans: int = 8):
        self.model = model
        param = next(model.parameters())
        self.device = param.device
        self.graphs = self.device.type == "cuda" if graphs is None else graphs
        if self.graphs and self.device.type != "cuda":
            raise ValueError("CUDA graphs need the model on a CUDA device")
        self.batch_buckets = tuple(batch_buckets) if batch_buckets is not None else (
            BATCH_BUCKETS if self.graphs else ())
        self.max_plans = max_plans
        text = model.config.text_config
        self.heads = text.num_attention_heads
        self.head_dim = text.hidden_size // text.num_attention_heads
        self.bos, self.eos, self.pad = text.bos_token_id, text.sep_token_id, text.pad_token_id
        self._plans: OrderedDict[tuple[int, int, int, int], _Plan] = OrderedDict()

    # ------------------------------------------------------------ the computation

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, hidden) -> (B, heads, T, head_dim)."""
        return x.view(x.shape[0], x.shape[1], self.heads, self.head_dim).transpose(1, 2)

    def _attend(self, attention: AttentionParts, hidden: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """transformers' eager BLIP text attention + its output block, on given K/V (B, heads, L, head_dim)."""
        query = self._split(attention.query(hidden))
        scores = torch.matmul(query, keys.transpose(-1, -2)) / math.sqrt(self.head_dim)
        if mask is not None:
            scores = scores + mask
        context = torch.matmul(torch.softmax(scores, dim=-1), values)
        context = context.permute(0, 2, 1, 3).reshape(hidden.shape)
        return attention.output(context, hidden)

    def _forward(self, plan: _Plan, parts: TextDecoderParts, tokens: torch.Tensor, pos: torch.Tensor, cross: list,
                 first_eos: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens (B, T) at positions pos (T,) -> next-token ids (B,) and their log-probabilities (B,) under the
        model's distribution (before the min_new_tokens [SEP] ban); writes the tokens' K/V into the caches."""
        hidden = parts.embeddings_norm(parts.word_embeddings(tokens) + parts.position_embeddings(pos)[None])
        positions = torch.arange(plan.keys.shape[3], device=tokens.device)
        mask = torch.zeros(pos.shape[0], positions.shape[0], dtype=hidden.dtype, device=tokens.device)
        mask = mask.masked_fill(positions[None, :] > pos[:, None], float("-inf"))[None, None]
        for index, layer in enumerate(parts.layers):
            own = layer.self_attention
            # .to: under autocast the projections come out in bf16/fp16 while the cache has the weights' dtype
            plan.keys[index].index_copy_(2, pos, self._split(own.key(hidden)).to(plan.keys.dtype))
            plan.values[index].index_copy_(2, pos, self._split(own.value(hidden)).to(plan.values.dtype))
            hidden = self._attend(own, hidden, plan.keys[index], plan.values[index], mask)
            hidden = self._attend(layer.cross_attention, hidden, *cross[index])
            hidden = layer.output(layer.intermediate(hidden), hidden)
        logits = parts.lm_head(hidden[:, -1:])[:, -1].float()
        log_probs = torch.log_softmax(logits, dim=-1)
        if first_eos:
            logits[:, self.eos] = float("-inf")
        token = logits.argmax(-1)
        return token, log_probs.gather(1, token[:, None])[:, 0]

    def _run(self, plan: _Plan, min_new_tokens: int, stop_early: bool) -> int:
        """plan.pixels, plan.prompt -> plan.out; returns how many tokens were generated."""
        parts = text_decoder_parts(self.model)
        image = self.model.vision_model(pixel_values=plan.pixels)[0]
        cross = [(self._split(layer.cross_attention.key(image)), self._split(layer.cross_attention.value(image)))
                 for layer in parts.layers]
        start = plan.prompt.shape[1]
        new_tokens = plan.out.shape[1] - start
        plan.out[:, :start] = plan.prompt
        plan.log_probs.zero_()
        positions = torch.arange(plan.out.shape[1], device=plan.out.device)
        tokens, pos = plan.prompt, positions[:start]
        done = torch.zeros(plan.out.shape[0], dtype=torch.bool, device=plan.out.device)
        if stop_early:
            done[plan.live:] = True  # padding rows never hold the batch up
        for step in range(new_tokens):
            at = start + step
            token, log_prob = self._forward(plan, parts, tokens, pos, cross, first_eos=step < min_new_tokens)
            # rows that ended get (and are fed) [PAD], as generate() does: with int8 activations quantized per
            # tensor, what one row is fed changes the others' numbers
            plan.out[:, at] = token.masked_fill(done, self.pad)
            plan.log_probs[:, at] = log_prob.masked_fill(done, 0.0)
            done = done | (plan.out[:, at] == self.eos)
            if stop_early and bool(done.all()):
                return step + 1
            tokens, pos = plan.out[:, at:at + 1], positions[at:at + 1]
        return new_tokens

    # ------------------------------------------------------------ plans and graphs

    def _plan(self, batch: int, prompt_length: int, new_tokens: int, min_new_tokens: int) -> _Plan:
        key = (batch, prompt_length, new_tokens, min_new_tokens)
        if key in self._plans:
            self._plans.move_to_end(key)
            return self._plans[key]
        while len(self._plans) >= self.max_plans:
            self._plans.popitem(last=False)
        param = next(self.model.parameters())
        dtype = param.dtype if param.is_floating_point() else torch.float32
        layers = len(text_decoder_parts(self.model).layers)
        size = self.model.config.vision_config.image_size
        length = 1 + prompt_length + new_tokens
        keys = torch.zeros(layers, batch, self.heads, length, self.head_dim, device=self.device, dtype=dtype)
        plan = _Plan(torch.zeros(batch, 3, size, size, device=self.device, dtype=dtype),
                     torch.full((batch, 1 + prompt_length), self.bos, dtype=torch.long, device=self.device),
                     keys, torch.zeros_like(keys),
                     torch.full((batch, length), self.pad, dtype=torch.long, device=self.device),
                     torch.zeros(batch, length, dtype=torch.float32, device=self.device))
        if self.graphs:
            try:
                self._capture(plan, min_new_tokens)
            except RuntimeError as error:  # capture unsupported here: the same decoder, eagerly
                log.warning("CUDA graph capture failed, decoding eagerly: %s", error)
                self.graphs, self.batch_buckets = False, ()
        self._plans[key] = plan
        return plan

    def _capture(self, plan: _Plan, min_new_tokens: int) -> None:
        """Record the whole caption as one CUDA graph (after two warm-up runs on a side stream)."""
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(2):
                self._run(plan, min_new_tokens, stop_early=False)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._run(plan, min_new_tokens, stop_early=False)
        plan.graph = graph

    @torch.inference_mode()
    def generate(self, pixel_values: torch.Tensor, prompt: Sequence[int] = (), max_new_tokens: int = 30,
                 min_new_tokens: int = 0) -> torch.Tensor:
        """pixel_values (B, 3, S, S) -> ids (B, 1 + len(prompt) + n) exactly as ``model.generate()`` returns
        them for input_ids [DEC] prompt [SEP]: greedy, ended by [SEP], [PAD] after a row's [SEP], and n the
        step at which the last row ended (at most max_new_tokens)."""
        return self.decode(pixel_values, prompt, max_new_tokens, min_new_tokens)[0]

    @torch.inference_mode()
    def decode(self, pixel_values: torch.Tensor, prompt: Sequence[int] = (), max_new_tokens: int = 30,
               min_new_tokens: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """``generate()``'s ids (B, 1 + P + n) and the log-probability of each generated token (B, n), float32,
        0 after a row's [SEP]."""
        batch = pixel_values.shape[0]
        rows = bucket(batch, self.batch_buckets) if self.batch_buckets else batch
        min_new = min(min_new_tokens, max_new_tokens)
        plan = self._plan(rows, len(prompt), max_new_tokens, min_new)
        plan.live = batch
        plan.pixels[:batch].copy_(pixel_values)
        plan.pixels[batch:].zero_()
        plan.prompt[:, 1:] = torch.tensor(list(prompt), dtype=torch.long, device=self.device)
        if plan.graph is not None:
            plan.graph.replay()
            made = max_new_tokens
        else:
            made = self._run(plan, min_new, stop_early=True)
        start = plan.prompt.shape[1]
        ids = self._finish(plan.out[:batch, :start + made], start)
        return ids, plan.log_probs[:batch, start:ids.shape[1]].clone()

    def _finish(self, out: torch.Tensor, start: int) -> torch.Tensor:
        """Cut the columns after the step at which the last row ended ([PAD] already follows each [SEP])."""
        ended = (out[:, start:] == self.eos).int().cumsum(1)
        if bool((ended[:, -1] > 0).all()):
            last = int((ended == 0).sum(1).max())  # the latest first-[SEP] index
            out = out[:, :start + last + 1]
        return out.clone()
