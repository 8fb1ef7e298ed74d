"""Least-confident first: the order in which to label frames, by the caption confidence, near-duplicates collapsed.

The confidence is the one the node publishes (models/confidence.py): the geometric-mean probability the
model gave its own caption. A labeller's time goes furthest on the frames the model is least sure of; two
frames that look almost the same teach the same thing, so only the less confident of them is kept.

The order shares the labels out across the captions the model predicts, in proportion to how many frames
get each caption, least confident first within each: first the least confident frame of every caption, then
a caption given to 200 frames gets about ten labels for each one of a caption given to 20. A model is not
equally sure of every kind of scene (seed_blocks' synthetic base hesitates over empty tables, which have five
phrasings, and is confidently wrong on stacks), so a plain ascending sort would spend the first labels on one
kind of scene, and an adapter trained on them forgets the others.

Near-duplicates: the mean absolute difference (0-255) of two frames' 16x16 RGB thumbnails (area-averaged,
colour kept: on seed_blocks a blue and a green cube differ mostly in hue) is below ``threshold``. On
seed_blocks the default 3.0 collapses 1,120 frames into 545 and never merges frames of two different scenes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from ..models.captioning import Captioner
from ..models.images import load_image
from ..train.data import Sample, sample_to_row

THUMB_SIZE = 16
DEFAULT_DUPLICATE_THRESHOLD = 3.0


@dataclass(frozen=True)
class LabelOrder:
    """``order``: indices of the frames to label, least confident first; ``duplicate_of``: each collapsed
    frame's index -> the index of the kept frame it duplicates (None: it duplicates a frame already labelled)."""

    order: list[int]
    duplicate_of: dict[int, int | None]


def thumbnail(image: Image.Image) -> np.ndarray:
    """An image -> (16 * 16 * 3,) float32 RGB thumbnail, area-averaged, values 0-255."""
    small = image.convert("RGB").resize((THUMB_SIZE, THUMB_SIZE), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32).reshape(-1)


def thumbnails(paths: Sequence[str | Path]) -> np.ndarray:
    """Image files -> (N, 768) thumbnails (decoded one at a time)."""
    rows = np.zeros((len(paths), THUMB_SIZE * THUMB_SIZE * 3), dtype=np.float32)
    for i, path in enumerate(paths):
        with load_image(path) as image:
            rows[i] = thumbnail(image)
    return rows


def least_confident_first(confidence: Sequence[float], thumbs: np.ndarray,
                          threshold: float = DEFAULT_DUPLICATE_THRESHOLD, captions: Sequence[str] | None = None,
                          labelled: np.ndarray | None = None) -> LabelOrder:
    """Frames by ascending confidence (ties: file order), shared out across ``captions`` (each frame's
    predicted caption, see the module docstring; None: one plain ascending sort); a frame within ``threshold``
    of a frame already kept, or of a ``labelled`` frame's thumbnail, is collapsed into the nearest one
    (threshold 0: nothing collapsed).
    confidence (N,), thumbs (N, D), labelled (L, D)."""
    scores = np.asarray(confidence, dtype=np.float64)
    if scores.shape != (len(thumbs),) or (captions is not None and len(captions) != len(thumbs)):
        raise ValueError(f"{scores.shape[0]} confidences and {len(captions or [])} captions for {len(thumbs)} "
                         f"thumbnails")
    ranked = [int(i) for i in np.lexsort((np.arange(len(scores)), scores))]
    if captions is not None:
        ranked = _shared_out(ranked, [" ".join(c.lower().split()) for c in captions])
    known = np.zeros((0, thumbs.shape[1]), np.float32) if labelled is None else np.asarray(labelled, np.float32)
    bank = np.concatenate([known, np.zeros_like(thumbs, dtype=np.float32)])  # thumbnails to compare with
    owners: list[int | None] = [None] * len(known)
    duplicate_of: dict[int, int | None] = {}
    for index in ranked:
        if owners and threshold > 0:
            distance = np.abs(bank[:len(owners)] - thumbs[index]).mean(axis=1)
            nearest = int(distance.argmin())
            if distance[nearest] < threshold:
                duplicate_of[index] = owners[nearest]
                continue
        bank[len(owners)] = thumbs[index]
        owners.append(index)
    return LabelOrder(owners[len(known):], duplicate_of)


def _shared_out(ranked: list[int], captions: list[str]) -> list[int]:
    """``ranked`` re-sorted by each frame's place among the frames of its caption, as a fraction (the k-th least
    confident of n frames: k / n): every caption's least confident frame first, then each caption in
    proportion to its frames."""
    sizes = Counter(captions[i] for i in ranked)
    seen: Counter = Counter()
    keyed = []
    for position, index in enumerate(ranked):
        caption = captions[index]
        keyed.append((seen[caption] / sizes[caption], position, index))
        seen[caption] += 1
    return [index for _, _, index in sorted(keyed)]


@dataclass
class OrderReport:
    frames: int = 0
    reviewed: int = 0  # rows already marked "reviewed": true, left out
    duplicates: int = 0
    written: int = 0


def order_rows(samples: Sequence[Sample], captioner: Captioner, meta: dict, *, relative_to: Path,
               threshold: float = DEFAULT_DUPLICATE_THRESHOLD, limit: int = 0) -> tuple[list[dict], OrderReport]:
    """Rows to label, least confident first, shared out across predicted captions: each unreviewed sample
    captioned by ``captioner`` ("text" = its caption, "precaption" = ``meta`` plus the confidence, "reviewed":
    false); near-duplicates of each other and of reviewed frames collapsed; at most ``limit`` rows (0: all).
    Image paths relative to the folder ``relative_to``."""
    report = OrderReport(frames=len(samples))
    todo = [s for s in samples if s.extras.get("reviewed") is not True]
    reviewed = [s for s in samples if s.extras.get("reviewed") is True]
    report.reviewed = len(reviewed)
    results = captioner.caption_file_results([s.image for s in todo])
    ranking = least_confident_first([r.confidence for r in results], thumbnails([s.image for s in todo]), threshold,
                                    captions=[r.text for r in results],
                                    labelled=thumbnails([s.image for s in reviewed]))
    report.duplicates = len(ranking.duplicate_of)
    chosen = ranking.order[:limit] if limit > 0 else ranking.order
    rows = []
    for index in chosen:
        sample, result = todo[index], results[index]
        row = sample_to_row(replace(sample, text=result.text), relative_to=relative_to)
        row.update(reviewed=False, precaption={**meta, "confidence": round(result.confidence, 6)})
        rows.append(row)
    report.written = len(rows)
    return rows, report
