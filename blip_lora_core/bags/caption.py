"""Caption a ROS 2 recording with the node's own pipeline (newest frame, rate limit), offline.

Two ways to play the bag into ``CaptionPipeline``:

* deterministic (default): a clock that follows the bag's receive times drives ``step()`` synchronously, as
  fast as the model goes. Captioning takes no bag time; the rate limit applies in bag time, exactly as the
  worker would apply it: a pending frame is captioned as soon as the limit allows, and newer frames
  replace older ones while it waits. The pipeline runs until the last message: a frame still waiting for
  the rate limit then is not captioned, so ``max_rate_hz * duration`` bounds the caption count (plus one).
* realtime: messages are submitted at their recorded pace to a real worker thread (results vary run to
  run); at the end it waits for the frame in hand.

Each caption carries the bag time the node would have published it at and the stamp of its frame.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import write_jsonl
from ..errors import BagError, BlipLoraError, ImageDecodeError
from ..runtime.image_msgs import decode_message
from ..runtime.pipeline import CaptionEvent, CaptionPipeline, Outcome
from .options import ReplayOptions
from .output import check_not_input, check_output, looks_like_bag, write_strings
from .reader import BagMessage, ns_to_seconds, read_camera
from .storage import resolve_bag

log = logging.getLogger(__name__)

FrameCaptioner = Callable[[np.ndarray], str]
"""One (H, W, 3) uint8 RGB frame -> its caption."""
REALTIME_DRAIN_S = 30.0  # how long realtime mode waits for the last frame's caption


@dataclass(frozen=True)
class TimedCaption:
    """A caption, the bag receive time (ns) it would be published at, and its frame's stamp (seconds)."""

    time_ns: int
    image_stamp: float
    caption: str

    def row(self) -> dict[str, Any]:
        return {"stamp": ns_to_seconds(self.time_ns), "image_stamp": self.image_stamp, "caption": self.caption}


@dataclass
class ReplayReport:
    """What a replay did: messages read, captions published, frames replaced while waiting, failures."""

    messages: int = 0
    captions: int = 0
    dropped: int = 0
    decode_errors: int = 0
    inference_errors: int = 0
    first_error: str | None = None


@dataclass
class _Recorder:
    """Collects what the pipeline publishes and why frames failed (the worker may call from its thread).

    With ``fail_fast`` (strict, deterministic mode) a bad frame raises BagError out of ``decode``, which
    ``step()`` passes on; otherwise failures are recorded and the pipeline counts and warns.
    """

    now_ns: Callable[[], int]
    caption_fn: FrameCaptioner
    bag: str
    topic: str
    fail_fast: bool = False
    captions: list[TimedCaption] = field(default_factory=list)
    errors: list[BlipLoraError] = field(default_factory=list)
    indices: dict[int, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def publish(self, event: CaptionEvent) -> None:
        with self.lock:
            self.captions.append(TimedCaption(self.now_ns(), event.stamp, event.text))

    def decode(self, msg: Any) -> np.ndarray:
        try:
            return decode_message(msg)
        except ImageDecodeError as exc:
            error = BagError(f"{self.bag}: message {self.indices.get(id(msg), '?')} on {self.topic}: {exc}")
            self._failed(error)
            if self.fail_fast:
                raise error from exc
            raise

    def caption(self, image: np.ndarray) -> str:
        try:
            return self.caption_fn(image)
        except Exception as exc:  # recorded, then handled by the pipeline like in the node
            self._failed(BlipLoraError(f"captioning a frame on {self.topic} failed: {type(exc).__name__}: {exc}"))
            raise

    def _failed(self, error: BlipLoraError) -> None:
        with self.lock:
            self.errors.append(error)


def replay_captions(bag: str | os.PathLike, caption_fn: FrameCaptioner,
                    options: ReplayOptions) -> tuple[list[TimedCaption], ReplayReport]:
    """Run the caption pipeline over the camera topic of ``bag``; captions in publish order.

    Bad frames and model failures are counted and warned about like in the node; with ``strict`` the first
    one raises (BagError for a frame, BlipLoraError for the model) and nothing is returned.
    """
    fail_fast = options.strict and not options.realtime
    recorder = _Recorder(lambda: 0, caption_fn, _bag_name(bag), options.topic, fail_fast)
    play = _play_realtime if options.realtime else _play_fast
    pipeline, messages = play(bag, recorder, options)
    stats = pipeline.stats()
    report = ReplayReport(messages, len(recorder.captions), stats.frames_dropped, stats.decode_errors,
                          stats.inference_errors, str(recorder.errors[0]) if recorder.errors else None)
    if options.strict and recorder.errors:
        raise recorder.errors[0]
    if report.decode_errors == messages:
        raise BagError(f"{recorder.bag}: no frames captioned from {options.topic} ({messages} messages, all "
                       f"undecodable); first: {report.first_error}")
    return recorder.captions, report


def _pipeline(recorder: _Recorder, options: ReplayOptions, clock: Callable[[], float]) -> CaptionPipeline:
    return CaptionPipeline(recorder.caption, recorder.publish, decode=recorder.decode,
                           max_rate_hz=options.max_rate_hz, publish_on_change_only=options.publish_on_change_only,
                           clock=clock, name=options.topic)


class _BagClock:
    """Bag receive time in ns; as pipeline clock, seconds since ``origin_ns`` (small floats keep ns precision)."""

    def __init__(self) -> None:
        self.origin_ns: int | None = None
        self.now_ns = 0

    def __call__(self) -> float:
        return 0.0 if self.origin_ns is None else (self.now_ns - self.origin_ns) / 1e9


def _play_fast(bag: str | os.PathLike, recorder: _Recorder, options: ReplayOptions) -> tuple[CaptionPipeline, int]:
    """Deterministic replay: submit each message at its receive time, step whenever the worker would."""
    clock, pipeline, messages = _BagClock(), None, 0
    recorder.now_ns = lambda: clock.now_ns
    for item in read_camera(bag, options.topic):
        if pipeline is None:
            clock.origin_ns = clock.now_ns = item.time_ns
            pipeline = _pipeline(recorder, options, clock)
        _advance(pipeline, clock, item.time_ns - 1, recorder)
        clock.now_ns = max(clock.now_ns, item.time_ns)
        _submit(pipeline, recorder, item)
        messages += 1
        _advance(pipeline, clock, clock.now_ns, recorder)
    if pipeline is None:
        raise BagError(f"{bag}: topic {options.topic} has no messages")
    return pipeline, messages


def _advance(pipeline: CaptionPipeline, clock: _BagClock, until_ns: int, recorder: _Recorder) -> None:
    """Move bag time forward (at most to until_ns), captioning whenever the rate limit allows."""
    while True:
        target = clock.now_ns + math.ceil(pipeline.time_until_allowed() * 1e9)
        if target > until_ns:
            return
        clock.now_ns = target
        outcome = pipeline.step()
        if outcome is Outcome.INFERENCE_ERROR and recorder.fail_fast:
            raise recorder.errors[-1]
        if outcome is Outcome.IDLE:
            return


def _submit(pipeline: CaptionPipeline, recorder: _Recorder, item: BagMessage) -> None:
    with recorder.lock:
        recorder.indices[id(item.msg)] = item.index
    pipeline.submit(item.msg, ns_to_seconds(item.stamp_ns))


class _WallToBag:
    """Maps the wall clock onto bag time once the first message sets the origin."""

    def __init__(self) -> None:
        self.wall, self.bag_ns = time.monotonic(), 0

    def start(self, bag_ns: int) -> None:
        self.wall, self.bag_ns = time.monotonic(), bag_ns

    def now_ns(self) -> int:
        return self.bag_ns + round((time.monotonic() - self.wall) * 1e9)


def _play_realtime(bag: str | os.PathLike, recorder: _Recorder,
                   options: ReplayOptions) -> tuple[CaptionPipeline, int]:
    """Submit messages at their recorded pace to the pipeline's worker thread (wall clock)."""
    mapping, messages = _WallToBag(), 0
    recorder.now_ns = mapping.now_ns
    pipeline = _pipeline(recorder, options, time.monotonic)
    pipeline.start()
    try:
        for item in read_camera(bag, options.topic):
            if not messages:
                mapping.start(item.time_ns)
            time.sleep(max(0.0, (item.time_ns - mapping.now_ns()) / 1e9))
            _submit(pipeline, recorder, item)
            messages += 1
        _drain(pipeline)
    finally:
        pipeline.stop()
    if not messages:
        raise BagError(f"{bag}: topic {options.topic} has no messages")
    return pipeline, messages


def _drain(pipeline: CaptionPipeline) -> None:
    """Wait until every submitted frame was captioned, failed or replaced by a newer one."""
    deadline = time.monotonic() + REALTIME_DRAIN_S
    while time.monotonic() < deadline:
        s = pipeline.stats()
        if s.frames_dropped + s.captions_made + s.decode_errors + s.inference_errors >= s.frames_received:
            return
        time.sleep(0.005)
    log.warning("gave up waiting %.0f s for the last caption", REALTIME_DRAIN_S)


def _bag_name(bag: str | os.PathLike) -> str:
    return str(resolve_bag(bag))


def check_caption_output(out: Path, force: bool, source: str | os.PathLike) -> None:
    """BagError unless ``out`` may be written: not the ``source`` bag nor inside or around it, creatable, and
    absent or empty, or ``force`` and a JSONL file / a bag."""
    check_not_input(out, source)
    if out.suffix == ".jsonl":
        check_output(out, force, lambda p: p.is_file(), "a JSONL file")
    else:
        check_output(out, force, looks_like_bag, "a ROS 2 bag")


def write_captions(out: str | os.PathLike, captions: list[TimedCaption], *, source: str | os.PathLike,
                   topic: str = "/caption", storage: str = "mcap", force: bool = False) -> None:
    """Captions of the bag ``source`` to ``out``: JSONL (``.jsonl``) or a bag of std_msgs/String on ``topic``
    (``.mcap``, ``.db3`` or a folder with ``storage``); written whole or not at all."""
    out = Path(out)
    check_caption_output(out, force, source)
    if out.suffix == ".jsonl":
        write_jsonl(out, [c.row() for c in captions])
        return
    write_strings(out, topic, [(c.time_ns, c.caption) for c in captions], storage=storage, force=force)
