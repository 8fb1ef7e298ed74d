"""Export a BLIP model with its adapter merged into an ONNX folder that ONNX Runtime captions with, no torch.

Writes ``vision_encoder.onnx`` and ``text_decoder.onnx`` (onnx_graphs.py), ``tokenizer.json``,
``preprocessor_config.json`` and, last, ``manifest.json`` (blip_lora_core/ort/folder.py): a folder without
a manifest is not an export, so an export that stopped half-way is never taken for a whole one.

The graphs are traced with torch's TorchScript exporter (``dynamo=False``): on torch 2.13 the dynamo exporter
took 1.5x to 20x longer and its BLIP-large decoder gave other tokens than generate() after a few steps
(bench/README.md, "ONNX export"). fp16 halves the weights (for GPUs); int8 runs onnxruntime's dynamic
quantization (int8 weights of every MatMul per output channel, the attention products quantized too,
activations quantized at run time; for CPUs) on the pre-processed fp32 graphs.
"""

from __future__ import annotations

import importlib.metadata
import logging
import warnings
from pathlib import Path

import onnx
import torch

from ..errors import BlipLoraError, ConfigError
from ..lora.adapter_io import load_adapter
from ..lora.hooks import lora_layers, remove_lora
from ..models.loading import BlipBundle, load_blip
from ..models.static_decoder import unsupported_generation
from ..ort.folder import (
    DECODER,
    DTYPES,
    FILES,
    MANIFEST,
    QUANTIZATIONS,
    TOKENIZER,
    VISION,
    WEIGHTS_SUFFIX,
    Manifest,
    Shapes,
    TokenIds,
    is_onnx_folder,
    sha256_file,
    write_manifest,
)
from .onnx_graphs import DecoderGraph, VisionGraph, decoder_io, vision_io

log = logging.getLogger(__name__)
DEFAULT_OPSET = 17  # LayerNormalization is one op from 17 on; TensorRT 8.6+ and onnxruntime 1.14+ run it


def export_onnx(model: str, out: str | Path, *, adapter: str | None = None, revision: str | None = None,
                dtype: str = "fp32", quantize: str | None = None, opset: int = DEFAULT_OPSET,
                force: bool = False) -> Manifest:
    """Load ``model`` (hub id or folder) on the CPU in fp32, merge ``adapter`` into it and export (export_bundle)."""
    _check_options(dtype, quantize)
    check_output(Path(out), force)
    bundle = load_blip(model, dtype="fp32", device="cpu", revision=revision)
    if adapter:
        load_adapter(bundle.model, adapter)
        remove_lora(bundle.model, keep_merged=True)  # a plain model with the adapted weights
    return export_bundle(bundle, out, adapter=adapter, dtype=dtype, quantize=quantize, opset=opset, force=force)


def export_bundle(bundle: BlipBundle, out: str | Path, *, adapter: str | None = None, dtype: str = "fp32",
                  quantize: str | None = None, opset: int = DEFAULT_OPSET, force: bool = False) -> Manifest:
    """Write the export of an fp32 bundle whose adapter (if any) is already merged; returns its manifest.

    ``adapter`` is the merged adapter's file, recorded by name and sha256. ConfigError for options that do not
    go together, a model with LoRA hooks still on, or a generation_config the greedy ONNX decoding does not
    reproduce; BlipLoraError when ``out`` exists and is not an export to replace with ``force``.
    """
    _check_options(dtype, quantize)
    model = bundle.model
    if lora_layers(model):
        raise ConfigError("the model still has LoRA hooks: merge them (remove_lora(model, keep_merged=True)) first")
    unsupported = unsupported_generation(model)
    if unsupported:
        raise ConfigError(f"cannot export {bundle.name}: {unsupported} changes greedy decoding, which the ONNX "
                          "captioner does not reproduce")
    out = Path(out)
    check_output(out, force)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # from here until the end the folder is not an export
    graph_model = model.half() if dtype == "fp16" else model
    try:
        _export_graphs(graph_model, out, opset, quantize)
    finally:
        if dtype == "fp16":
            model.float()
    bundle.tokenizer.backend_tokenizer.save(str(out / TOKENIZER))
    bundle.preprocess.save_pretrained(out)
    manifest = _manifest(bundle, out, adapter, dtype, quantize, opset)
    write_manifest(out, manifest)
    log.debug("ONNX export of %s%s: %s (%s%s)", bundle.name, f" + {manifest.adapter}" if adapter else "", out,
             dtype, f", {quantize}" if quantize else "")
    return manifest


def check_output(out: Path, force: bool) -> None:
    """BlipLoraError unless ``out`` is new, an empty folder, or an export to replace with ``force``."""
    if not out.exists():
        return
    if not out.is_dir():
        raise BlipLoraError(f"{out} is a file; the export is a folder")
    if not any(out.iterdir()):
        return
    if not is_onnx_folder(out):
        raise BlipLoraError(f"{out} exists and is not an ONNX export; refusing to write into it (choose another "
                            "--out)")
    if not force:
        raise BlipLoraError(f"{out} holds an ONNX export already; pass --force to replace it")


def _check_options(dtype: str, quantize: str | None) -> None:
    if dtype not in DTYPES:
        raise ConfigError(f"ONNX export dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if quantize not in (None, *QUANTIZATIONS):
        raise ConfigError(f"ONNX export quantize must be one of {', '.join(QUANTIZATIONS)}, got {quantize!r}")
    if quantize and dtype != "fp32":
        raise ConfigError(f"quantize {quantize} quantizes the fp32 graphs: use dtype fp32, not {dtype}")


def _export_graphs(model: torch.nn.Module, out: Path, opset: int, quantize: str | None) -> None:
    """Trace both graphs (on example inputs of batch 2, a 3-token prompt, a 2-position cache) into out."""
    param = next(model.parameters())
    text, vision = model.config.text_config, model.config.vision_config
    heads, layers = text.num_attention_heads, text.num_hidden_layers
    size = vision.image_size
    pixels = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0)).to(param.dtype)
    with torch.no_grad():
        cross = VisionGraph(model)(pixels)
    past = [torch.zeros(2, heads, 2, text.hidden_size // heads, dtype=param.dtype)] * (2 * layers)
    ids = torch.full((2, 3), text.bos_token_id, dtype=torch.long)
    graphs = [(VisionGraph(model), (pixels,), VISION, *vision_io(layers)),
              (DecoderGraph(model), (ids, *past, *cross), DECODER, *decoder_io(layers))]
    for module, args, name, inputs, outputs, axes in graphs:
        final = out / name
        traced = final.with_name(f".{name}.fp32") if quantize else final
        _trace(module, args, traced, inputs, outputs, axes, opset)
        if quantize:
            _quantize_int8(traced, final)
            traced.unlink()
        _weights_beside(final)
        onnx.checker.check_model(str(final), full_check=True)


def _weights_beside(graph: Path) -> None:
    """Move the graph's weights into ``<graph>.data`` (onnx external data): onnxruntime then reads them
    straight into its tensors instead of holding the whole protobuf and a copy of every weight while loading."""
    model = onnx.load(str(graph))
    onnx.save_model(model, str(graph), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=graph.name + WEIGHTS_SUFFIX, size_threshold=1024)


def _trace(module: torch.nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str],
           axes: dict, opset: int) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        # the TorchScript exporter is deprecated in favour of dynamo, which gives wrong tokens here (module doc)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(module.eval(), args, str(path), input_names=inputs, output_names=outputs,
                          dynamic_axes=axes, opset_version=opset, do_constant_folding=True, dynamo=False)


def _quantize_int8(source: Path, target: Path) -> None:
    """onnxruntime's dynamic quantization after its pre-processing (shape inference, graph clean-up): int8
    weights per output channel for every MatMul, and the attention products (MatMuls of two activations)
    quantized too; activations uint8, quantized at run time."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = source.with_name(f"{source.name}.pre")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer logs every tensor it skips, and advice, on the root logger
    try:
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        quantize_dynamic(str(prepared), str(target), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"],
                         per_channel=True, extra_options={"MatMulConstBOnly": False})
    finally:
        root.setLevel(level)
        prepared.unlink(missing_ok=True)


def _manifest(bundle: BlipBundle, out: Path, adapter: str | None, dtype: str, quantize: str | None,
              opset: int) -> Manifest:
    model, tokenizer = bundle.model, bundle.tokenizer
    text, vision = model.config.text_config, model.config.vision_config
    shapes = Shapes(layers=text.num_hidden_layers, heads=text.num_attention_heads,
                    head_dim=text.hidden_size // text.num_attention_heads,
                    image_tokens=(vision.image_size // vision.patch_size) ** 2 + 1, image_size=vision.image_size,
                    max_positions=text.max_position_embeddings)
    tokens = TokenIds(bos=text.bos_token_id, sep=text.sep_token_id, pad=text.pad_token_id,
                      min_new_tokens=model.text_decoder.generation_config.min_new_tokens or 0)
    files = {name: {"bytes": (out / name).stat().st_size, "sha256": sha256_file(out / name)}
             for name in FILES}
    return Manifest(base_model=bundle.name, base_revision=bundle.revision,
                    adapter=Path(adapter).name if adapter else "",
                    adapter_sha256=sha256_file(adapter) if adapter else "", opset=opset, dtype=dtype,
                    quantize=quantize, tokens=tokens, shapes=shapes, exporter="torch.onnx.export (TorchScript)",
                    versions=_versions(), decode_cleanup=bool(getattr(tokenizer, "clean_up_tokenization_spaces",
                                                                      False)), files=files)


def _versions() -> dict[str, str]:
    found: dict[str, str] = {}
    for package in ("blip-lora", "torch", "transformers", "onnx", "onnxruntime"):
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = "unknown"
    return found

