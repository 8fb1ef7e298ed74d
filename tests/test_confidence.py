"""Caption confidence: the geometric-mean probability of the caption's tokens ([SEP] included, [PAD] after it
left out), equal to an independent teacher-forced scoring of the same tokens, on every decoding path."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from blip_lora_core.models.captioning import Captioner
from blip_lora_core.models.confidence import caption_confidence, caption_token_mask
from tests.test_captioning import _adapter

EOS, PAD = 102, 0


def test_mask_keeps_tokens_up_to_the_first_sep_and_drops_the_padding_after_it():
    generated = np.array([[5, 6, EOS, PAD, PAD], [7, 8, 9, 10, 11], [EOS, PAD, PAD, PAD, PAD]])
    assert caption_token_mask(generated, EOS).tolist() == [
        [True, True, True, False, False], [True] * 5, [True, False, False, False, False]]


def test_confidence_is_the_geometric_mean_of_the_caption_tokens_probabilities():
    generated = np.array([[5, 6, EOS, PAD], [7, 8, 9, 10]])
    probs = np.array([[0.9, 0.5, 0.8, 0.01], [0.5, 0.5, 0.25, 1.0]])
    confidence, tokens = caption_confidence(generated, np.log(probs), EOS)
    assert tokens.tolist() == [3, 4]
    assert confidence[0] == pytest.approx((0.9 * 0.5 * 0.8) ** (1 / 3), rel=1e-12)  # the [PAD]'s 0.01 left out
    assert confidence[1] == pytest.approx((0.5 * 0.5 * 0.25 * 1.0) ** (1 / 4), rel=1e-12)


def test_a_caption_with_no_tokens_is_certain():
    confidence, tokens = caption_confidence(np.zeros((2, 0), dtype=np.int64), np.zeros((2, 0)), EOS)
    assert tokens.tolist() == [0, 0] and confidence.tolist() == [1.0, 1.0]


def _teacher_forced(captioner: Captioner, image, text_ids: list[int]) -> tuple[float, int]:
    """Score the caption's tokens by one forward pass over [DEC] prompt caption: (confidence, tokens)."""
    model, bundle = captioner.model, captioner.bundle
    prompt = bundle.tokenizer(captioner.prompt, add_special_tokens=False).input_ids if captioner.prompt else []
    ids = torch.tensor([[model.config.text_config.bos_token_id, *prompt, *text_ids]])
    with torch.inference_mode():
        logits = model(pixel_values=bundle.preprocess.batch([image]), input_ids=ids).logits[0].float()
    log_probs = logits.log_softmax(-1)
    start = 1 + len(prompt)
    scores = [float(log_probs[start - 1 + j, token]) for j, token in enumerate(text_ids)]
    return math.exp(sum(scores) / len(scores)), len(scores)


def _caption_ids(captioner: Captioner, image) -> list[int]:
    """The generated ids of one image up to and including its first [SEP]."""
    pixels = captioner.bundle.preprocess.batch([image])
    ids = captioner.generate_ids(pixels)[0, 1 + len(captioner._prompt_ids(captioner.prompt)):].tolist()
    eos = captioner.model.config.text_config.sep_token_id
    return ids[:ids.index(eos) + 1] if eos in ids else ids


def _results_of_several_lengths(captioner: Captioner, images) -> list:
    """caption_results with the [SEP] logit raised until captions end at different steps (random weights rarely
    end; how much it takes depends on the weights, which differ between transformers lines)."""
    bias = captioner.model.text_decoder.cls.predictions.decoder.bias
    sep = captioner.model.config.text_config.sep_token_id
    original = float(bias[sep])
    for by in (0.4, 0.3, 0.5, 0.2, 0.6, 0.8, 1.0):
        with torch.no_grad():
            bias[sep] = original + by
        results = captioner.caption_results(images)
        if len({r.tokens for r in results}) > 1:
            return results
    raise AssertionError("no [SEP] bias made the captions end at different steps")


@pytest.mark.parametrize("settings", [{}, {"fast": False}, {"prompt": "a picture of"},
                                      {"prompt": "a picture of", "fast": False}, {"num_beams": 3}],
                         ids=["fast", "generate", "fast-prompt", "generate-prompt", "beams"])
def test_confidence_equals_teacher_forced_scoring_on_every_path(tiny_bundle, tmp_path, settings):
    """A seeded adapter and a likelier [SEP]: captions of different lengths on every path."""
    adapter = _adapter(tiny_bundle, tmp_path / "a.safetensors", seed=1)
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(6)]
    captioner = Captioner(tiny_bundle, max_new_tokens=12, batch_size=3, **settings)
    captioner.set_adapter(adapter)
    results = _results_of_several_lengths(captioner, images)
    assert [r.text for r in results] == captioner.caption(images)
    expected = [_teacher_forced(captioner, image, _caption_ids(captioner, image)) for image in images]
    assert [r.tokens for r in results] == [tokens for _, tokens in expected]
    for result, (confidence, _) in zip(results, expected, strict=True):
        assert result.confidence == pytest.approx(confidence, rel=1e-4)
    assert len({round(r.confidence, 6) for r in results}) > 1
