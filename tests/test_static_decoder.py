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
# transformers 4's generate() stops and pads otherwise: there the Captioner uses generate() (tests/test_compat.py),
# so the comparisons with generate() and the fast path's descriptions hold on 5.x only; the rest runs on every line
needs_transformers_5 = pytest.mark.skipif(TRANSFORMERS_MAJOR < 5,
                                          reason="the static decoder serves transformers 5 only")


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


@needs_transformers_5
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


@needs_transformers_5
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


@needs_transformers_5
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
    reused = dict(decoder._plans)
    decoder.generate(pixels, [], 4)  # the least recently used plan (5 tokens) goes when a third shape comes
    decoder.generate(pixels, [], 6)
    assert [key[2] for key in decoder._plans] == [4, 6] and decoder._plans[(2, 0, 4, 0)] is reused[(2, 0, 4, 0)]
    sizes = (1, 2, 3, 4, 5, 8, 9, 16, 17, 32, 33, 64, 65, 100)
    assert [bucket(n) for n in sizes] == [1, 2, 4, 4, 8, 8, 16, 16, 32, 32, 64, 64, 65, 100]


def test_defaults_on_the_cpu(tiny_bundle):
    """No CUDA graphs and no padding buckets on the CPU (graphs=True is refused there); 8 plans at most;
    30 new tokens; [SEP] allowed from the first step."""
    model = tiny_bundle.model
    decoder = StaticGreedyDecoder(model)
    assert decoder.graphs is False and decoder.batch_buckets == () and decoder.max_plans == 8
    with pytest.raises(ValueError, match="CUDA graphs need the model on a CUDA device"):
        StaticGreedyDecoder(model, graphs=True)
    pixels = _pixels(1)
    for n in range(1, 10):
        decoder.generate(pixels, [], n)
    assert len(decoder._plans) == 8
    assert torch.equal(decoder.generate(pixels), decoder.generate(pixels, [], 30))
    ids, log_probs = decoder.decode(pixels)
    assert torch.equal(ids, decoder.generate(pixels)) and torch.equal(log_probs, decoder.decode(pixels, [], 30)[1])
    sep = model.config.text_config.sep_token_id
    # 30 new tokens, unless [SEP] came first (random weights: transformers 5 inits them so that it does not)
    assert ids.shape[1] == 31 or (ids.shape[1] < 31 and ids[0, -1] == sep and (ids[0, 1:-1] != sep).all())
    _raise_eos(model, 5.0)  # every row's first token is [SEP]
    ended = [[model.config.text_config.bos_token_id, sep]]
    assert decoder.generate(pixels).tolist() == decoder.decode(pixels)[0].tolist() == ended


@needs_transformers_5
@pytest.mark.parametrize("buckets", [None, (4,)])
def test_decoding_stops_once_every_real_row_has_ended(tiny_bundle, buckets):
    """Eagerly (CPU), a caption costs one step per token up to the last real row's [SEP], never max_new_tokens;
    a padding row of the bucket (a zero image) never holds the batch up."""
    model = tiny_bundle.model
    _raise_eos(model, 0.38)  # rows end at steps 1 and 4
    steps = []
    model.text_decoder.cls.register_forward_hook(lambda *_: steps.append(1))
    pixels = _pixels(8, seed=1)[:3]
    decoder = StaticGreedyDecoder(model, batch_buckets=buckets)
    got = decoder.generate(pixels, [], 12)
    assert got.shape[1] == 1 + 4 and len(steps) == 4
    assert torch.equal(got, _generate(model, pixels, [], 12))
    # decode: the same ids, and one log-probability per generated token of the real rows, 0 after a row's [SEP]
    ids, log_probs = decoder.decode(pixels, [], 12)
    assert torch.equal(ids, got) and log_probs.shape == (3, 4) and log_probs.dtype == torch.float32
    sep = (ids[:, 1:] == model.config.text_config.sep_token_id).int()
    after = (sep.cumsum(1) - sep) > 0
    assert after.any() and (log_probs[after] == 0).all()
    with torch.inference_mode():  # generate()'s scores of the same steps: log-softmax over the vocabulary
        scores = model.generate(pixel_values=pixels, max_new_tokens=12, do_sample=False, num_beams=1,
                                output_scores=True, return_dict_in_generate=True).scores
    expected = torch.stack([torch.log_softmax(step.float(), -1) for step in scores], 1)  # (B, n, vocab)
    expected = expected.gather(2, ids[:, 1:, None])[..., 0]
    torch.testing.assert_close(log_probs[~after], expected[~after], rtol=1e-5, atol=1e-5)


@needs_transformers_5
def test_blocker_names_what_the_fast_path_does_not_copy(tiny_bundle):
    model = tiny_bundle.model
    assert blocker(model, 1, 3, 30) is None
    assert blocker(model, 3, 0, 30) == "beam search (3 beams)"
    # the tiny model has 40 positions: [DEC] + prompt + new tokens must fit
    assert blocker(model, 1, 9, 30) is None
    assert blocker(model, 1, 10, 30) == "41 tokens exceed the 40 positions"
    model.text_decoder.generation_config.repetition_penalty = 1.3
    assert blocker(model, 1, 0, 5) == "generation_config.repetition_penalty=1.3"


# generation settings that change greedy decoding, each at a value the static decoder does not copy
NOT_COPIED = {"do_sample": True, "num_beams": 2, "repetition_penalty": 1.3, "no_repeat_ngram_size": 2,
              "encoder_repetition_penalty": 1.2, "encoder_no_repeat_ngram_size": 2, "bad_words_ids": [[5]],
              "suppress_tokens": [5], "begin_suppress_tokens": [5], "forced_bos_token_id": 5, "forced_eos_token_id": 5,
              "sequence_bias": {(5,): 1.0}, "exponential_decay_length_penalty": (2, 1.1), "min_length": 3,
              "stop_strings": ["cube"], "max_time": 1.0, "num_return_sequences": 2}
# and the values that leave greedy decoding as it is (a generation_config.json may well spell them out)
NEUTRAL = {"do_sample": False, "num_beams": 1, "repetition_penalty": 1.0, "no_repeat_ngram_size": 0,
           "encoder_repetition_penalty": 1.0, "encoder_no_repeat_ngram_size": 0, "min_length": 0,
           "num_return_sequences": 1}


@needs_transformers_5
@pytest.mark.parametrize("name", sorted(NOT_COPIED))
def test_blocker_names_each_generation_setting_it_does_not_copy(tiny_bundle, name):
    config = tiny_bundle.model.text_decoder.generation_config
    for neutral, value in NEUTRAL.items():
        setattr(config, neutral, value)
    assert blocker(tiny_bundle.model, 1, 0, 5) is None
    setattr(config, name, NOT_COPIED[name])
    assert blocker(tiny_bundle.model, 1, 0, 5) == f"generation_config.{name}={NOT_COPIED[name]!r}"


def test_blocker_sends_transformers_4_to_generate(tiny_bundle, monkeypatch):
    import blip_lora_core.models.static_decoder as static_decoder

    monkeypatch.setattr(static_decoder, "TRANSFORMERS_MAJOR", 4)
    assert blocker(tiny_bundle.model, 1, 0, 5) == "transformers 4.x"


@needs_transformers_5
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
    why = "beam search (3 beams)" if TRANSFORMERS_MAJOR >= 5 else f"transformers {TRANSFORMERS_MAJOR}.x"
    assert captioner.describe().startswith(f"generate ({why})")
    pixels = tiny_bundle.preprocess.batch(_images(2))
    with torch.inference_mode():
        expected = tiny_bundle.model.generate(pixel_values=pixels, max_new_tokens=6, num_beams=3)
    assert torch.equal(captioner.generate_ids(pixels), expected)
    with pytest.raises(ConfigError, match="num_beams"):
        captioner.num_beams = 0


@needs_transformers_5
def test_bf16_fast_path_equals_bf16_generate(tiny_model_dir):
    captioner = Captioner.from_pretrained(str(tiny_model_dir), device="cpu", dtype="bf16", max_new_tokens=10)
    pixels = captioner.bundle.preprocess.batch(_images(3)).to(torch.bfloat16)
    expected = _generate(captioner.model, pixels, [], 10)
    assert torch.equal(captioner.generate_ids(pixels), expected)
    assert captioner.describe() == "fast static-cache (eager), cpu, bfloat16, quantize none"


@needs_transformers_5
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


@needs_transformers_5
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


@needs_transformers_5
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
