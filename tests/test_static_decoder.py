"""The static-cache greedy decoder gives generate()'s tokens: with and without a prompt, rows ending at
[SEP] at different steps, padding rows, min_new_tokens, hooked adapters, bf16 and int8; the Captioner
takes it wherever it applies and says which path it runs."""

from __future__ import annotations

import pytest
import torch

from blip_lora_core import ConfigError
from blip_lora_core._compat import TRANSFORMERS_MAJOR
from blip_lora_core.models.caption_settings import CaptionSettings
from blip_lora_core.models.captioning import Captioner
from blip_lora_core.models.static_decoder import StaticGreedyDecoder, blocker, bucket
from tests.test_captioning import _adapter, _images

PROMPT = "a picture of"
# transformers 4's generate() stops and pads otherwise: there the Captioner uses generate() (tests/test_compat.py)
pytestmark = pytest.mark.skipif(TRANSFORMERS_MAJOR < 5, reason="the static decoder serves transformers 5 only")


def _generate(model, pixels, prompt_ids, max_new_tokens):
    """model.generate() as the Captioner calls it: input_ids [DEC] prompt [SEP] or none."""
    kwargs = {}
    if prompt_ids:
        text = model.config.text_config
        ids = torch.tensor([[text.bos_token_id, *prompt_ids, text.sep_token_id]] * pixels.shape[0],
                           device=pixels.device)
        kwargs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    with torch.inference_mode():
        return model.generate(pixel_values=pixels, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                              **kwargs)


def _pixels(n, size=64, seed=0):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _prompt(bundle, prompt):
    return bundle.tokenizer(prompt, add_special_tokens=False).input_ids if prompt else []


@pytest.mark.parametrize("prompt", [None, PROMPT])
@pytest.mark.parametrize("max_new_tokens", [1, 7, 30])
def test_same_tokens_as_generate(tiny_bundle, prompt, max_new_tokens):
    ids = _prompt(tiny_bundle, prompt)
    pixels = _pixels(3)
    expected = _generate(tiny_bundle.model, pixels, ids, max_new_tokens)
    got = StaticGreedyDecoder(tiny_bundle.model).generate(pixels, ids, max_new_tokens)
    assert expected.shape == (3, 1 + len(ids) + max_new_tokens)
    assert torch.equal(got, expected)


def _raise_eos(model, by):
    """Add ``by`` to the [SEP] logit's bias so that rows end at different steps (random weights rarely end)."""
    decoder = model.text_decoder.cls.predictions.decoder
    with torch.no_grad():
        decoder.bias[model.config.text_config.sep_token_id] += by


@pytest.mark.parametrize("by", [0.22, 0.38])
@pytest.mark.parametrize("buckets", [None, (4,)])
def test_rows_ending_at_different_steps_and_padding_rows(tiny_bundle, by, buckets):
    """0.22: one row never ends, the others end at step 10 and are padded after [SEP];
    0.38: rows end at steps 1 and 4 and all stop there (early stop). Buckets (4,): 3 rows + 1 padding row."""
    model = tiny_bundle.model
    _raise_eos(model, by)
    pixels = _pixels(8, seed=1)[:3]
    expected = _generate(model, pixels, [], 12)
    sep, pad = model.config.text_config.sep_token_id, model.config.text_config.pad_token_id
    ended = (expected == sep).any(1)
    assert ended.any() and (not ended.all() or expected.shape[1] < 13)  # the case the parameter is for
    assert (expected == pad).any()  # some row is padded after its [SEP]
    decoder = StaticGreedyDecoder(model, batch_buckets=buckets)
    assert torch.equal(decoder.generate(pixels, [], 12), expected)
    if buckets:
        assert next(iter(decoder._plans.values())).out.shape[0] == 4


def test_min_new_tokens_of_the_generation_config(tiny_bundle):
    model = tiny_bundle.model
    _raise_eos(model, 0.38)
    model.text_decoder.generation_config.min_new_tokens = 6
    pixels = _pixels(3, seed=1)
    expected = _generate(model, pixels, [], 9)
    assert not (expected[:, 1:7] == model.config.text_config.sep_token_id).any()
    assert torch.equal(StaticGreedyDecoder(model).generate(pixels, [], 9, min_new_tokens=6), expected)


def test_plans_are_reused_and_bounded(tiny_bundle):
    decoder = StaticGreedyDecoder(tiny_bundle.model, max_plans=2)
    pixels = _pixels(2)
    first = decoder.generate(pixels, [], 5)
    for n in (3, 4, 5):
        decoder.generate(pixels, [], n)
    assert len(decoder._plans) == 2
    assert torch.equal(decoder.generate(pixels, [], 5), first)
    assert [bucket(n) for n in (1, 2, 3, 5, 9, 100)] == [1, 2, 4, 8, 16, 100]


def test_blocker_names_what_the_fast_path_does_not_copy(tiny_bundle):
    model = tiny_bundle.model
    assert blocker(model, 1, 3, 30) is None
    assert blocker(model, 3, 0, 30) == "beam search (3 beams)"
    assert "exceed" in blocker(model, 1, 0, 40)  # the tiny model has 40 positions
    model.text_decoder.generation_config.repetition_penalty = 1.3
    assert blocker(model, 1, 0, 5) == "generation_config.repetition_penalty=1.3"


@pytest.mark.parametrize("merge", [True, False])
def test_captioner_fast_path_equals_generate_with_adapters(tiny_bundle, tmp_path, merge):
    adapter = _adapter(tiny_bundle, tmp_path / "a.safetensors", 3)
    images = _images(3)
    fast = Captioner(tiny_bundle, max_new_tokens=8, batch_size=2, prompt=PROMPT)
    plain = Captioner(tiny_bundle, fast.settings.with_changes(fast=False))
    zero_shot = fast.caption(images)
    assert zero_shot == plain.caption(images)
    fast.set_adapter(adapter, merge=merge)  # one model: the adapter is in both captioners' weights
    assert fast.caption(images) == plain.caption(images) != zero_shot
    assert fast.describe() == "fast static-cache (eager), cpu, float32, quantize none"
    assert plain.describe() == "generate (fast path off), cpu, float32, quantize none"


def test_beams_go_through_generate(tiny_bundle):
    captioner = Captioner(tiny_bundle, max_new_tokens=6)
    captioner.num_beams = 3
    assert captioner.describe().startswith("generate (beam search (3 beams))")
    pixels = tiny_bundle.preprocess.batch(_images(2))
    with torch.inference_mode():
        expected = tiny_bundle.model.generate(pixel_values=pixels, max_new_tokens=6, num_beams=3)
    assert torch.equal(captioner.generate_ids(pixels), expected)
    with pytest.raises(ConfigError, match="num_beams"):
        captioner.num_beams = 0


def test_bf16_fast_path_equals_bf16_generate(tiny_model_dir):
    captioner = Captioner.from_pretrained(str(tiny_model_dir), device="cpu", dtype="bf16", max_new_tokens=10)
    pixels = captioner.bundle.preprocess.batch(_images(3)).to(torch.bfloat16)
    expected = _generate(captioner.model, pixels, [], 10)
    assert torch.equal(captioner.generate_ids(pixels), expected)
    assert captioner.describe() == "fast static-cache (eager), cpu, bfloat16, quantize none"


def test_int8_quantizes_a_copy_and_keeps_generate_tokens(tiny_bundle, tmp_path):
    adapter = _adapter(tiny_bundle, tmp_path / "a.safetensors", 3)
    captioner = Captioner(tiny_bundle, max_new_tokens=10, quantize="int8")
    captioner.set_adapter(adapter)
    pixels = tiny_bundle.preprocess.batch(_images(3))
    got = captioner.generate_ids(pixels)
    quantized = captioner._quantized
    assert quantized.text_decoder.bert.encoder.layer[0].attention.self.query._get_name() == "DynamicQuantizedLinear"
    assert type(tiny_bundle.model.text_decoder.bert.encoder.layer[0].attention.self.query) is torch.nn.Linear
    assert torch.equal(got, _generate(quantized, pixels, [], 10))
    float_ids = Captioner(tiny_bundle, max_new_tokens=10).generate_ids(pixels)
    # the float model is untouched: float linears, and the float Captioner gives its generate() tokens
    assert torch.equal(float_ids, _generate(tiny_bundle.model, pixels, [], 10))
    captioner.set_adapter(None)
    assert captioner._quantized is None  # re-quantized from the new weights on the next caption
    assert captioner.describe() == "fast static-cache (eager), cpu, float32, quantize int8"


@pytest.mark.parametrize("bad, match", [
    (dict(max_new_tokens=0), "max_new_tokens"), (dict(num_beams=1.5), "num_beams"), (dict(dtype="fp8"), "dtype"),
    (dict(device="gpu0"), "not a torch device"), (dict(quantize="int4"), "quantize must be"),
    (dict(quantize="int8", device="cuda"), "CPU only"), (dict(quantize="int8", dtype="bf16"), "fp32"),
    (dict(quantize="int8", merge=False), "needs merge"), (dict(batch_size=True), "batch_size"),
])
def test_caption_settings_are_validated(bad, match):
    with pytest.raises(ConfigError, match=match):
        CaptionSettings(**bad)
    with pytest.raises(ConfigError, match="unknown caption setting"):
        CaptionSettings().with_changes(beams=2)
    assert CaptionSettings(prompt="", dtype="", quantize="") == CaptionSettings()


@pytest.mark.slow
@pytest.mark.xdist_group("blip_large")
def test_same_tokens_as_generate_on_blip_large_random_weights():
    """BLIP-large's architecture (random weights, fp32, 384 px): 2 images without a prompt, 1 with."""
    from blip_lora_core.models.blip_internals import set_attention
    from blip_lora_core.models.loading import blip_large_config, build_random_blip

    model = build_random_blip(blip_large_config(), seed=0)
    set_attention(model, "sdpa")  # as load_blip does
    decoder = StaticGreedyDecoder(model)
    pixels = _pixels(2, size=384)
    expected = _generate(model, pixels, [], 5)
    assert torch.equal(decoder.generate(pixels, [], 5), expected)
    prompt = [1037, 3861, 1997]  # "a picture of" in BERT's vocabulary
    expected = _generate(model, pixels[:1], prompt, 4)
    assert torch.equal(decoder.generate(pixels[:1], prompt, 4), expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (CUDA graphs)")
def test_cuda_graphs_give_generate_tokens_for_every_bucket(tiny_model_dir):
    """On CUDA, fp32: one graph per (bucket, prompt, length); batches 1, 3, 5 padded to buckets 1, 4, 8.
    (fp16 is checked on BLIP-large by bench/gpu.sh, where rounding may flip near-ties of random weights.)"""
    from blip_lora_core.models.loading import load_blip

    bundle = load_blip(str(tiny_model_dir), device="cuda", dtype="fp32")
    model = bundle.model
    _raise_eos(model, 0.22)  # rows end at different steps
    decoder = StaticGreedyDecoder(model)
    assert decoder.graphs
    for batch in (1, 3, 5):
        pixels = _pixels(batch, seed=1).to("cuda")
        for ids in ([], _prompt(bundle, PROMPT)):
            assert torch.equal(decoder.generate(pixels, ids, 12), _generate(model, pixels, ids, 12))
    assert all(plan.graph is not None for plan in decoder._plans.values())
    assert sorted({key[0] for key in decoder._plans}) == [1, 4, 8]
