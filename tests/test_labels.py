"""Labels are built as generate() consumes them: [DEC] first, pad and prompt masked, dynamic padding."""

from __future__ import annotations

import torch

from blip_lora_core.models.labels import (
    IGNORE_INDEX,
    TokenSpec,
    collate_text,
    encode_example,
    generation_prompt,
    strip_prompt,
)


def _spec(bundle):
    return TokenSpec.from_model(bundle.model)


def _ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False).input_ids


def test_first_token_is_blip_bos_not_cls(tiny_bundle):
    spec, tok = _spec(tiny_bundle), tiny_bundle.tokenizer
    ids, labels = encode_example(tok, spec, "One blue cube")
    assert ids[0] == spec.bos_id == tok.convert_tokens_to_ids("[DEC]") != tok.cls_token_id
    assert ids == [spec.bos_id] + _ids(tok, "One blue cube") + [spec.sep_id]
    assert labels == [IGNORE_INDEX] + _ids(tok, "One blue cube") + [spec.sep_id]


def test_prompt_is_in_front_and_masked(tiny_bundle):
    spec, tok = _spec(tiny_bundle), tiny_bundle.tokenizer
    ids, labels = encode_example(tok, spec, "One red cube", "a picture of")
    prompt = _ids(tok, "a picture of")
    assert ids == [spec.bos_id] + prompt + _ids(tok, "One red cube") + [spec.sep_id]
    assert labels[: 1 + len(prompt)] == [IGNORE_INDEX] * (1 + len(prompt))
    assert labels[1 + len(prompt):] == ids[1 + len(prompt):]


def test_dynamic_padding_is_masked(tiny_bundle):
    spec, tok = _spec(tiny_bundle), tiny_bundle.tokenizer
    batch = collate_text(tok, spec, ["One red cube", "A blue cube on top of a green cube"], [None, None])
    longest = 2 + len(_ids(tok, "A blue cube on top of a green cube"))
    assert batch["input_ids"].shape == (2, longest)
    short = 2 + len(_ids(tok, "One red cube"))
    assert (batch["input_ids"][0, short:] == spec.pad_id).all()
    assert (batch["labels"][0, short:] == IGNORE_INDEX).all()
    assert batch["attention_mask"][0].tolist() == [1] * short + [0] * (longest - short)
    assert (batch["labels"][1] != IGNORE_INDEX).sum() == longest - 1


def test_padding_does_not_change_the_loss(tiny_bundle, pixels):
    """The loss of a padded batch equals the mean over the real tokens of each caption alone."""
    model, spec, tok = tiny_bundle.model.eval(), _spec(tiny_bundle), tiny_bundle.tokenizer
    texts = ["One red cube", "A blue cube on top of a green cube"]
    batch = collate_text(tok, spec, texts, [None, None])
    with torch.no_grad():
        padded = model(pixel_values=pixels, **batch).logits
        for row, text in enumerate(texts):
            alone = collate_text(tok, spec, [text], [None])
            logits = model(pixel_values=pixels[row:row + 1], **alone).logits
            n = alone["input_ids"].shape[1]
            torch.testing.assert_close(padded[row, :n], logits[0], rtol=1e-4, atol=1e-4)


def test_masked_positions_do_not_count_in_the_loss(tiny_bundle, pixels):
    model, spec, tok = tiny_bundle.model.eval(), _spec(tiny_bundle), tiny_bundle.tokenizer
    batch = collate_text(tok, spec, ["One red cube"], ["a picture of"])
    with torch.no_grad():
        out = model(pixel_values=pixels[:1], **batch)
    logits, labels = out.logits[0, :-1], batch["labels"][0, 1:]
    keep = labels != IGNORE_INDEX
    expected = torch.nn.functional.cross_entropy(logits[keep], labels[keep])
    torch.testing.assert_close(out.loss, expected, rtol=1e-5, atol=1e-5)
    assert keep.sum() == len(_ids(tok, "One red cube")) + 1


def test_long_captions_are_truncated_keeping_sep(tiny_bundle):
    spec, tok = _spec(tiny_bundle), tiny_bundle.tokenizer
    ids, labels = encode_example(tok, spec, " ".join(["cube"] * 200))
    assert len(ids) == spec.max_length and ids[-1] == spec.sep_id and labels[-1] == spec.sep_id


def test_generation_prompt_matches_training_prefix(tiny_bundle):
    spec, tok = _spec(tiny_bundle), tiny_bundle.tokenizer
    assert generation_prompt(tok, spec, None, 3) is None
    ids = generation_prompt(tok, spec, "a picture of", 2)
    train_ids, _ = encode_example(tok, spec, "One red cube", "a picture of")
    # generate() keeps all but the last id: exactly the training prefix before the caption
    assert ids[0, :-1].tolist() == train_ids[: ids.shape[1] - 1]
    assert strip_prompt(torch.arange(10).view(1, 10), 3).tolist() == [[4, 5, 6, 7, 8, 9]]
