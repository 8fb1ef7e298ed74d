"""Caption images with an exported ONNX folder on ONNX Runtime: numpy, tokenizers, Pillow and onnxruntime only.

The same greedy decoding as ``generate()`` and the static-cache decoder: the vision encoder runs once per
batch and gives every text layer's cross-attention K/V; the text decoder then runs the prefill ([DEC] and the
prompt) and one step per new token on a growing self-attention cache, which stays on the device between steps
(I/O binding). Rows that ended are fed [PAD], as generate() does; decoding stops when every row has ended.
Used duck-typed like ``blip_lora_core.models.captioning.Captioner`` (the CLI, the node).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from PIL import Image
from tokenizers import Tokenizer

from ..errors import BlipLoraError, ConfigError
from ..models.batching import BatchCaptioning
from ..models.caption_settings import CaptionSettings
from ..models.confidence import CaptionResult, caption_confidence
from ..models.preprocess import ImagePreprocessor
from .folder import (
    DECODER,
    PREPROCESSOR,
    TOKENIZER,
    VISION,
    cross_names,
    past_names,
    present_names,
    read_manifest,
    sha256_file,
)
from .providers import CUDA, TENSORRT, Placement, describe_providers, place

log = logging.getLogger(__name__)

_NUMPY_DTYPES = {"fp32": np.float32, "fp16": np.float16}


class OrtCaptioner(BatchCaptioning):
    """An exported folder loaded into two ONNX Runtime sessions; turns images into captions.

    ``settings`` (CaptionSettings): prompt, max_new_tokens and batch_size apply; num_beams must be 1
    (greedy); dtype and quantize, when given, must be the export's; device picks the providers (None: CUDA
    and TensorRT when present, else the CPU). ``threads``: intra-op threads per session (None: onnxruntime's
    default, one per core). ``providers``: the list onnxruntime offers (default: what it reports).
    """

    def __init__(self, folder: str | Path, settings: CaptionSettings | None = None, *, threads: int | None = None,
                 providers: Sequence[str] | None = None, **overrides: Any):
        self.folder = Path(folder).expanduser()
        self.manifest = read_manifest(self.folder)
        self.settings = self._checked((settings or CaptionSettings()).with_changes(**overrides))
        available = list(providers if providers is not None else ort.get_available_providers())
        self.placement: Placement = place(self.manifest, self.settings.device, available,
                                          max_batch=self.settings.batch_size)
        self.tokenizer = Tokenizer.from_file(str(self.folder / TOKENIZER))
        self.preprocess = ImagePreprocessor.from_dict(_read_json(self.folder / PREPROCESSOR))
        self._dtype = _NUMPY_DTYPES[self.manifest.dtype]
        layers = self.manifest.shapes.layers
        self._past, self._present, self._cross = past_names(layers), present_names(layers), cross_names(layers)
        self._vision = self._session(VISION, self.placement.vision, threads)
        self._decoder = self._session(DECODER, self.placement.decoder, threads)
        if self.placement.device == "cuda" and self._decoder.get_providers()[0] not in (CUDA, TENSORRT):
            # onnxruntime drops a provider that fails to load (no CUDA library, say) and goes on on the CPU
            log.warning("%s: the CUDA provider did not load; captioning on the CPU", self.folder)
            self.placement = dataclasses.replace(self.placement, device="cpu", device_id=0)
        self._prompt_ids = functools.lru_cache(maxsize=8)(self._encode_prompt)

    @classmethod
    def from_folder(cls, folder: str | Path, settings: CaptionSettings | None = None, *, adapter: str | None = None,
                    revision: str | None = None, **overrides: Any) -> OrtCaptioner:
        """Like Captioner.from_pretrained: ``adapter`` may only name the adapter merged at export (same sha256);
        a revision pins hub models, not exported folders."""
        if revision:
            raise ConfigError(f"{folder}: an ONNX export has no revisions (--revision is for hub models)")
        captioner = cls(folder, settings, **overrides)
        if adapter:
            captioner.set_adapter(adapter)
        merged = f" (adapter {captioner.adapter} merged at export)" if captioner.adapter else ""
        log.info("ONNX export %s%s: %s", captioner.folder, merged, captioner.describe())
        return captioner

    # ------------------------------------------------------------ settings (the Captioner's interface)

    def _checked(self, settings: CaptionSettings) -> CaptionSettings:
        """ConfigError for a setting this export cannot honour."""
        m = self.manifest
        if settings.num_beams != 1:
            raise ConfigError(f"{self.folder}: the ONNX captioner decodes greedily; num_beams must be 1, "
                              f"got {settings.num_beams}")
        if settings.dtype not in (None, m.dtype, {"fp32": "float32", "fp16": "float16"}[m.dtype]):
            raise ConfigError(f"{self.folder}: exported in {m.dtype}; dtype {settings.dtype} needs another export "
                              "(blip-lora export --format onnx --dtype ...)")
        if settings.quantize not in (None, m.quantize):
            raise ConfigError(f"{self.folder}: exported with quantize {m.quantize or 'none'}; quantize "
                              f"{settings.quantize} needs another export (--quantize {settings.quantize})")
        if not settings.merge:
            raise ConfigError(f"{self.folder}: the adapter is merged into the exported weights; merge=False "
                              "(hooks) needs the torch captioner")
        return settings

    @property
    def prompt(self) -> str | None:
        return self.settings.prompt

    @prompt.setter
    def prompt(self, value: str | None) -> None:
        self.settings = self._checked(self.settings.with_changes(prompt=value))

    @property
    def max_new_tokens(self) -> int:
        return self.settings.max_new_tokens

    @max_new_tokens.setter
    def max_new_tokens(self, value: int) -> None:
        self.settings = self._checked(self.settings.with_changes(max_new_tokens=value))

    @property
    def num_beams(self) -> int:
        return self.settings.num_beams

    @num_beams.setter
    def num_beams(self, value: int) -> None:
        self.settings = self._checked(self.settings.with_changes(num_beams=value))

    @property
    def adapter(self) -> str:
        """The file name of the adapter merged at export ('' for the base model alone)."""
        return self.manifest.adapter

    @property
    def device(self) -> str:
        p = self.placement
        return f"cuda:{p.device_id}" if p.device == "cuda" else "cpu"

    def max_new_tokens_limit(self, prompt: str | None) -> int:
        """The most new tokens the text positions hold after [DEC] and ``prompt``."""
        return self.manifest.shapes.max_positions - 1 - len(self._prompt_ids(prompt))

    def set_adapter(self, path: str | Path | None, merge: bool = True) -> None:
        """The adapter is merged at export, so only two values keep the export as it is (no-ops): none (the
        export as exported) and the merged adapter's own file (same sha256); check_adapter refuses the rest."""
        if not merge and path:
            raise ConfigError(f"{self.folder}: the adapter is merged into the exported weights; merge=False "
                              "(hooks) needs the torch captioner")
        self.check_adapter(path)

    def check_adapter(self, path: str | Path | None) -> None:
        """ConfigError unless ``path`` is none or the merged adapter's file; cheap (a file hash, no model work)."""
        m = self.manifest
        if not path or (m.adapter_sha256 and _sha256(path) == m.adapter_sha256):
            return
        merged = f"adapter {m.adapter} merged in" if m.adapter else "no adapter"
        raise ConfigError(f"{self.folder} is an ONNX export with {merged}; adapter {path} needs another export "
                          "(blip-lora export --format onnx --adapter ...): adapters cannot change at run time")

    def describe(self) -> str:
        """One line naming the runtime, its execution providers, device, dtype and quantization."""
        providers = describe_providers(self._vision.get_providers(), self._decoder.get_providers())
        return (f"onnxruntime {providers}, {self.device}, {self.manifest.dtype}, "
                f"quantize {self.manifest.quantize or 'none'}")

    # ------------------------------------------------------------ captioning

    def _caption_batch(self, images: Sequence[Image.Image | np.ndarray]) -> list[CaptionResult]:
        prompt = self._prompt_ids(self.prompt)
        generated, log_probs = self.decode(self.preprocess.batch_array(images), prompt)
        new_ids = generated[:, 1 + len(prompt):]
        texts = self.tokenizer.decode_batch(new_ids.tolist(), skip_special_tokens=True)
        confidence, tokens = caption_confidence(new_ids, log_probs, self.manifest.tokens.sep)
        return [CaptionResult(self._clean(text), float(c), int(k))
                for text, c, k in zip(texts, confidence, tokens, strict=True)]

    def decode(self, pixel_values: np.ndarray, prompt: Sequence[int] = ()) -> tuple[np.ndarray, np.ndarray]:
        """pixel_values (B, 3, S, S) float32 -> ids (B, 1 + len(prompt) + n) as ``generate()`` returns them for
        [DEC] prompt (greedy, [PAD] after a row's [SEP], n the step at which the last row ended, at most
        max_new_tokens), and the log-probability of each generated token (B, n), 0 after a row's [SEP]."""
        tokens_ids, limit = self.manifest.tokens, self.max_new_tokens_limit(None) - len(prompt)
        if self.max_new_tokens > limit:
            raise ConfigError(f"max_new_tokens {self.max_new_tokens} is more than the {limit} text positions the "
                              "prompt leaves")
        batch = pixel_values.shape[0]
        shapes = self.manifest.shapes
        cross = self._run(self._vision, {"pixel_values": pixel_values.astype(self._dtype, copy=False)},
                          on_device=self._cross)
        empty = np.zeros((batch, shapes.heads, 0, shapes.head_dim), dtype=self._dtype)
        cache: dict[str, Any] = dict.fromkeys(self._past, empty)
        feed = np.array([[tokens_ids.bos, *prompt]] * batch, dtype=np.int64)
        out, log_probs = [feed], []
        done = np.zeros(batch, dtype=bool)
        for step in range(self.max_new_tokens):
            step_out = self._run(self._decoder, {"input_ids": feed, **cache, **cross}, on_device=self._present)
            token, log_prob = _greedy(step_out["logits"].numpy(), tokens_ids.sep,
                                      ban_sep=step < tokens_ids.min_new_tokens)
            token = np.where(done, tokens_ids.pad, token)
            out.append(token[:, None])
            log_probs.append(np.where(done, 0.0, log_prob)[:, None])
            done |= token == tokens_ids.sep
            if done.all():
                break
            feed = token[:, None]
            cache = {past: step_out[present] for past, present in zip(self._past, self._present, strict=True)}
        return np.concatenate(out, axis=1), np.concatenate(log_probs, axis=1)

    # ------------------------------------------------------------ sessions

    def _session(self, name: str, providers: list[tuple[str, dict[str, Any]]],
                 threads: int | None) -> ort.InferenceSession:
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: the provider fallback is reported by describe()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # memory: weights go straight to their own buffers, not into the arena (which rounds each up and keeps
        # what it grew to), and activations are freed when done rather than kept in an arena
        options.enable_cpu_mem_arena = False
        options.add_session_config_entry("session.use_device_allocator_for_initializers", "1")
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        try:
            return ort.InferenceSession(str(self.folder / name), options, providers=providers)
        except Exception as error:  # onnxruntime raises its own exception types for bad or foreign files
            raise BlipLoraError(f"{self.folder / name}: onnxruntime cannot load it: {error}") from error

    def _run(self, session: ort.InferenceSession, inputs: dict[str, Any],
             on_device: Sequence[str]) -> dict[str, ort.OrtValue]:
        """Run a session with I/O binding: numpy inputs are copied to the device, OrtValues used where they
        are; outputs named in on_device stay on the placement's device, the others come back to the CPU."""
        binding = session.io_binding()
        for name, value in inputs.items():
            if isinstance(value, np.ndarray):
                binding.bind_cpu_input(name, value)
            else:
                binding.bind_ortvalue_input(name, value)
        names = [output.name for output in session.get_outputs()]
        for name in names:
            if name in on_device:
                binding.bind_output(name, self.placement.device, self.placement.device_id)
            else:
                binding.bind_output(name, "cpu")
        session.run_with_iobinding(binding)
        return dict(zip(names, binding.get_outputs(), strict=True))

    # ------------------------------------------------------------ text

    def _encode_prompt(self, prompt: str | None) -> tuple[int, ...]:
        return tuple(self.tokenizer.encode(prompt, add_special_tokens=False).ids) if prompt else ()

    def _clean(self, text: str) -> str:
        """What transformers' decode() does after the tokenizer's own decode (clean_up_tokenization_spaces)."""
        if self.manifest.decode_cleanup:
            for before, after in _CLEANUPS:
                text = text.replace(before, after)
        return text.strip()


# transformers' PreTrainedTokenizerBase.clean_up_tokenization, in its order
_CLEANUPS = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"),
             (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))


def _greedy(logits: np.ndarray, sep: int, ban_sep: bool) -> tuple[np.ndarray, np.ndarray]:
    """logits (B, V) -> the greedy tokens (B,) and their log-probabilities under the raw logits (B,); with
    ban_sep (fewer than min_new_tokens so far) [SEP] cannot be chosen, as generate()'s processor does."""
    logits = logits.astype(np.float32, copy=False)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_softmax = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    if ban_sep:
        logits = logits.copy()
        logits[:, sep] = -np.inf
    token = logits.argmax(axis=1)
    return token.astype(np.int64), log_softmax[np.arange(len(token)), token]


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise BlipLoraError(f"{path}: cannot read: {error}") from error


def _sha256(path: str | Path) -> str:
    try:
        return sha256_file(path)
    except OSError as error:
        raise ConfigError(f"adapter {path}: {error.strerror or error}") from error

