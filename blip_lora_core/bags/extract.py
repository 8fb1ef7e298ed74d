"""Extract camera frames from a ROS 2 bag into a caption dataset folder (``images/`` + ``annotations.jsonl``).

Rows follow the format ``train`` reads, plus provenance: ``{"image": "images/frame_<sec>_<nanosec>.jpg",
"text": "", "reviewed": false, "stamp": 1700000000.1, "ros_stamp": {"sec": ..., "nanosec": ...},
"stamp_source": "header", "bag_time_ns": ..., "topic": ..., "bag": ..., "index": ...}``.
``text`` stays empty unless a captioner pre-fills it; ``train`` refuses empty captions, so a person must
write (or correct) every caption and may then set ``"reviewed": true``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from ..atomic import staged_path, write_jsonl
from ..errors import BagError, ImageDecodeError
from ..runtime.image_msgs import decode_message
from .options import ExtractOptions
from .output import check_not_input, check_output
from .reader import BagMessage, ns_to_seconds, read_camera, stamp_parts
from .storage import resolve_bag

log = logging.getLogger(__name__)

ANNOTATIONS = "annotations.jsonl"
IMAGES = "images"
THUMB_SIZE = 32
MAX_WARNINGS = 5
BatchCaptioner = Callable[[list[np.ndarray]], list[str]]
"""A batch of (H, W, 3) uint8 RGB frames -> one caption each."""


@dataclass(frozen=True)
class Precaption:
    """Fill each row's text with ``caption_fn`` (batches of ``batch_size``); ``meta`` is kept in each row."""

    caption_fn: BatchCaptioner
    batch_size: int = 8
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class ExtractReport:
    out: Path
    messages: int = 0
    kept: int = 0
    skipped_every: int = 0
    skipped_duplicate: int = 0
    bad_frames: int = 0


def extract_frames(bag: str | os.PathLike, out: str | os.PathLike, options: ExtractOptions, *,
                   force: bool = False, precaption: Precaption | None = None) -> ExtractReport:
    """Write the selected frames of ``options.topic`` as JPEGs plus annotations.jsonl into folder ``out``.

    ``out`` must be absent or empty unless ``force`` (then it must hold an annotations.jsonl). Everything is
    written into a temporary sibling folder renamed into place at the end: a failure leaves no output.
    """
    out = Path(out)
    check_extract_output(bag, out, force)
    report = ExtractReport(out)
    with staged_path(out) as staged:
        (staged / IMAGES).mkdir(parents=True)
        rows = _caption_rows(_extract_rows(bag, staged, options, report), precaption)
        if not rows:
            raise BagError(f"{bag}: no frames extracted from {options.topic} ({report.messages} messages, "
                           f"{report.bad_frames} undecodable)")
        write_jsonl(staged / ANNOTATIONS, rows)
    if report.bad_frames:
        log.warning("skipped %d undecodable frame(s) on %s", report.bad_frames, options.topic)
    return report


def check_extract_output(bag: str | os.PathLike, out: Path, force: bool) -> None:
    """BagError unless ``out`` may be written: not the input bag nor inside or around it, creatable, and
    absent or empty (or, with ``force``, a dataset folder)."""
    check_not_input(out, bag)
    check_output(out, force, lambda p: (p / ANNOTATIONS).is_file(), f"a dataset folder (no {ANNOTATIONS})")


def _extract_rows(bag: str | os.PathLike, folder: Path, options: ExtractOptions,
                  report: ExtractReport) -> Iterator[tuple[dict[str, Any], np.ndarray]]:
    """(row, RGB frame) for every kept frame, its JPEG already written into folder/images."""
    selector = _FrameSelector(round(options.every * 1e9), options.dedup_threshold)
    names: set[str] = set()
    bag_name = str(resolve_bag(bag).absolute())
    for item in read_camera(bag, options.topic):
        report.messages += 1
        if selector.too_soon(item.stamp_ns):
            report.skipped_every += 1
            continue
        rgb = _decode(item, options, report, bag_name)
        if rgb is None:
            continue
        thumb = _thumbnail(rgb) if options.dedup_threshold is not None else None
        if selector.duplicate(thumb):
            report.skipped_duplicate += 1
            continue
        selector.keep(item.stamp_ns, thumb)
        name = _frame_name(item.stamp_ns, names)
        _write_jpeg(folder / IMAGES / name, rgb, options.jpeg_quality)
        report.kept += 1
        yield _row(item, name, options.topic, bag_name), rgb


def _decode(item: BagMessage, options: ExtractOptions, report: ExtractReport, bag: str) -> np.ndarray | None:
    """The frame as RGB, or None for a bad frame (counted, warned about); BagError instead when strict."""
    try:
        return decode_message(item.msg)
    except ImageDecodeError as exc:
        text = f"{bag}: message {item.index} on {options.topic}: {exc}"
        if options.strict:
            raise BagError(text) from exc
        report.bad_frames += 1
        if report.bad_frames <= MAX_WARNINGS:
            log.warning("skipping %s", text)
        return None


def _caption_rows(pairs: Iterator[tuple[dict[str, Any], np.ndarray]],
                  precaption: Precaption | None) -> list[dict[str, Any]]:
    """Rows with text filled by the captioner in batches (frames are not all held in memory at once)."""
    if precaption is None:
        return [row for row, _ in pairs]
    rows: list[dict[str, Any]] = []
    batch: list[tuple[dict[str, Any], np.ndarray]] = []
    for pair in pairs:
        batch.append(pair)
        if len(batch) == precaption.batch_size:
            rows.extend(_caption_batch(batch, precaption))
            batch = []
    return rows + (_caption_batch(batch, precaption) if batch else [])


def _caption_batch(batch: list[tuple[dict[str, Any], np.ndarray]], precaption: Precaption) -> list[dict]:
    captions = precaption.caption_fn([rgb for _, rgb in batch])
    if len(captions) != len(batch):
        raise BagError(f"the captioner returned {len(captions)} captions for {len(batch)} frames")
    return [{**row, "text": text, "precaption": dict(precaption.meta)}
            for (row, _), text in zip(batch, captions, strict=True)]


def _row(item: BagMessage, name: str, topic: str, bag: str) -> dict[str, Any]:
    return {"image": f"{IMAGES}/{name}", "text": "", "reviewed": False,
            "stamp": ns_to_seconds(item.stamp_ns), "ros_stamp": stamp_parts(item.stamp_ns),
            "stamp_source": item.stamp_source, "bag_time_ns": item.time_ns,
            "topic": topic, "bag": bag, "index": item.index}


def _frame_name(stamp_ns: int, used: set[str]) -> str:
    """frame_<sec>_<nanosec>.jpg from the stamp; frames sharing a stamp get _1, _2, ... in bag order."""
    base = "frame_{sec}_{nanosec:09d}".format(**stamp_parts(stamp_ns))
    name, k = f"{base}.jpg", 0
    while name in used:
        k += 1
        name = f"{base}_{k}.jpg"
    used.add(name)
    return name


def _write_jpeg(path: Path, rgb: np.ndarray, quality: int) -> None:
    try:
        Image.fromarray(rgb).save(path, "JPEG", quality=quality)
    except OSError as exc:
        raise BagError(f"could not write {path}: {exc}") from exc


def _thumbnail(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (32, 32) float32 grayscale, area-averaged."""
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    return cv2.resize(gray, (THUMB_SIZE, THUMB_SIZE), interpolation=cv2.INTER_AREA).astype(np.float32)


class _FrameSelector:
    """Which frames to keep: at most one per ``every_ns`` of stamp, none too close to the last kept one."""

    def __init__(self, every_ns: int, threshold: float | None):
        self.every_ns = every_ns
        self.threshold = threshold
        self.last_ns: int | None = None
        self.last_thumb: np.ndarray | None = None

    def too_soon(self, stamp_ns: int) -> bool:
        """True when less than every_ns after the last kept frame (a stamp that jumps back starts afresh)."""
        return self.last_ns is not None and 0 <= stamp_ns - self.last_ns < self.every_ns

    def duplicate(self, thumb: np.ndarray | None) -> bool:
        """True when the thumbnail's mean absolute difference to the last kept one is below the threshold."""
        if thumb is None or self.last_thumb is None or self.threshold is None:
            return False
        return float(np.mean(np.abs(thumb - self.last_thumb))) < self.threshold

    def keep(self, stamp_ns: int, thumb: np.ndarray | None) -> None:
        self.last_ns, self.last_thumb = stamp_ns, thumb
