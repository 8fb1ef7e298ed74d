"""Caption images with a BLIP model and an optional LoRA adapter, batched, under inference_mode.

Greedy captions go through the static-cache decoder (static_decoder.py: the same tokens as generate(),
CUDA graphs on a GPU); beam search, and generation settings it does not copy, go through generate().
Each caption comes with its confidence (confidence.py), the same measure on every path.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..lora.adapter_io import AdapterInfo, load_adapter
from ..lora.hooks import merge_lora, remove_lora
from .batching import BatchCaptioning
from .caption_settings import CaptionSettings
from .confidence import CaptionResult, caption_confidence
from .labels import TokenSpec, generation_prompt, prompt_ids, strip_prompt
from .loading import BlipBundle, load_blip
from .quantize import cpu_has_bf16, quantize_int8
from .static_decoder import StaticGreedyDecoder, blocker

__all__ = ["CaptionResult", "Captioner"]

log = logging.getLogger(__name__)


class Captioner(BatchCaptioning):
    """A loaded model that turns images into captions; adapters and prompt can change without reloading.

    ``settings`` (CaptionSettings) holds prompt, lengths, beams, merge and quantize; keyword overrides
    replace fields of it. prompt, max_new_tokens and num_beams can be set as attributes (validated).
    device, dtype and attention only matter to from_pretrained: a bundle is used as it is.
    """

    def __init__(self, bundle: BlipBundle, settings: CaptionSettings | None = None, **overrides):
        self.bundle = bundle
        self.settings = (settings or CaptionSettings()).with_changes(**overrides)
        self.adapter: AdapterInfo | None = None
        self._spec = TokenSpec.from_model(bundle.model)
        # a prompt's token ids, tokenized once per prompt (not three times per batch)
        self._prompt_ids = functools.lru_cache(maxsize=8)(lambda text: tuple(prompt_ids(bundle.tokenizer, text)))
        self._quantized: torch.nn.Module | None = None
        self._decoder: StaticGreedyDecoder | None = None

    @classmethod
    def from_pretrained(cls, model: str, settings: CaptionSettings | None = None, *, adapter: str | None = None,
                        revision: str | None = None, **overrides) -> Captioner:
        settings = (settings or CaptionSettings()).with_changes(**overrides)
        bundle = load_blip(model, dtype=settings.dtype, device=settings.device, revision=revision,
                           attention=settings.attention)
        if bundle.model.dtype == torch.bfloat16 and bundle.model.device.type == "cpu" and not cpu_has_bf16():
            log.warning("dtype bf16 on a CPU without AVX512-BF16/AMX: emulated, likely slower than fp32")
        captioner = cls(bundle, settings)
        if adapter:
            captioner.set_adapter(adapter, merge=settings.merge)
        return captioner

    @property
    def model(self):
        return self.bundle.model

    # prompt, max_new_tokens and num_beams change at run time (the node's parameters); each goes through
    # CaptionSettings' validation
    @property
    def prompt(self) -> str | None:
        return self.settings.prompt

    @prompt.setter
    def prompt(self, value: str | None) -> None:
        self.settings = self.settings.with_changes(prompt=value)

    @property
    def max_new_tokens(self) -> int:
        return self.settings.max_new_tokens

    @max_new_tokens.setter
    def max_new_tokens(self, value: int) -> None:
        self.settings = self.settings.with_changes(max_new_tokens=value)

    @property
    def num_beams(self) -> int:
        return self.settings.num_beams

    @num_beams.setter
    def num_beams(self, value: int) -> None:
        self.settings = self.settings.with_changes(num_beams=value)

    def max_new_tokens_limit(self, prompt: str | None) -> int:
        """The most new tokens the text decoder's positions hold after the start token and ``prompt``."""
        return self._spec.max_length - 1 - len(self._prompt_ids(prompt))

    def set_adapter(self, path: str | Path | None, merge: bool = True) -> None:
        """Swap the LoRA adapter (None: the base model alone) without reloading the base model.

        Merged adapters are taken out by restoring the base weights kept at merge time, so that swapping
        many times never lets rounding (in fp16, say) drift the base weights.
        """
        self.settings = self.settings.with_changes(merge=merge)
        self._quantized = None
        self._decoder = None  # captured graphs may point at hook parameters that are about to go
        remove_lora(self.model)
        self.adapter = None
        if not path:
            return
        self.adapter = load_adapter(self.model, path)
        self.model.eval()
        if merge:
            merge_lora(self.model, keep_base=True)
        log.info("adapter %s loaded (%s)", path, "merged" if merge else "hooked")

    def _inference_model(self) -> torch.nn.Module:
        """The model that captions: the loaded one, or its int8 copy (made once per adapter)."""
        if self.settings.quantize != "int8":
            return self.model
        if self._quantized is None:
            self._quantized = quantize_int8(self.model)
            self._decoder = None
        return self._quantized

    def _fast_blocker(self) -> str | None:
        """Why captions go through generate() instead of the static-cache decoder, or None."""
        if not self.settings.fast:
            return "fast path off"
        n_prompt = len(self._prompt_ids(self.prompt))
        return blocker(self.model, self.num_beams, n_prompt, self.max_new_tokens)

    def describe(self) -> str:
        """One line naming the decoding path, device, dtype and quantization, for logs and diagnostics."""
        reason = self._fast_blocker()
        if reason is None:
            graphs = self.model.device.type == "cuda" and (self._decoder is None or self._decoder.graphs)
            path = "fast static-cache" + (" + CUDA graphs" if graphs else " (eager)")
        else:
            path = f"generate ({reason})"
        dtype = str(self.model.dtype).removeprefix("torch.")
        return f"{path}, {self.model.device.type}, {dtype}, quantize {self.settings.quantize or 'none'}"

    @torch.inference_mode()
    def generate_ids(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values (B, 3, S, S) on the model's device -> ids (B, 1 + prompt + n) as generate() gives them."""
        return self.generate_with_log_probs(pixel_values)[0]

    @torch.inference_mode()
    def generate_with_log_probs(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """pixel_values (B, 3, S, S) -> ids (B, 1 + prompt + n) as generate() gives them, and the log-probability
        (B, n) the model gave each generated token (float32; the softmax of the raw logits)."""
        model = self._inference_model()
        ids = self._prompt_ids(self.prompt)
        if self._fast_blocker() is None:
            if self._decoder is None:
                self._decoder = StaticGreedyDecoder(model)
            return self._decoder.decode(pixel_values, ids, self.max_new_tokens,
                                        min_new_tokens=model.text_decoder.generation_config.min_new_tokens or 0)
        input_ids = generation_prompt(self.bundle.tokenizer, self._spec, self.prompt, pixel_values.shape[0])
        kwargs = {}
        if input_ids is not None:
            input_ids = input_ids.to(pixel_values.device)
            kwargs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
        out = model.generate(pixel_values=pixel_values, max_new_tokens=self.max_new_tokens,
                             num_beams=self.num_beams, do_sample=False, return_dict_in_generate=True,
                             output_scores=self.num_beams > 1, output_logits=self.num_beams == 1, **kwargs)
        return out.sequences, self._generated_log_probs(model, out)

    def _generated_log_probs(self, model: torch.nn.Module, out) -> torch.Tensor:
        """generate()'s output -> (B, n) log-probabilities of the generated tokens: from the raw logits when
        greedy, from the chosen beams' transition scores (log-softmax) with beam search."""
        n = len(out.logits if self.num_beams == 1 else out.scores)
        generated = out.sequences[:, out.sequences.shape[1] - n:]
        if self.num_beams > 1:
            return model.text_decoder.compute_transition_scores(out.sequences, out.scores, out.beam_indices,
                                                                normalize_logits=False).float()
        steps = torch.stack(out.logits, dim=1).float().log_softmax(-1)  # (B, n, V)
        return steps.gather(2, generated[..., None])[..., 0]

    def _caption_batch(self, images: Sequence[Image.Image | np.ndarray]) -> list[CaptionResult]:
        model = self.model
        pixel_values = self.bundle.preprocess.batch(images).to(model.device, model.dtype)
        generated, log_probs = self.generate_with_log_probs(pixel_values)
        n_prompt = len(self._prompt_ids(self.prompt))
        new_ids = strip_prompt(generated, n_prompt)
        texts = self.bundle.tokenizer.batch_decode(new_ids, skip_special_tokens=True)
        eos = model.config.text_config.sep_token_id
        confidence, tokens = caption_confidence(new_ids.cpu().numpy(), log_probs.cpu().numpy(), eos)
        return [CaptionResult(text.strip(), float(c), int(k)) for text, c, k in zip(texts, confidence, tokens,
                                                                                     strict=True)]
