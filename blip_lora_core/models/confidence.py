"""How sure the model was of a caption: the geometric-mean probability of its generated tokens.

confidence = exp(mean over the caption's tokens of log p(token)), the [SEP] that ends it included and the
[PAD] after it left out; p is the model's own next-token distribution (softmax of the raw logits), whichever
path decoded the caption. 1.0: every token was certain; a caption the model hesitated over scores low. The
node publishes it, the bag tools and the labelling order use it. numpy only, so torch-free runtimes share it.
"""

from __future__ import annotations

import numpy as np


def caption_token_mask(generated: np.ndarray, eos_id: int) -> np.ndarray:
    """generated (B, n) token ids after the prompt -> (B, n) bool: the tokens up to and including each row's
    first [SEP] (every token when a row never ends)."""
    is_eos = generated == eos_id
    ended_before = np.cumsum(is_eos, axis=1) - is_eos > 0
    return ~ended_before


def caption_confidence(generated: np.ndarray, log_probs: np.ndarray, eos_id: int) -> tuple[np.ndarray, np.ndarray]:
    """generated (B, n) ids and log_probs (B, n) of those ids -> confidence (B,) float in (0, 1] and the number
    of caption tokens (B,) int, [SEP] included. A row with no token (n = 0) has confidence 1.0."""
    mask = caption_token_mask(np.asarray(generated), eos_id)
    tokens = mask.sum(axis=1)
    total = np.where(mask, np.asarray(log_probs, dtype=np.float64), 0.0).sum(axis=1)
    mean = np.divide(total, tokens, out=np.zeros_like(total), where=tokens > 0)
    return np.exp(mean), tokens
