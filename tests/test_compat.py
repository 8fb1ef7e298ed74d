"""_compat: SDPA for BLIP's vision attention gives transformers' eager numbers (LoRA hooks still applied),
on the installed transformers and, in a subprocess, on each other supported line."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers.models.blip.modeling_blip import BlipAttention

from blip_lora_core._compat import TRANSFORMERS_MAJOR, use_eager_attention, use_fast_attention
from blip_lora_core.lora.hooks import LoraConfig, inject_lora
from tests.skip_policy import record_nested_skips


def _attention_layers(model):
    return [m for m in model.modules() if isinstance(m, BlipAttention)]


def _loss_and_grads(model, pixels, ids):
    model.zero_grad(set_to_none=True)
    loss = model(pixel_values=pixels, input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def _ids(bundle, batch=2):
    return bundle.tokenizer(["a red cube on a blue cube"] * batch, return_tensors="pt").input_ids


def test_load_blip_patches_every_vision_attention(tiny_bundle):
    layers = _attention_layers(tiny_bundle.model)
    assert layers and all("forward" in vars(m) for m in layers)
    assert len(layers) == tiny_bundle.model.config.vision_config.num_hidden_layers


def test_sdpa_matches_eager_loss_and_lora_gradients(tiny_bundle, pixels):
    model = tiny_bundle.model
    inject_lora(model, LoraConfig(r=4, alpha=8, dropout=0.0, targets=(r"vision_model\..*",)))
    with torch.no_grad():  # B = 0 would hide the hooks from the comparison
        for name, param in model.named_parameters():
            if name.endswith("lora_B"):
                param.normal_(0, 0.05)
    model.train()
    ids = _ids(tiny_bundle)
    fast_loss, fast_grads = _loss_and_grads(model, pixels, ids)
    assert use_eager_attention(model) == len(_attention_layers(model))
    eager_loss, eager_grads = _loss_and_grads(model, pixels, ids)
    torch.testing.assert_close(fast_loss, eager_loss, rtol=1e-5, atol=1e-6)
    assert fast_grads.keys() == eager_grads.keys() and any(g.abs().sum() > 0 for g in fast_grads.values())
    for name in fast_grads:
        torch.testing.assert_close(fast_grads[name], eager_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_sdpa_kernel_runs_in_fp32_and_eager_under_cpu_bf16_autocast(tiny_bundle, pixels, monkeypatch):
    calls = []
    real = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    model = tiny_bundle.model
    with torch.no_grad():
        model.vision_model(pixel_values=pixels)
        assert len(calls) == len(_attention_layers(model))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fast = model.vision_model(pixel_values=pixels).last_hidden_state
        use_eager_attention(model)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            eager = model.vision_model(pixel_values=pixels).last_hidden_state
    assert len(calls) == len(_attention_layers(model))  # no SDPA call under CPU bf16 autocast
    assert torch.equal(fast, eager)


def test_attention_maps_still_come_back_when_asked(tiny_bundle, pixels):
    model = tiny_bundle.model
    with torch.no_grad():
        fast = model.vision_model(pixel_values=pixels, output_attentions=True).attentions
        use_eager_attention(model)
        eager = model.vision_model(pixel_values=pixels, output_attentions=True).attentions
    assert fast is not None and len(fast) == len(eager) == len(_attention_layers(model))
    for a, b in zip(fast, eager, strict=True):
        assert torch.equal(a, b)


def test_patching_twice_is_idempotent_and_captions_do_not_change(tiny_bundle, pixels):
    model = tiny_bundle.model
    with torch.no_grad():
        fast = model.generate(pixel_values=pixels, max_new_tokens=8, min_new_tokens=8, do_sample=False)
        assert use_fast_attention(model) == len(_attention_layers(model))
        again = model.generate(pixel_values=pixels, max_new_tokens=8, min_new_tokens=8, do_sample=False)
        use_eager_attention(model)
        eager = model.generate(pixel_values=pixels, max_new_tokens=8, min_new_tokens=8, do_sample=False)
    assert torch.equal(fast, again) and torch.equal(fast, eager)
    assert use_eager_attention(model) == 0


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_eval_mode_never_drops_attention(tiny_bundle, pixels, dropout):
    model = tiny_bundle.model
    for layer in _attention_layers(model):
        layer.dropout.p = dropout
    with torch.no_grad():
        first = model.vision_model(pixel_values=pixels).last_hidden_state
        second = model.vision_model(pixel_values=pixels).last_hidden_state
    assert torch.equal(first, second)


def test_the_static_decoder_serves_only_the_transformers_line_it_is_checked_on(tiny_bundle):
    from blip_lora_core.models.captioning import Captioner
    from blip_lora_core.models.static_decoder import blocker

    reason = blocker(tiny_bundle.model, 1, 0, 10)
    described = Captioner(tiny_bundle).describe()
    if TRANSFORMERS_MAJOR >= 5:
        assert reason is None and described.startswith("fast static-cache")
    else:
        assert reason == f"transformers {TRANSFORMERS_MAJOR}.x" and described.startswith("generate (transformers 4.x)")


# -- each supported transformers line ------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]
LINES = REPO / ".venv" / "transformers-lines"  # make test installs each line here with pip --target
SUPPORTED_LINES = ("4.57.6", "5.17.0")  # the last 4.x and the GPU machine's 5.x; the venv's own is tested above


# tests that do not depend on the transformers line: they must pass on every line, never skip
LINE_INDEPENDENT = ("tests/test_static_decoder.py::test_caption_settings_are_validated",
                    "tests/test_static_decoder.py::test_plans_are_reused_and_bounded",
                    "tests/test_static_decoder.py::test_beams_go_through_generate",
                    "tests/test_models.py::test_preprocessing_matches_transformers_pil_processor",
                    "tests/test_compat.py::test_the_static_decoder_serves_only_the_transformers_line_it_is_checked_on")


@pytest.mark.slow
@pytest.mark.parametrize("version", SUPPORTED_LINES)
def test_the_attention_patch_and_model_loading_on_each_transformers_line(version, tmp_path, record_property):
    folder = LINES / version
    if not (folder / "transformers").is_dir():
        pytest.fail(f"transformers {version} is not installed in {folder}: run `make test` (it installs it)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder), str(REPO)])}
    found = subprocess.run([sys.executable, "-c", "import transformers; print(transformers.__version__)"],
                           env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert found == version
    # the nested run lists its skips for this run (tests/skip_policy.py), which checks them in CI
    env.pop("CI", None)
    skip_log = tmp_path / "skips.json"
    env.update(BLIP_LORA_SKIP_LOG=str(skip_log), BLIP_LORA_SKIP_SCOPE=f"transformers {version}")
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "-n", "0",
                          "tests/test_compat.py", "tests/test_models.py", "tests/test_static_decoder.py",
                          "-k", "not each_transformers_line and not blip_large and not cuda"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, f"transformers {version}:\n{run.stdout[-4000:]}\n{run.stderr[-2000:]}"
    skips = record_nested_skips(record_property, skip_log)
    passed = set(re.findall(r"^PASSED (\S+?)(?:\[.*)?$", run.stdout, re.M))
    assert set(LINE_INDEPENDENT) <= passed, sorted(set(LINE_INDEPENDENT) - passed)
    assert len(passed) >= 15 and skip_log.is_file()
    # only the static decoder's comparisons with generate() may skip, and only on 4.x
    skipped_files = {test.split("::")[0] for test, _ in skips}
    assert skipped_files <= ({"tests/test_static_decoder.py"} if version.startswith("4.") else set()), skips
