"""Everything that reaches into transformers' BLIP (models/blip_internals.py) and the version switches
(_compat.py): SDPA attention gives transformers' numbers (LoRA hooks still applied) and falls back to
transformers' code where it must; the static decoder reads the text decoder right. On the installed
transformers and, in a subprocess, on each other supported line."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers.models.blip.modeling_blip import BlipAttention

from blip_lora_core._compat import TRANSFORMERS_MAJOR
from blip_lora_core.errors import ConfigError
from blip_lora_core.lora.hooks import LoraConfig, inject_lora
from blip_lora_core.models.blip_internals import SdpaBlipAttention, attention_of, set_attention
from blip_lora_core.models.loading import load_blip
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


def test_attention_is_an_option_of_loading(tiny_model_dir):
    layers = _attention_layers(load_blip(str(tiny_model_dir)).model)  # sdpa by default
    assert layers and all(type(m) is SdpaBlipAttention for m in layers)
    eager = load_blip(str(tiny_model_dir), attention="eager").model
    assert attention_of(eager) == "eager" and all(type(m) is BlipAttention for m in _attention_layers(eager))
    assert len(layers) == eager.config.vision_config.num_hidden_layers
    with pytest.raises(ConfigError, match="attention must be one of sdpa, eager, got 'flash'"):
        load_blip(str(tiny_model_dir), attention="flash")


def test_the_caption_settings_and_command_line_choose_the_attention(tiny_model_dir):
    from blip_lora_core.models.captioning import Captioner
    from blip_lora_training.cli import build_parser
    from blip_lora_training.commands._model_args import settings_from_args

    for flags, attention in (([], "sdpa"), (["--attention", "eager"], "eager")):
        settings = settings_from_args(build_parser().parse_args(["caption", "x.png", *flags]))
        assert settings.attention == attention
        captioner = Captioner.from_pretrained(str(tiny_model_dir), settings, device="cpu")
        assert attention_of(captioner.model) == attention


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
    assert set_attention(model, "eager") == len(_attention_layers(model))
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
        set_attention(model, "eager")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            eager = model.vision_model(pixel_values=pixels).last_hidden_state
    assert len(calls) == len(_attention_layers(model))  # no SDPA call under CPU bf16 autocast
    assert torch.equal(fast, eager)


def test_a_head_mask_falls_back_to_transformers_attention(tiny_bundle, monkeypatch):
    """transformers 4 passes a head mask to BlipAttention (5 takes none): SDPA cannot apply it, so the layer
    runs transformers' own forward, which does. On 4.x the masked output differs from the unmasked one."""
    layer = _attention_layers(tiny_bundle.model)[0]
    own, real = [], BlipAttention.forward
    monkeypatch.setattr(BlipAttention, "forward",
                        lambda self, *a, **k: own.append(k.get("head_mask")) or real(self, *a, **k))
    hidden = torch.randn(2, 9, layer.embed_dim, generator=torch.Generator().manual_seed(1))
    mask = torch.tensor([1.0, 0.0, 1.0, 0.0])[None, :, None, None]  # (1, heads, 1, 1): heads 1 and 3 off
    with torch.no_grad():
        masked = layer(hidden_states=hidden, head_mask=mask)[0]
        assert len(own) == 1 and own[0] is mask
        expected = real(layer, hidden_states=hidden, head_mask=mask)[0]
        unmasked = layer(hidden_states=hidden)[0]
    assert len(own) == 1  # without a mask: the SDPA path
    assert torch.equal(masked, expected)
    if TRANSFORMERS_MAJOR < 5:
        assert not torch.allclose(masked, unmasked, atol=1e-4)


def test_attention_maps_still_come_back_when_asked(tiny_bundle, pixels):
    model = tiny_bundle.model
    with torch.no_grad():
        fast = model.vision_model(pixel_values=pixels, output_attentions=True).attentions
        model.config.vision_config.output_attentions = True  # asked through the config, not the call
        configured = model.vision_model(pixel_values=pixels).attentions
        model.config.vision_config.output_attentions = False
        set_attention(model, "eager")
        eager = model.vision_model(pixel_values=pixels, output_attentions=True).attentions
    assert fast is not None and len(fast) == len(eager) == len(configured) == len(_attention_layers(model))
    for a, b, c in zip(fast, eager, configured, strict=True):
        assert torch.equal(a, b) and torch.equal(c, b)


def test_switching_twice_is_idempotent_and_captions_do_not_change(tiny_bundle, pixels):
    model = tiny_bundle.model
    with torch.no_grad():
        fast = model.generate(pixel_values=pixels, max_new_tokens=8, min_new_tokens=8, do_sample=False)
        assert set_attention(model, "sdpa") == 0
        again = model.generate(pixel_values=pixels, max_new_tokens=8, min_new_tokens=8, do_sample=False)
        set_attention(model, "eager")
        eager = model.generate(pixel_values=pixels, max_new_tokens=8, min_new_tokens=8, do_sample=False)
    assert torch.equal(fast, again) and torch.equal(fast, eager)
    assert set_attention(model, "eager") == 0


def test_the_static_decoder_reads_the_text_decoder_like_its_own_forward(tiny_bundle, pixels):
    """blip_internals.text_decoder_parts on this line: the static decoder's greedy tokens are those of the text
    decoder's public forward, run again on the whole sequence at every step (with [SEP] banned, as
    min_new_tokens does)."""
    from blip_lora_core.models.static_decoder import StaticGreedyDecoder

    model, steps = tiny_bundle.model, 8
    text = model.config.text_config
    with torch.no_grad():
        image = model.vision_model(pixel_values=pixels)[0]
        ids = torch.full((pixels.shape[0], 1), text.bos_token_id)
        for _ in range(steps):
            logits = model.text_decoder(input_ids=ids, encoder_hidden_states=image).logits[:, -1]
            logits[:, text.sep_token_id] = float("-inf")
            ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
    ours = StaticGreedyDecoder(model, graphs=False).generate(pixels, [], steps, min_new_tokens=steps)
    assert torch.equal(ours, ids)


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
def test_attention_internals_and_model_loading_on_each_transformers_line(version, tmp_path, record_property):
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
                          "tests/test_confidence.py",
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
