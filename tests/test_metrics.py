"""Caption metrics: numbers checked by hand and against pycocoevalcap."""

from __future__ import annotations

from pathlib import Path

import pytest
from pycocoevalcap.cider.cider import Cider

from blip_lora_core.train.data import Sample
from blip_lora_core.train.metrics import (
    bleu4,
    caption_metrics,
    cider,
    exact_match,
    normalise,
    references_by_class,
)


def test_normalise():
    assert normalise("  One BLUE cube.  ") == "one blue cube"
    assert normalise("A blue-green cube, isn't it?!") == "a blue green cube isnt it"
    assert normalise("Tab\tand\nnewline") == "tab and newline"
    assert normalise("...") == ""


def test_exact_match_any_reference():
    predictions = ["one blue cube", "No cube is visible.", "one red cube", ""]
    references = [["One blue cube"], ["Nothing here", "no cube is visible"], ["One wood cube"], ["x"]]
    assert exact_match(predictions, references) == 0.5
    assert exact_match([], []) == 0.0


def test_bleu4_identical_is_one():
    captions = ["a blue cube on top of a green cube", "the empty white table with nothing"]
    assert bleu4(captions, [[c] for c in captions]) == pytest.approx(1.0, abs=1e-6)


def test_bleu4_hand_checked_value():
    # n-gram precisions 5/6, 3/5, 2/4, 1/3, equal lengths (no brevity penalty): (1/12) ** (1/4).
    score = bleu4(["The cat sat on a mat."], [["the cat sat on the mat"]])
    assert score == pytest.approx((1 / 12) ** 0.25, abs=1e-6)
    assert score == pytest.approx(0.5372849659, abs=1e-6)


def test_bleu4_brevity_penalty_and_closest_reference():
    # Hypothesis of 4 words, closest reference 6 words: BP = exp(1 - 6/4); all precisions 1.
    import math

    score = bleu4(["the cat sat on"], [["the cat sat on the mat", "a dog is lying on a rug today"]])
    assert score == pytest.approx(math.exp(1 - 6 / 4), abs=1e-6)


def test_cider_right_beats_wrong():
    references = [["one blue cube"], ["one red cube"], ["a green cube on top of a blue cube"]]
    right = cider(["one blue cube", "one red cube", "a green cube on top of a blue cube"], references)
    wrong = cider(["one red cube", "one blue cube", "a blue cube on top of a green cube"], references)
    assert right > wrong > 0
    # Perfect captions: cosine 1 for every n-gram order that exists, times 10. The two
    # three-word captions have no 4-grams (order 4 scores 0): 10 * 3/4 each; the third scores 10.
    assert right == pytest.approx((7.5 + 7.5 + 10.0) / 3, abs=1e-9)
    # pycocoevalcap's CIDEr-D on the same corpus, tokenised by hand (lower case, split on spaces)
    gts = {0: ["one blue cube"], 1: ["one red cube"], 2: ["a green cube on top of a blue cube"]}
    res = {0: ["one red cube"], 1: ["one blue cube"], 2: ["a blue cube on top of a green cube"]}
    assert wrong == pytest.approx(Cider().compute_score(gts, res)[0], abs=1e-12)
    assert cider(["x y z", "q", "w"], references) == 0.0


def test_empty_predictions_handled():
    references = [["one blue cube"], ["one red cube"]]
    metrics = caption_metrics(["", ""], references)
    assert metrics == {"exact_match": 0.0, "bleu4": pytest.approx(0.0, abs=1e-6), "cider": 0.0, "count": 2}
    assert caption_metrics([], []) == {"exact_match": 0.0, "bleu4": 0.0, "cider": 0.0, "count": 0}
    assert cider(["a"], [["!!!"]]) == 0.0  # no reference words at all


def test_length_mismatch_and_empty_reference_list():
    with pytest.raises(ValueError, match="2 predictions"):
        exact_match(["a", "b"], [["a"]])
    with pytest.raises(ValueError, match="non-empty"):
        bleu4(["a"], [[]])
    with pytest.raises(ValueError, match="non-empty"):
        cider(["a"], ["a"])


def _sample(name: str, text: str) -> Sample:
    return Sample(Path(f"/d/{name}.jpg"), text, None, Path("/d/a.jsonl"), 1, {})


def test_references_by_class_groups_phrasings():
    pool = [
        _sample("blue_0001", "One blue cube"),
        _sample("blue_0002", "One blue cube"),
        _sample("none_0001", "No cube is visible in the image"),
        _sample("none_0002", "Nothing is placed in the scene"),
        _sample("none_0003", "No cube is visible in the image"),
    ]
    refs = references_by_class(pool)
    assert refs[0] == refs[1] == ["One blue cube"]
    assert refs[2] == refs[3] == refs[4] == ["No cube is visible in the image", "Nothing is placed in the scene"]
    # Validation samples get every phrasing seen in the whole pool.
    val = [pool[4]]
    assert references_by_class(val) == [["No cube is visible in the image"]]
    assert references_by_class(val, pool) == [refs[4]]
    # A different phrasing predicted for an empty table is an exact match.
    assert exact_match(["nothing is placed in the scene"], references_by_class(val, pool)) == 1.0
