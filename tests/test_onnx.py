"""ONNX export and the ONNX Runtime captioner on a tiny BLIP with a trained adapter: generate()'s tokens exactly
(prompt and none, rows ending at different steps, batch 1 and 5), the Captioner's texts and confidences, a
cache that is filled once and grown by one token a step, the folder and its manifest, int8 and fp16, errors."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from blip_lora_core.errors import BlipLoraError, ConfigError
from blip_lora_core.export.onnx_export import export_bundle, export_onnx
from blip_lora_core.lora.adapter_io import load_adapter
from blip_lora_core.lora.hooks import remove_lora
from blip_lora_core.models.captioning import Captioner
from blip_lora_core.models.loading import load_blip
from blip_lora_core.ort.captioner import OrtCaptioner
from blip_lora_core.ort.folder import DECODER, MANIFEST, VISION, read_manifest, sha256_file
from tests.onnx_fixtures import PROMPT
from tests.test_static_decoder import _generate

pytestmark = pytest.mark.xdist_group("onnx_tiny")  # one worker builds the trained model and exports once


@pytest.fixture(scope="module")
def merged(trained):
    """The torch model with the adapter merged, as the export saw it."""
    bundle = load_blip(str(trained.base), device="cpu")
    load_adapter(bundle.model, trained.adapter)
    remove_lora(bundle.model, keep_merged=True)
    return bundle


def _prompt_ids(bundle, prompt):
    return bundle.tokenizer(prompt, add_special_tokens=False).input_ids if prompt else []


@pytest.mark.parametrize("prompt", [None, PROMPT])
@pytest.mark.parametrize("batch", [1, 5])
def test_fp32_export_gives_the_tokens_of_generate(trained, merged, onnx_export, prompt, batch):
    captioner = OrtCaptioner(onnx_export, max_new_tokens=12)
    pixels = merged.preprocess.batch(trained.images)
    ids = _prompt_ids(merged, prompt)
    expected = [_generate(merged.model, pixels[i:i + batch], ids, 12) for i in range(0, len(pixels), batch)]
    got = [captioner.decode(pixels[i:i + batch].numpy(), ids)[0] for i in range(0, len(pixels), batch)]
    for want, have in zip(expected, got, strict=True):
        assert np.array_equal(have, want.numpy())
    # the case the test is for: captions of different lengths, each ended by [SEP] before the limit
    sep = merged.model.config.text_config.sep_token_id
    ends = {int(np.argmax(row == sep)) for ids_ in got for row in ids_[:, 1 + len(ids):]}
    assert len(ends) >= 2 and all((ids_ == sep).any(1).all() for ids_ in got)


@pytest.mark.parametrize("prompt", [None, PROMPT])
def test_texts_and_confidences_equal_the_torch_captioners(trained, onnx_export, prompt):
    ours = OrtCaptioner(onnx_export, max_new_tokens=12, prompt=prompt, batch_size=2)
    torch_captioner = Captioner.from_pretrained(str(trained.base), adapter=str(trained.adapter), device="cpu",
                                                max_new_tokens=12, prompt=prompt, batch_size=2)
    expected = torch_captioner.caption_results(trained.images)
    got = ours.caption_results(trained.images)
    assert [(r.text, r.tokens) for r in got] == [(r.text, r.tokens) for r in expected]
    assert [r.confidence for r in got] == pytest.approx([r.confidence for r in expected], rel=1e-5)
    assert any(r.text for r in got) and len({r.tokens for r in got}) >= 2
    assert ours.caption(trained.images[:2]) == [r.text for r in expected[:2]]


def test_cross_attention_once_per_image_then_prefill_then_one_token_a_step(trained, onnx_export, monkeypatch):
    """The vision graph runs once per batch; the decoder first gets [DEC] + prompt on an empty cache, then one
    token per step on the cache it returned (never the prefix again)."""
    captioner = OrtCaptioner(onnx_export, max_new_tokens=12)
    calls = []
    run = captioner._run

    def spy(session, inputs, on_device):
        shapes = {name: tuple(value.shape()) if callable(getattr(value, "shape", None)) else value.shape
                  for name, value in inputs.items()}
        calls.append((session, shapes))
        return run(session, inputs, on_device)

    monkeypatch.setattr(captioner, "_run", spy)
    pixels = np.stack([captioner.preprocess.array(image) for image in trained.images[:3]])
    ids, _ = captioner.decode(pixels, [5, 6])
    sessions = [session for session, _ in calls]
    assert sessions.count(captioner._vision) == 1 and sessions[0] is captioner._vision
    steps = [shapes for session, shapes in calls if session is captioner._decoder]
    assert len(steps) == ids.shape[1] - 3  # one run per generated token
    assert steps[0]["input_ids"] == (3, 3) and steps[0]["past_key_0"][2] == 0  # prefill: [DEC] + 2 prompt tokens
    for step, shapes in enumerate(steps[1:], start=1):
        assert shapes["input_ids"] == (3, 1) and all(
            shapes[f"past_{kind}_{i}"][2] == 2 + step for i in range(2) for kind in ("key", "value"))
        assert shapes["cross_value_1"] == steps[0]["cross_value_1"]  # the image's K/V, computed once


def test_the_folder_holds_checked_graphs_tokenizer_preprocessing_and_a_manifest(trained, onnx_export):
    manifest = read_manifest(onnx_export)
    assert (manifest.base_model, manifest.adapter) == (str(trained.base), trained.adapter.name)
    assert manifest.adapter_sha256 == sha256_file(trained.adapter)
    assert (manifest.opset, manifest.dtype, manifest.quantize) == (17, "fp32", None)
    assert (manifest.shapes.max_positions, manifest.shapes.image_size, manifest.shapes.layers) == (40, 64, 2)
    assert manifest.exporter.startswith("torch.onnx.export (TorchScript)") and "torch" in manifest.versions
    for name in (VISION, DECODER):
        onnx.checker.check_model(str(onnx_export / name), full_check=True)
        assert manifest.files[name]["sha256"] == sha256_file(onnx_export / name)
    graph = onnx.load(str(onnx_export / DECODER)).graph
    assert [i.name for i in graph.input] == ["input_ids", "past_key_0", "past_value_0", "past_key_1", "past_value_1",
                                             "cross_key_0", "cross_value_0", "cross_key_1", "cross_value_1"]
    assert [o.name for o in graph.output] == ["logits", "present_key_0", "present_value_0", "present_key_1",
                                              "present_value_1"]
    # one tensor per layer: no step cuts an all-layer cache (Split) or stacks one (Concat of every layer)
    assert "Split" not in {node.op_type for node in graph.node}
    from tokenizers import Tokenizer

    bundle = load_blip(str(trained.base), device="cpu")
    tokenizer = Tokenizer.from_file(str(onnx_export / "tokenizer.json"))
    assert tokenizer.encode(PROMPT, add_special_tokens=False).ids == _prompt_ids(bundle, PROMPT)
    preprocess = json.loads((onnx_export / "preprocessor_config.json").read_text())
    assert preprocess["size"] == {"height": 64, "width": 64}
    assert preprocess["image_mean"] == list(bundle.preprocess.mean)


def test_int8_export_quantizes_the_matmuls_and_keeps_the_fp32_captions(trained, onnx_export, onnx_int8_export):
    for name in (VISION, DECODER):
        graph = onnx.load(str(onnx_int8_export / name)).graph
        ops = {node.op_type for node in graph.node}
        # every product is integer, the attention's (activation x activation) too: no fp32 MatMul is left
        assert {"MatMulInteger", "DynamicQuantizeLinear"} <= ops and "MatMul" not in ops
        scales = [init for init in graph.initializer if init.name.endswith("_scale") and init.dims]
        assert scales and all(init.dims[0] > 1 for init in scales)  # weights quantized per output channel
    assert read_manifest(onnx_int8_export).quantize == "int8"
    weights = (f"{VISION}.data", f"{DECODER}.data")
    assert sum((onnx_int8_export / n).stat().st_size for n in weights) < 0.5 * sum(
        (onnx_export / n).stat().st_size for n in weights)
    int8 = OrtCaptioner(onnx_int8_export, max_new_tokens=12)
    fp32 = OrtCaptioner(onnx_export, max_new_tokens=12)
    assert int8.caption(trained.images) == fp32.caption(trained.images)
    assert int8.describe() == "onnxruntime CPU, cpu, fp32, quantize int8"


def test_fp16_export_halves_the_weights_and_captions_like_fp32(trained, merged, onnx_export, tmp_path):
    export_bundle(merged, tmp_path / "fp16", dtype="fp16")
    assert read_manifest(tmp_path / "fp16").dtype == "fp16"
    graph = onnx.load(str(tmp_path / "fp16" / VISION)).graph
    floats = {init.data_type for init in graph.initializer if init.data_type in (onnx.TensorProto.FLOAT,
                                                                                 onnx.TensorProto.FLOAT16)}
    assert floats == {onnx.TensorProto.FLOAT16}
    assert next(merged.model.parameters()).dtype == torch.float32  # the bundle is given back in fp32
    decoder = onnx.load(str(tmp_path / "fp16" / DECODER)).graph
    assert decoder.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # logits in fp32
    fp16 = OrtCaptioner(tmp_path / "fp16", max_new_tokens=12)  # onnxruntime's CPU runs it too (slowly)
    assert fp16.caption(trained.images) == OrtCaptioner(onnx_export, max_new_tokens=12).caption(trained.images)
    assert fp16.describe() == "onnxruntime CPU, cpu, fp16, quantize none"


def test_describe_and_the_captioner_interface(trained, onnx_export):
    captioner = OrtCaptioner.from_folder(onnx_export, adapter=str(trained.adapter), max_new_tokens=12)
    assert captioner.describe() == "onnxruntime CPU, cpu, fp32, quantize none"
    assert captioner.max_new_tokens_limit(None) == 39 and captioner.max_new_tokens_limit(PROMPT) == 36
    captioner.prompt, captioner.max_new_tokens = PROMPT, 5
    assert (captioner.prompt, captioner.max_new_tokens, captioner.num_beams) == (PROMPT, 5, 1)
    captioner.set_adapter(str(trained.adapter))  # the adapter merged in, or none (the export as it is): no-ops
    captioner.set_adapter(None)
    with pytest.raises(ConfigError, match="adapters cannot change at run time"):
        captioner.set_adapter(str(trained.base / "config.json"))
    with pytest.raises(ConfigError, match="greedily; num_beams must be 1"):
        captioner.num_beams = 3
    with pytest.raises(ConfigError, match="max_new_tokens"):
        captioner.max_new_tokens = 0
    assert captioner.num_beams == 1 and captioner.max_new_tokens == 5  # a refused change changes nothing


def test_another_adapter_dtype_quantization_or_revision_is_refused(trained, onnx_export, tmp_path):
    other = tmp_path / "other.safetensors"
    other.write_bytes(trained.adapter.read_bytes() + b" ")
    with pytest.raises(ConfigError, match="adapter .*merged in; adapter .*other.safetensors needs another export"):
        OrtCaptioner.from_folder(onnx_export, adapter=str(other))
    for bad, match in ((dict(dtype="fp16"), "exported in fp32"), (dict(quantize="int8"), "quantize int8 needs"),
                       (dict(merge=False), "merged into the exported weights"), (dict(num_beams=2), "greedily"),
                       (dict(revision="main"), "no revisions"), (dict(device="cuda"), "install onnxruntime-gpu")):
        with pytest.raises(ConfigError, match=match):
            OrtCaptioner.from_folder(onnx_export, **bad)


def test_a_damaged_or_newer_folder_is_named(onnx_export, tmp_path):
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(onnx_export, folder)
    with open(folder / DECODER, "r+b") as handle:
        handle.truncate(1000)
    with pytest.raises(BlipLoraError, match=r"text_decoder.onnx: 1000 bytes, the export wrote \d+ \(truncated"):
        OrtCaptioner(folder)
    shutil.copy(onnx_export / DECODER, folder / DECODER)
    with open(folder / f"{VISION}.data", "r+b") as handle:  # the weights beside the graph are checked as well
        handle.truncate(4096)
    with pytest.raises(BlipLoraError, match=r"vision_encoder.onnx.data: 4096 bytes, the export wrote \d+"):
        OrtCaptioner(folder)
    manifest = json.loads((folder / MANIFEST).read_text())
    (folder / MANIFEST).write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(BlipLoraError, match="format version 99 is newer than this blip-lora reads"):
        read_manifest(folder)
    (folder / MANIFEST).write_text(json.dumps({**manifest, "format_version": 1}))  # all layers in one tensor
    with pytest.raises(BlipLoraError, match=r"format version 1 is older than this blip-lora reads \(2\.\.2, its "
                       r"graphs have other inputs\): export the model again"):
        OrtCaptioner(folder)
    (folder / MANIFEST).unlink()
    with pytest.raises(BlipLoraError, match="not an ONNX export"):
        read_manifest(folder)


def test_an_existing_output_is_replaced_only_when_it_is_an_export_and_forced(trained, onnx_export, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(BlipLoraError, match="exists and is not an ONNX export"):
        export_onnx(str(trained.base), tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    with pytest.raises(BlipLoraError, match="pass --force"):
        export_onnx(str(trained.base), onnx_export)
    with pytest.raises(ConfigError, match="use dtype fp32"):
        export_onnx(str(trained.base), tmp_path / "x", dtype="fp16", quantize="int8")
    out = tmp_path / "base_only"
    export_onnx(str(trained.base), out)
    export_onnx(str(trained.base), out, force=True)
    assert read_manifest(out).adapter == ""


def test_generation_settings_the_onnx_captioner_does_not_copy_refuse_the_export(trained, tmp_path):
    bundle = load_blip(str(trained.base), device="cpu")
    bundle.model.text_decoder.generation_config.repetition_penalty = 1.3
    with pytest.raises(ConfigError, match="repetition_penalty=1.3 changes greedy decoding"):
        export_bundle(bundle, tmp_path / "x")


def test_gpu_providers_that_do_not_load_fall_back_to_the_cpu(trained, onnx_export):
    """Given CUDA and TensorRT (as onnxruntime-gpu lists them) on a machine where they cannot load, the sessions
    run on the CPU, describe() says so, and the captions are the CPU's."""
    from blip_lora_core.ort.providers import CPU, CUDA, TENSORRT

    captioner = OrtCaptioner(onnx_export, max_new_tokens=12, providers=[TENSORRT, CUDA, CPU])
    if captioner._decoder.get_providers()[0] != CPU:
        pytest.skip("CUDA loads here: the fallback is not exercised")
    assert captioner.device == "cpu" and captioner.describe().startswith("onnxruntime CPU, cpu")
    assert captioner.caption(trained.images) == OrtCaptioner(onnx_export, max_new_tokens=12).caption(trained.images)


def test_the_command_line_exports_and_captions_and_evaluates_with_the_folder(trained, tmp_path, capsys):
    from blip_lora_training.cli import main

    out = tmp_path / "export"
    assert main(["export", "--format", "onnx", "--model", str(trained.base), "--adapter", str(trained.adapter),
                 "--out", str(out), "--no-progress"]) == 0
    assert f"onnx export: {out} (" in capsys.readouterr().out
    files = sorted(str(path) for path in trained.base.parent.glob("*.png"))
    results = {}
    for name, model_args in (("onnx", ["--model", str(out)]),
                             ("torch", ["--model", str(trained.base), "--adapter", str(trained.adapter)])):
        args = [*model_args, "--max-new-tokens", "12", "--prompt", PROMPT]
        assert main(["caption", *files, *args, "--out", str(tmp_path / f"{name}.jsonl")]) == 0
        assert main(["eval", str(trained.data), *args, "--out", str(tmp_path / f"{name}.json")]) == 0
        results[name] = ((tmp_path / f"{name}.jsonl").read_text(), json.loads((tmp_path / f"{name}.json").read_text()))
    assert results["onnx"] == results["torch"]
    assert results["onnx"][1]["metrics"]["exact_match"] >= 0.5  # the trained adapter's captions, merged in
    assert main(["caption", files[0], "--model", str(out), "--adapter", str(trained.base / "config.json")]) == 2
    assert "adapters cannot change at run time" in capsys.readouterr().err
    assert main(["export", "--format", "onnx", "--model", str(trained.base), "--out", str(out)]) == 2
    assert "pass --force" in capsys.readouterr().err
