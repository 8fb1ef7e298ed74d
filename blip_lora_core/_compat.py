"""What differs between the supported transformers versions (4.40-4.57 and 5.x), in one place: the version
switches only. Reaches into transformers' BLIP internals live in models/blip_internals.py."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers
from transformers import BertTokenizerFast

TRANSFORMERS_MAJOR = int(transformers.__version__.split(".")[0])


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
