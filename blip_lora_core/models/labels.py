"""Token ids and labels for BLIP captioning, built exactly as generate() consumes them.

A training sequence is ``[DEC] prompt caption [SEP]``: BLIP's bos ``[DEC]`` first (generate() puts it
there too, where public scripts wrongly train with ``[CLS]``), then the optional prompt, the caption and
the separator, which is the end-of-caption token. Labels are -100 on ``[DEC]``, the prompt and padding,
so only the caption and ``[SEP]`` are learned. Batches pad to their own longest sequence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100


@dataclass(frozen=True)
class TokenSpec:
    """The special token ids a BLIP text decoder uses."""

    bos_id: int
    sep_id: int
    pad_id: int
    max_length: int

    @classmethod
    def from_model(cls, model) -> TokenSpec:
        text = model.config.text_config
        return cls(text.bos_token_id, text.sep_token_id, text.pad_token_id, text.max_position_embeddings)


def prompt_ids(tokenizer: PreTrainedTokenizerBase, prompt: str | None) -> list[int]:
    """Token ids of a prompt without special tokens ([] for no prompt)."""
    if not prompt:
        return []
    return tokenizer(prompt, add_special_tokens=False).input_ids


def encode_example(tokenizer: PreTrainedTokenizerBase, spec: TokenSpec, text: str,
                   prompt: str | None = None) -> tuple[list[int], list[int]]:
    """One caption -> (input_ids, labels), both of length 2 + len(prompt) + len(caption) at most max_length."""
    head = [spec.bos_id] + prompt_ids(tokenizer, prompt)
    room = spec.max_length - len(head) - 1
    if room < 1:
        raise ValueError(f"prompt {prompt!r} leaves no room for a caption within {spec.max_length} tokens")
    caption = tokenizer(text, add_special_tokens=False).input_ids[:room]
    input_ids = head + caption + [spec.sep_id]
    labels = [IGNORE_INDEX] * len(head) + caption + [spec.sep_id]
    return input_ids, labels


def collate_text(tokenizer: PreTrainedTokenizerBase, spec: TokenSpec, texts: Sequence[str],
                 prompts: Sequence[str | None]) -> dict[str, torch.Tensor]:
    """Captions -> input_ids, attention_mask, labels, each (B, longest in batch); padding on the right."""
    encoded = [encode_example(tokenizer, spec, t, p) for t, p in zip(texts, prompts, strict=True)]
    width = max(len(ids) for ids, _ in encoded)
    input_ids = torch.full((len(encoded), width), spec.pad_id, dtype=torch.long)
    labels = torch.full((len(encoded), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, (ids, labs) in enumerate(encoded):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(labs)] = torch.tensor(labs)
        attention_mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def generation_prompt(tokenizer: PreTrainedTokenizerBase, spec: TokenSpec, prompt: str | None,
                      batch_size: int) -> torch.Tensor | None:
    """input_ids for BlipForConditionalGeneration.generate: (B, 2 + len(prompt)) or None without a prompt.

    generate() overwrites the first id with [DEC] and drops the last one, so the sequence is
    [DEC] prompt [SEP], and generation continues right after the prompt, as in training.
    """
    ids = prompt_ids(tokenizer, prompt)
    if not ids:
        return None
    return torch.tensor([[spec.bos_id] + ids + [spec.sep_id]] * batch_size, dtype=torch.long)


def strip_prompt(generated: torch.Tensor, prompt_length: int) -> torch.Tensor:
    """Drop [DEC] and the prompt's tokens from generate()'s output (B, T) -> (B, T - 1 - prompt_length)."""
    return generated[:, 1 + prompt_length:]


def token_loss_sum(model: nn.Module, batch: dict[str, torch.Tensor], label_smoothing: float = 0.0) -> torch.Tensor:
    """Sum over label tokens of the next-token cross-entropy: logits (B, T-1, V) vs labels (B, T-1).

    batch: pixel_values (B, 3, H, W), input_ids, attention_mask and labels (B, T) as CaptionCollator makes them.
    """
    logits = model(pixel_values=batch["pixel_values"], input_ids=batch["input_ids"],
                   attention_mask=batch["attention_mask"]).logits
    logits, labels = logits[:, :-1], batch["labels"][:, 1:]
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                                       ignore_index=IGNORE_INDEX, reduction="sum", label_smoothing=label_smoothing)


def label_token_count(batch: dict[str, torch.Tensor]) -> int:
    """The number of label tokens token_loss_sum sums over."""
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
