"""Caption images with a BLIP model and an optional LoRA adapter, batched, under inference_mode."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..lora.adapter_io import AdapterInfo, load_adapter
from .images import load_image
from .labels import TokenSpec, generation_prompt, prompt_ids, strip_prompt
from ..lora.hooks import merge_lora, remove_lora
from .loading import BlipBundle, load_blip

log = logging.getLogger(__name__)


class Captioner:
    """A loaded model that turns images into captions; adapters and prompt can change without reloading."""

    def __init__(self, bundle: BlipBundle, *, prompt: str | None = None, max_new_tokens: int = 30,
                 num_beams: int = 1, batch_size: int = 8):
        self.bundle = bundle
        self.prompt = prompt or None
        self.max_new_tokens = max_new_tokens
        self.num_beams = num_beams
        self.batch_size = batch_size
        self.adapter: AdapterInfo | None = None
        self._spec = TokenSpec.from_model(bundle.model)

    @classmethod
    def from_pretrained(cls, model: str, *, adapter: str | None = None, device: str | None = None,
                        dtype: str | None = None, merge_adapter: bool = True, prompt: str | None = None,
                        max_new_tokens: int = 30, num_beams: int = 1, revision: str | None = None,
                        batch_size: int = 8) -> "Captioner":
        bundle = load_blip(model, dtype=dtype, device=device, revision=revision)
        captioner = cls(bundle, prompt=prompt, max_new_tokens=max_new_tokens, num_beams=num_beams,
                        batch_size=batch_size)
        if adapter:
            captioner.set_adapter(adapter, merge=merge_adapter)
        return captioner

    @property
    def model(self):
        return self.bundle.model

    def set_adapter(self, path: str | Path | None, merge: bool = True) -> None:
        """Swap the LoRA adapter (None: the base model alone) without reloading the base model.

        Merged adapters are taken out by restoring the base weights kept at merge time, so that swapping
        many times never lets rounding (in fp16, say) drift the base weights.
        """
        remove_lora(self.model)
        self.adapter = None
        if not path:
            return
        self.adapter = load_adapter(self.model, path)
        self.model.eval()
        if merge:
            merge_lora(self.model, keep_base=True)
        log.info("adapter %s loaded (%s)", path, "merged" if merge else "hooked")

    def caption(self, images: Sequence[Image.Image | np.ndarray]) -> list[str]:
        """Images (PIL or (H, W, 3) uint8 RGB) -> one caption each, prompt stripped."""
        captions: list[str] = []
        for start in range(0, len(images), self.batch_size):
            captions.extend(self._caption_batch(images[start:start + self.batch_size]))
        return captions

    def caption_files(self, paths: Sequence[str | Path]) -> list[str]:
        """Image files -> one caption each; loads one batch of images at a time."""
        captions: list[str] = []
        for start in range(0, len(paths), self.batch_size):
            captions.extend(self.caption([load_image(p) for p in paths[start:start + self.batch_size]]))
        return captions

    @torch.inference_mode()
    def _caption_batch(self, images: Sequence[Image.Image | np.ndarray]) -> list[str]:
        model = self.model
        pixel_values = self.bundle.preprocess.batch(images).to(model.device, model.dtype)
        input_ids = generation_prompt(self.bundle.tokenizer, self._spec, self.prompt, len(images))
        kwargs = {}
        if input_ids is not None:
            kwargs = {"input_ids": input_ids.to(model.device), "attention_mask": torch.ones_like(input_ids).to(model.device)}
        generated = model.generate(pixel_values=pixel_values, max_new_tokens=self.max_new_tokens,
                                   num_beams=self.num_beams, do_sample=False, **kwargs)
        n_prompt = len(prompt_ids(self.bundle.tokenizer, self.prompt))
        texts = self.bundle.tokenizer.batch_decode(strip_prompt(generated, n_prompt), skip_special_tokens=True)
        return [text.strip() for text in texts]
