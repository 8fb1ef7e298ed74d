"""Caption metrics against one or more references per image: exact match, BLEU-4 and CIDEr.

BLEU and CIDEr use pycocoevalcap's scorers directly; text is tokenised with ``normalise().split()``
instead of its PTBTokenizer (which needs Java).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider

from .data import Sample, scene_group

_APOSTROPHES = re.compile(r"['\u2019\u2018`]")


def normalise(text: str) -> str:
    """Lower case, drop apostrophes, turn other punctuation into spaces, collapse whitespace."""
    text = _APOSTROPHES.sub("", text.lower())
    text = "".join(" " if unicodedata.category(ch).startswith("P") else ch for ch in text)
    return " ".join(text.split())


def exact_match(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Fraction of predictions equal to any of their references after :func:`normalise` (0.0 if none)."""
    _check_lengths(predictions, references)
    if not predictions:
        return 0.0
    hits = sum(normalise(p) in {normalise(r) for r in refs} for p, refs in zip(predictions, references, strict=True))
    return hits / len(predictions)


def bleu4(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus BLEU-4 (pycocoevalcap, 'closest' reference length); 0.0 for no predictions.

    Like the COCO toolkit, captions shorter than four words contribute no 4-grams, so a corpus of
    only three-word captions scores near 0 even when every caption is right.
    """
    gts, res = _coco_inputs(predictions, references)
    if not res:
        return 0.0
    scores, _ = Bleu(4).compute_score(gts, res, verbose=0)
    return float(scores[3])


def cider(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus CIDEr-D (pycocoevalcap); 0.0 for no predictions or no reference words.

    The IDF comes from the references of this corpus, so a single image always scores 0: score
    the whole evaluation set at once.
    """
    gts, res = _coco_inputs(predictions, references)
    if not res or not any(ref for refs in gts.values() for ref in refs):
        return 0.0
    score, _ = Cider().compute_score(gts, res)
    return float(score)


def caption_metrics(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float | int]:
    """``dict(exact_match=, bleu4=, cider=, count=)`` for aligned predictions and reference lists."""
    return {
        "exact_match": exact_match(predictions, references),
        "bleu4": bleu4(predictions, references),
        "cider": cider(predictions, references),
        "count": len(predictions),
    }


def references_by_class(samples: Sequence[Sample], pool: Sequence[Sample] | None = None) -> list[list[str]]:
    """Reference lists for ``samples``: all distinct captions of each sample's scene group.

    Groups (:func:`blip_lora_core.train.data.scene_group`, e.g. "none" for none_0001.jpg) are gathered
    from ``pool`` (default: ``samples``; pass the whole dataset to see every phrasing). A group
    with more than one distinct caption is one class phrased several ways (seed_blocks' empty
    table), so each of its captions is a reference for all its images; otherwise the sample's own
    caption is its only reference. Only use this where a scene group really is one class.
    """
    phrasings: dict[str, list[str]] = {}
    for sample in samples if pool is None else pool:
        captions = phrasings.setdefault(scene_group(sample.image), [])
        if sample.text not in captions:
            captions.append(sample.text)
    refs = []
    for sample in samples:
        group = phrasings.get(scene_group(sample.image), [])
        if len(group) > 1:
            refs.append(group + ([sample.text] if sample.text not in group else []))
        else:
            refs.append([sample.text])
    return refs


def _check_lengths(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    """ValueError unless there is one non-empty reference list per prediction."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} reference lists")
    for i, refs in enumerate(references):
        if isinstance(refs, str) or len(refs) == 0:
            raise ValueError(f"references[{i}] must be a non-empty list of strings, got {refs!r}")


def _coco_inputs(
    predictions: Sequence[str], references: Sequence[Sequence[str]]
) -> tuple[dict[int, list[str]], dict[int, list[str]]]:
    """pycocoevalcap's ``gts`` and ``res`` dicts of normalised, space-joined tokens."""
    _check_lengths(predictions, references)
    gts = {i: [normalise(r) for r in refs] for i, refs in enumerate(references)}
    res = {i: [normalise(p)] for i, p in enumerate(predictions)}
    return gts, res
