"""Labels are built as generate() consumes them: [DEC] first, pad and prompt masked, dynamic padding; the
training loss is the summed next-token cross-entropy over exactly the label tokens."""

from __future__ import annotations

import pytest
import torch

from blip_lora_core.models.labels import (
    IGNORE_INDEX,
    TokenSpec,
    collate_text,
    encode_example,
    generation_prompt,
    label_token_count,
    strip_prompt,
    token_loss_sum,
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


def _next_token_losses(logits, labels, smoothing):
    """The loss of every label token, one position at a time: the logits at position t predict token t + 1."""
    losses = []
    for row in range(labels.shape[0]):
        for t in range(labels.shape[1] - 1):
            target = int(labels[row, t + 1])
            if target == IGNORE_INDEX:
                continue
            log_p = torch.log_softmax(logits[row, t].double(), -1)
            losses.append((1 - smoothing) * -log_p[target] - smoothing * log_p.mean())
    return losses


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_token_loss_sum_is_the_next_token_loss_summed_over_label_tokens(tiny_bundle, pixels, smoothing):
    model, spec, tok = tiny_bundle.model.eval(), _spec(tiny_bundle), tiny_bundle.tokenizer
    batch = collate_text(tok, spec, ["One red cube", "A blue cube on top of a green cube"], ["a picture of", None])
    batch["pixel_values"] = pixels
    with torch.no_grad():
        logits = model(pixel_values=pixels, input_ids=batch["input_ids"],
                       attention_mask=batch["attention_mask"]).logits
        got = token_loss_sum(model, batch, label_smoothing=smoothing)
    losses = _next_token_losses(logits, batch["labels"], smoothing)
    # caption + [SEP] of each row: the prompt, [DEC] and padding are not learned
    assert len(losses) == label_token_count(batch) == (len(_ids(tok, "One red cube")) + 1
                                                       + len(_ids(tok, "A blue cube on top of a green cube")) + 1)
    assert got.dtype == torch.float32 and got.ndim == 0
    torch.testing.assert_close(got.double(), torch.stack(losses).sum(), rtol=1e-5, atol=1e-5)
    if smoothing == 0.0:  # no smoothing by default
        torch.testing.assert_close(token_loss_sum(model, batch).double(), torch.stack(losses).sum(), rtol=1e-5,
                                   atol=1e-5)


def test_a_label_in_the_first_position_is_never_counted(tiny_bundle, pixels):
    """Nothing predicts the first token: the count and the loss both leave position 0 out, whatever it holds."""
    model, spec, tok = tiny_bundle.model.eval(), _spec(tiny_bundle), tiny_bundle.tokenizer
    batch = collate_text(tok, spec, ["One red cube", "One blue cube"], [None, None])
    batch["pixel_values"] = pixels
    count = label_token_count(batch)
    with torch.no_grad():
        loss = token_loss_sum(model, batch)
        batch["labels"][:, 0] = batch["input_ids"][:, 1]  # a real token id where [DEC] sits
        assert label_token_count(batch) == count == 2 * (len(_ids(tok, "One red cube")) + 1)
        assert torch.equal(token_loss_sum(model, batch), loss)


def test_prompt_may_leave_room_for_one_caption_token_but_not_none(tiny_bundle):
    tok = tiny_bundle.tokenizer
    prompt = _ids(tok, "a picture of")
    spec = TokenSpec(*(getattr(_spec(tiny_bundle), f) for f in ("bos_id", "sep_id", "pad_id")),
                     max_length=1 + len(prompt) + 2)  # [DEC] prompt, one caption token, [SEP]
    ids, labels = encode_example(tok, spec, "One red cube", "a picture of")
    assert ids == [spec.bos_id, *prompt, _ids(tok, "One red cube")[0], spec.sep_id]
    assert labels == [IGNORE_INDEX] * (1 + len(prompt)) + ids[-2:]
    tight = TokenSpec(spec.bos_id, spec.sep_id, spec.pad_id, max_length=spec.max_length - 1)
    with pytest.raises(ValueError, match="'a picture of' leaves no room for a caption within"):
        encode_example(tok, tight, "One red cube", "a picture of")


def test_collate_needs_one_prompt_per_caption_and_gives_long_tensors(tiny_bundle):
    spec, tok = _spec(tiny_bundle), tiny_bundle.tokenizer
    batch = collate_text(tok, spec, ["One red cube", "One blue cube"], [None, "a picture of"])
    assert {k: v.dtype for k, v in batch.items()} == dict.fromkeys(batch, torch.long)
    assert generation_prompt(tok, spec, "a picture of", 2).dtype == torch.long
    with pytest.raises(ValueError):
        collate_text(tok, spec, ["One red cube", "One blue cube"], [None])
