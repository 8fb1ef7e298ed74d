"""BLIP models: load a real one (hub id or local folder), or build a tiny one locally with no network."""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import huggingface_hub
import torch
import transformers
from safetensors import SafetensorError
from transformers import BlipConfig, BlipForConditionalGeneration, PreTrainedTokenizerBase

from .._compat import dtype_kwarg, wordpiece_tokenizer
from ..errors import BlipLoraError, ConfigError
from .blip_internals import ATTENTIONS, set_attention
from .preprocess import ImagePreprocessor

BLIP_LARGE = "Salesforce/blip-image-captioning-large"
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
BOS_TOKEN, ENC_TOKEN = "[DEC]", "[ENC]"
_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
           "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
DTYPE_NAMES = tuple(_DTYPES)


@dataclass
class BlipBundle:
    """A captioning model with the tokenizer and image preprocessing that belong to it."""

    model: BlipForConditionalGeneration
    tokenizer: PreTrainedTokenizerBase
    preprocess: ImagePreprocessor
    name: str
    revision: str = ""


def resolve_dtype(dtype: str | torch.dtype | None, device: str | torch.device) -> torch.dtype:
    """None -> fp16 on CUDA, fp32 elsewhere; names like 'fp16' or 'bfloat16' -> torch dtypes."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if not dtype:
        return torch.float16 if torch.device(device).type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; use one of {sorted(_DTYPES)}")
    return _DTYPES[dtype]


def resolve_device(device: str | None) -> torch.device:
    """None or '' -> cuda when present, else cpu."""
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def load_blip(name_or_path: str, *, dtype: str | torch.dtype | None = None, device: str | None = None,
              revision: str | None = None, attention: str = "sdpa") -> BlipBundle:
    """Load model, tokenizer and preprocessing from a hub id (optionally pinned to a revision) or a folder.

    attention: "sdpa" runs the vision encoder's attention through torch's fused kernel (falling back to
    transformers' code for head masks and attention maps), "eager" keeps transformers' own
    (blip_internals.set_attention). Never runs remote code. Raises BlipLoraError with the name when anything
    cannot be loaded.
    """
    if attention not in ATTENTIONS:
        raise ConfigError(f"attention must be one of {', '.join(ATTENTIONS)}, got {attention!r}")
    _check_local_folder(name_or_path)
    target = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, target)
    try:
        model = BlipForConditionalGeneration.from_pretrained(
            name_or_path, revision=revision, trust_remote_code=False, **dtype_kwarg(torch_dtype))
        tokenizer = transformers.AutoTokenizer.from_pretrained(name_or_path, revision=revision,
                                                               trust_remote_code=False)
        preprocess = ImagePreprocessor.from_pretrained(name_or_path, revision=revision)
    except pickle.UnpicklingError as error:
        raise BlipLoraError(f"cannot load BLIP model {name_or_path!r}: its weights are a pickle holding more than "
                            f"tensors, refused by torch's weights-only loader") from error
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as error:
        # corrupt weights, a config that is not a mapping
        reason = " ".join(str(error).split())[:300]
        raise BlipLoraError(f"cannot load BLIP model {name_or_path!r}: {reason}") from error
    model.to(target).eval()
    set_attention(model, attention)
    return BlipBundle(model, tokenizer, preprocess, name_or_path, revision or "")


def disable_progress_bars() -> None:
    """No progress bars from transformers (its weight-loading bar) or huggingface_hub (downloads)."""
    transformers.utils.logging.disable_progress_bar()
    huggingface_hub.utils.disable_progress_bars()


def _check_local_folder(name_or_path: str) -> None:
    """A name that can only be a path (absolute, ./ ../ ~, or more than one /) must be an existing folder."""
    path = Path(name_or_path).expanduser()
    looks_local = path.is_absolute() or name_or_path.startswith((".", "~")) or name_or_path.strip("/").count("/") > 1
    if looks_local and not path.is_dir():
        what = "it is a file, not a folder" if path.exists() else "the folder does not exist"
        raise BlipLoraError(f"cannot load BLIP model {name_or_path!r}: {what}")


def blip_large_config() -> BlipConfig:
    """The architecture of Salesforce/blip-image-captioning-large, from the copy in this package."""
    source = resources.files("blip_lora_core").joinpath("models/model_configs/blip-image-captioning-large.json")
    text = source.read_text()
    config = json.loads(text)
    config.pop("_comment", None)
    return BlipConfig.from_dict(config)


def build_on_meta(config: BlipConfig) -> BlipForConditionalGeneration:
    """The model's modules and shapes with no memory and no weights (milliseconds even for BLIP-large)."""
    with torch.device("meta"):
        return BlipForConditionalGeneration(config)


@torch.no_grad()
def build_random_blip(config: BlipConfig, seed: int = 0, device: str | torch.device = "cpu",
                      dtype: torch.dtype = torch.float32) -> BlipForConditionalGeneration:
    """The architecture of config with random weights, in eval mode, built without a download.

    Built on the meta device and filled with uniform noise (std 0.02; norms 1, biases 0): about 8 s for
    BLIP-large on the CPU, where the model's own initialisation takes longer.
    """
    model = build_on_meta(config).to_empty(device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    bound = 0.02 * 3 ** 0.5
    for name, param in model.named_parameters():
        if param.ndim >= 2 or "embedding" in name:
            param.uniform_(-bound, bound, generator=generator)
        elif name.endswith("weight"):
            param.fill_(1.0)
        else:
            param.zero_()
    for name, buffer in model.named_buffers():
        if name.endswith("position_ids"):
            buffer.copy_(torch.arange(buffer.shape[-1], device=device).expand_as(buffer))
    model.tie_weights()  # the output layer shares the word embeddings, as in the real checkpoint
    return model.to(dtype).eval()


def caption_words(captions: Iterable[str]) -> list[str]:
    """Lower-case words and punctuation marks of the captions, sorted, as BERT's tokenizer splits them."""
    words = set()
    for caption in captions:
        words.update(re.findall(r"\w+|[^\w\s]", caption.lower()))
    return sorted(words)


def build_tokenizer(words: Iterable[str], folder: Path) -> PreTrainedTokenizerBase:
    """A BERT WordPiece tokenizer over whole words with BLIP's [DEC] bos token, saved in folder."""
    tokens = SPECIAL_TOKENS + [w for w in words if w not in SPECIAL_TOKENS] + [BOS_TOKEN, ENC_TOKEN]
    folder.mkdir(parents=True, exist_ok=True)
    vocab_file = folder / "vocab.txt"
    vocab_file.write_text("\n".join(tokens) + "\n", encoding="utf-8")
    kwargs = dict(do_lower_case=True, bos_token=BOS_TOKEN, additional_special_tokens=[ENC_TOKEN])
    tokenizer = wordpiece_tokenizer(tokens, vocab_file, **kwargs)
    tokenizer.save_pretrained(folder)
    return transformers.AutoTokenizer.from_pretrained(folder)


@dataclass(frozen=True)
class TinySize:
    """Dimensions of a tiny BLIP (about 0.5M parameters with the defaults)."""

    image_size: int = 64
    patch_size: int = 8
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    intermediate: int = 128
    max_positions: int = 40


def build_tiny_blip(folder: str | Path, captions: Iterable[str], *, size: TinySize = TinySize(),
                    seed: int = 0) -> Path:
    """Create a randomly initialised tiny BLIP in folder with save_pretrained, tokenizer and preprocessing.

    The vocabulary is made from the captions' words; every other command loads the folder like a real
    model. Returns the folder.
    """
    folder = Path(folder)
    tokenizer = build_tokenizer(caption_words(captions), folder)
    vocab = tokenizer.get_vocab()
    text = dict(vocab_size=len(vocab), hidden_size=size.hidden, encoder_hidden_size=size.hidden,
                intermediate_size=size.intermediate, num_hidden_layers=size.layers,
                num_attention_heads=size.heads, max_position_embeddings=size.max_positions,
                bos_token_id=vocab[BOS_TOKEN], pad_token_id=vocab["[PAD]"], sep_token_id=vocab["[SEP]"],
                eos_token_id=vocab["[SEP]"], hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    vision = dict(hidden_size=size.hidden, intermediate_size=size.intermediate, num_hidden_layers=size.layers,
                  num_attention_heads=size.heads, image_size=size.image_size, patch_size=size.patch_size,
                  initializer_range=0.02)
    config = BlipConfig(text_config=text, vision_config=vision, projection_dim=size.hidden,
                        image_text_hidden_size=size.hidden)
    torch.manual_seed(seed)
    model = BlipForConditionalGeneration(config)
    model.save_pretrained(folder)
    ImagePreprocessor(height=size.image_size, width=size.image_size).save_pretrained(folder)
    return folder


def save_bundle(bundle: BlipBundle, folder: str | Path) -> Path:
    """Model, tokenizer and preprocessing in one folder that every command loads like a hub model."""
    folder = Path(folder)
    bundle.model.save_pretrained(folder)
    bundle.tokenizer.save_pretrained(folder)
    bundle.preprocess.save_pretrained(folder)
    return folder
