"""The exported ONNX folder: its file names and its manifest (what was exported, from what, with which limits).

A folder holds ``vision_encoder.onnx`` (pixels -> the cross-attention K/V of every text layer),
``text_decoder.onnx`` (tokens + self-attention K/V cache -> next-token logits + the grown cache; one graph
input/output per layer and K or V, named by past_names / present_names / cross_names), each graph's weights
as onnx external data beside it (``vision_encoder.onnx.data``, ``text_decoder.onnx.data``),
``tokenizer.json``, ``preprocessor_config.json`` and ``manifest.json``. ``blip-lora export --format onnx``
writes it (blip_lora_core/export/onnx_export.py); the ONNX Runtime captioner reads it. No torch here.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_text
from ..errors import BlipLoraError

FORMAT = "blip-lora-onnx"
FORMAT_VERSION = 2  # 2: one K/V input/output per layer, weights in .data files (1: all layers in one tensor)
OLDEST_VERSION = 2  # the oldest format_version this code reads
MANIFEST = "manifest.json"
VISION = "vision_encoder.onnx"
DECODER = "text_decoder.onnx"
TOKENIZER = "tokenizer.json"
PREPROCESSOR = "preprocessor_config.json"
GRAPHS = (VISION, DECODER)
WEIGHTS_SUFFIX = ".data"  # a graph's weights: onnx external data beside it, read without a protobuf copy
FILES = (*GRAPHS, *(graph + WEIGHTS_SUFFIX for graph in GRAPHS), TOKENIZER, PREPROCESSOR)  # all but the manifest
DTYPES = ("fp32", "fp16")
QUANTIZATIONS = ("int8",)


def past_names(layers: int) -> list[str]:
    """The decoder's cache inputs, in graph order: past_key_0, past_value_0, past_key_1, ..."""
    return [f"past_{kind}_{i}" for i in range(layers) for kind in ("key", "value")]


def present_names(layers: int) -> list[str]:
    """The decoder's grown-cache outputs, in the order of past_names: present_key_0, present_value_0, ..."""
    return [f"present_{kind}_{i}" for i in range(layers) for kind in ("key", "value")]


def cross_names(layers: int) -> list[str]:
    """The image's cross-attention K/V per layer: the vision graph's outputs, the decoder's last inputs."""
    return [f"cross_{kind}_{i}" for i in range(layers) for kind in ("key", "value")]


@dataclass(frozen=True)
class TokenIds:
    """The text decoder's special tokens and the min_new_tokens of its generation_config."""

    bos: int
    sep: int
    pad: int
    min_new_tokens: int = 0


@dataclass(frozen=True)
class Shapes:
    """Cache shapes: K/V are (layers, batch, heads, length, head_dim); the image gives image_tokens of them."""

    layers: int
    heads: int
    head_dim: int
    image_tokens: int
    image_size: int
    max_positions: int  # text positions: [DEC] + prompt + caption tokens fit in this many


@dataclass(frozen=True)
class Manifest:
    """What an export holds. adapter: the merged adapter's file name ('' = the base model alone) and sha256.
    exporter: the torch exporter used; versions: of blip-lora, torch, transformers, onnx at export.
    files: file name -> {"bytes": size, "sha256": digest} for every file of the export but the manifest."""

    base_model: str
    base_revision: str
    adapter: str
    adapter_sha256: str
    opset: int
    dtype: str
    quantize: str | None
    tokens: TokenIds
    shapes: Shapes
    exporter: str
    versions: dict[str, str]
    decode_cleanup: bool  # the tokenizer's clean_up_tokenization_spaces: decode() tidies spaces before punctuation
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"


def is_onnx_folder(path: str | Path) -> bool:
    """True when ``path`` is a folder with a manifest.json: an ONNX export, not a transformers model."""
    return (Path(path).expanduser() / MANIFEST).is_file()


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(folder: str | Path, manifest: Manifest) -> Path:
    """Write manifest.json into folder atomically."""
    return atomic_write_text(Path(folder) / MANIFEST, manifest.to_json())


def read_manifest(folder: str | Path) -> Manifest:
    """The manifest of an export, checked: BlipLoraError naming the folder when it is not a readable export of
    a format version this code reads (OLDEST_VERSION .. FORMAT_VERSION), or when one of its files is missing or
    has another size than at export (truncated)."""
    folder = Path(folder).expanduser()
    path = folder / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BlipLoraError(f"{folder}: not an ONNX export (no {MANIFEST})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BlipLoraError(f"{path}: cannot read the manifest: {error}") from error
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise BlipLoraError(f"{path}: not a {FORMAT} manifest")
    version = data.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise BlipLoraError(f"{path}: format version {version!r} is newer than this blip-lora reads "
                            f"({FORMAT_VERSION}): update blip-lora or export again")
    if version < OLDEST_VERSION:
        raise BlipLoraError(f"{path}: format version {version} is older than this blip-lora reads "
                            f"({OLDEST_VERSION}..{FORMAT_VERSION}, its graphs have other inputs): export the model "
                            "again (blip-lora export --format onnx)")
    manifest = _from_dict(data, path)
    _check_files(folder, manifest)
    return manifest


def _from_dict(data: dict[str, Any], path: Path) -> Manifest:
    try:
        values = {f.name: data[f.name] for f in fields(Manifest)}
        values["tokens"] = TokenIds(**values["tokens"])
        values["shapes"] = Shapes(**values["shapes"])
        manifest = Manifest(**values)
    except (KeyError, TypeError) as error:
        raise BlipLoraError(f"{path}: manifest field missing or malformed: {error}") from error
    if manifest.dtype not in DTYPES or manifest.quantize not in (None, *QUANTIZATIONS):
        raise BlipLoraError(f"{path}: unknown dtype {manifest.dtype!r} or quantization {manifest.quantize!r}")
    return manifest


def _check_files(folder: Path, manifest: Manifest) -> None:
    for name in FILES:
        if name not in manifest.files:
            raise BlipLoraError(f"{folder / MANIFEST}: lists no {name}")
        file = folder / name
        if not file.is_file():
            raise BlipLoraError(f"{file}: missing from the ONNX export")
        size, expected = file.stat().st_size, manifest.files[name].get("bytes")
        if size != expected:
            raise BlipLoraError(f"{file}: {size} bytes, the export wrote {expected} (truncated or replaced?)")
