"""Caption the newest camera frame on a worker thread: the ROS-free core of the blip_captioner node.

The subscription callback only calls ``submit`` (store the raw message in a one-frame slot); a worker
thread decodes, captions and publishes the newest frame, so captions never fall behind the camera: frames
that arrive while the model is busy replace each other (counted as replaced), frames that arrive while the
rate limit holds the worker back replace each other too (counted apart, as rate-limited). The offline bag
tools drive the same logic synchronously with ``step`` and an injected clock.

The contract with the publisher: one ``CaptionEvent`` per captioned frame (the frame's message, hence its
header, its stamp, the text, the confidence, decode and inference times).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any, ClassVar

from ..errors import ImageDecodeError
from ..settings import check_settings, setting, setting_info
from .image_msgs import decode_message

log = logging.getLogger(__name__)

Clock = Callable[[], float]
CaptionFn = Callable[[Any], Any]
"""(H, W, 3) uint8 RGB -> a result with ``text`` and ``confidence`` (a core CaptionResult), or a plain str."""


@dataclass(frozen=True)
class PipelineSettings:
    """The pipeline's settings that the node's parameters and the bag tools' options declare with it."""

    SECTION: ClassVar[str] = "pipeline"
    max_rate_hz: float = setting(0.0, "at most this many captions a second of the rate clock (ROS time in the node, "
                                      "sim time in a replay, bag time in bag caption); 0: as fast as the model goes",
                                 low=0, high=1000)
    publish_on_change_only: bool = setting(False, "publish a caption only when it differs from the last one",
                                           flag="--on-change")

    def __post_init__(self) -> None:
        check_settings(self)


@dataclass(frozen=True)
class Frame:
    """One raw camera message with its stamp (seconds) and the pipeline clock when it arrived."""

    msg: Any
    stamp: float
    received: float


@dataclass(frozen=True)
class CaptionEvent:
    """One captioned frame, as the pipeline hands it to the publisher.

    msg: the raw camera message (``msg.header`` is the image's header). stamp: its stamp in seconds.
    confidence: the caption's geometric-mean token probability, or None when the caption function gives text
    only. decode_s / inference_s: seconds spent decoding the frame and captioning it.
    """

    msg: Any
    stamp: float
    text: str
    confidence: float | None
    decode_s: float
    inference_s: float

    @property
    def header(self) -> Any:
        return getattr(self.msg, "header", None)


PublishFn = Callable[[CaptionEvent], None]


def _text_and_confidence(result: Any) -> tuple[str, float | None]:
    if isinstance(result, str):
        return result, None
    return result.text, float(result.confidence)


class LatestFrameSlot:
    """A thread-safe slot holding at most one frame: ``put`` replaces, ``take`` empties. Never a queue."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: Any = None
        self._full = False
        self._woken = False
        self.dropped = 0

    def put(self, item: Any) -> bool:
        """Hold item; True (and one more drop) when it replaced an item nobody took."""
        with self._cond:
            replaced = self._full
            self.dropped += replaced
            self._item, self._full = item, True
            self._cond.notify()
            return replaced

    def take(self, timeout: float | None = 0.0) -> Any:
        """The newest item, clearing the slot; None when nothing arrives within timeout (None: wait forever),
        or when ``wake`` was called (before or during the wait) and the slot is empty."""
        with self._cond:
            if not self._full and timeout != 0.0:
                self._cond.wait_for(lambda: self._full or self._woken, timeout)
            self._woken = False
            if not self._full:
                return None
            item, self._item, self._full = self._item, None, False
            return item

    @property
    def pending(self) -> bool:
        with self._cond:
            return self._full

    def wake(self) -> None:
        """Make the waiting ``take``, or the next one, return at once (None when the slot is still empty)."""
        with self._cond:
            self._woken = True
            self._cond.notify_all()


class Outcome(Enum):
    """What one ``step`` did."""

    IDLE = "idle"  # no frame pending
    RATE_LIMITED = "rate_limited"  # a frame waits for the next allowed time
    PUBLISHED = "published"
    UNCHANGED = "unchanged"  # captioned, but the change filter held it back
    DECODE_ERROR = "decode_error"
    INFERENCE_ERROR = "inference_error"


@dataclass(frozen=True)
class PipelineStats:
    """A snapshot of the pipeline's counters; times in seconds, None when not measured yet."""

    frames_received: int = 0
    frames_replaced: int = 0  # replaced by a newer frame while the model was busy
    frames_rate_limited: int = 0  # replaced by a newer frame while the rate limit held the worker back
    decode_errors: int = 0
    inference_errors: int = 0
    captions_made: int = 0
    captions_published: int = 0
    last_latency_s: float | None = None
    mean_latency_s: float | None = None
    caption_rate_hz: float = 0.0
    last_caption_age_s: float | None = None
    since_last_frame_s: float | None = None
    since_last_caption_s: float | None = None
    uptime_s: float = 0.0

    @property
    def frames_dropped(self) -> int:
        """Frames never captioned because a newer one replaced them (busy model or rate limit)."""
        return self.frames_replaced + self.frames_rate_limited


def stamp_seconds(msg: Any) -> float | None:
    """header.stamp of a ROS message in seconds; None when missing or zero (an unstamped camera)."""
    stamp = getattr(getattr(msg, "header", None), "stamp", None)
    if stamp is None:
        return None
    seconds = getattr(stamp, "sec", 0) + getattr(stamp, "nanosec", 0) * 1e-9
    return seconds or None


def describe_frame(msg: Any) -> str:
    """'640x480 rgb8' or 'jpeg' style text naming a message's size and encoding, for log lines."""
    encoding = getattr(msg, "encoding", None)
    if encoding is not None:
        return f"{getattr(msg, 'width', '?')}x{getattr(msg, 'height', '?')} {encoding or '(no encoding)'}"
    return f"compressed {getattr(msg, 'format', '?') or '(no format)'}"


class _Throttle:
    """Lets one message through per period and counts the ones it held back."""

    def __init__(self, period_s: float, clock: Clock) -> None:
        self._period, self._clock = period_s, clock
        self._last: float | None = None
        self.suppressed = 0

    def allow(self) -> int | None:
        """The number suppressed since the last allowed message, or None to stay quiet."""
        now = self._clock()
        if self._last is not None and now - self._last < self._period:
            self.suppressed += 1
            return None
        self._last, held = now, self.suppressed
        self.suppressed = 0
        return held


class _Counters:
    """Mutable totals behind PipelineStats; guarded by the pipeline's lock."""

    def __init__(self, start: float, rate_window_s: float) -> None:
        self.start, self.window = start, rate_window_s
        self.received = self.replaced = self.rate_limited = self.decode_errors = self.inference_errors = 0
        self.made = self.published = 0
        self.latency_sum = 0.0
        self.last_latency: float | None = None
        self.last_age: float | None = None
        self.last_frame: float | None = None
        self.last_caption: float | None = None
        self.publish_times: deque[float] = deque()

    def inferred(self, latency: float, now: float) -> None:
        self.made += 1
        self.latency_sum += latency
        self.last_latency, self.last_caption = latency, now

    def published_at(self, now: float, age: float) -> None:
        self.published += 1
        self.last_age = age
        self.publish_times.append(now)
        self._prune(now)

    def _prune(self, now: float) -> None:
        while self.publish_times and self.publish_times[0] < now - self.window:
            self.publish_times.popleft()

    def snapshot(self, now: float) -> PipelineStats:
        self._prune(now)
        uptime = now - self.start
        span = min(self.window, uptime)
        return PipelineStats(
            frames_received=self.received, frames_replaced=self.replaced, frames_rate_limited=self.rate_limited,
            decode_errors=self.decode_errors, inference_errors=self.inference_errors, captions_made=self.made,
            captions_published=self.published, last_latency_s=self.last_latency,
            mean_latency_s=self.latency_sum / self.made if self.made else None,
            caption_rate_hz=len(self.publish_times) / span if span > 0 else 0.0,
            last_caption_age_s=self.last_age,
            since_last_frame_s=None if self.last_frame is None else now - self.last_frame,
            since_last_caption_s=None if self.last_caption is None else now - self.last_caption,
            uptime_s=uptime,
        )


class CaptionPipeline:
    """Newest-frame captioning: ``submit`` from the subscription, a worker (or ``step``) does the rest.

    caption_fn: (H, W, 3) uint8 RGB -> a result with text and confidence (or a str).
    publish: CaptionEvent -> None, once per captioned frame.
    decode: raw message -> RGB array, raising ImageDecodeError on a bad frame.
    max_rate_hz: at most this many captions per second of ``rate_clock`` (0: as fast as the model goes).
    publish_on_change_only: skip a caption equal to the last one published.
    clock: monotonic seconds, for latencies, statistics and log throttling.
    rate_clock: the clock the rate limit counts in (the ROS clock, which follows /clock in a replay; None: clock).
    stamp_clock: "now" in the time base of the frame stamps, for caption ages (None: the same as clock).
    between: called by the worker before it takes each frame (queued setting changes are applied there).
    name: what the frames are (the image topic), named in log lines.
    warn: where throttled warnings go (a ROS logger's ``warning`` in the node); one throttle per kind of
    failure (decode error per encoding and reason, inference error per exception type, publish error).
    """

    def __init__(self, caption_fn: CaptionFn, publish: PublishFn, *, decode: Callable[[Any], Any] = decode_message,
                 max_rate_hz: float = 0.0, publish_on_change_only: bool = False, clock: Clock = time.monotonic,
                 rate_clock: Clock | None = None, stamp_clock: Clock | None = None,
                 between: Callable[[], None] | None = None, name: str = "images",
                 warn: Callable[[str], Any] = log.warning, log_period_s: float = 5.0,
                 rate_window_s: float = 10.0) -> None:
        self._caption_fn, self._publish, self._decode = caption_fn, publish, decode
        self.max_rate_hz = max_rate_hz
        self.publish_on_change_only = publish_on_change_only
        self._clock, self._rate_clock, self._stamp_clock = clock, rate_clock or clock, stamp_clock or clock
        self._between = between or (lambda: None)
        self.name, self._warn = name, warn
        self._slot = LatestFrameSlot()
        self._lock = threading.Lock()
        self._counters = _Counters(clock(), rate_window_s)
        self._log_period = log_period_s
        self._throttles: dict[tuple[str, str], _Throttle] = {}
        self._last_start: float | None = None
        self._last_text: str | None = None
        self._busy = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def max_rate_hz(self) -> float:
        return self._max_rate_hz

    @max_rate_hz.setter
    def max_rate_hz(self, value: float) -> None:
        problem = setting_info(PipelineSettings, "max_rate_hz").problem(value)
        if problem:
            raise ValueError(f"max_rate_hz {problem}")
        self._max_rate_hz = float(value)

    def submit(self, msg: Any, stamp: float | None = None) -> None:
        """Hold msg as the newest frame (stamp None: now). Cheap: no decoding, safe from any thread."""
        now = self._clock()
        frame = Frame(msg, self._stamp_clock() if stamp is None else stamp, now)
        rate_limited = not self._busy and self.time_until_allowed() > 0
        replaced = self._slot.put(frame)
        with self._lock:
            self._counters.received += 1
            self._counters.last_frame = now
            if replaced and rate_limited:
                self._counters.rate_limited += 1
            elif replaced:
                self._counters.replaced += 1

    def time_until_allowed(self) -> float:
        """Seconds of rate_clock until the rate limit lets the next caption start (0 when it may start now).

        A rate clock that went back (a replay restarted) starts the limit afresh."""
        rate, last = self._max_rate_hz, self._last_start
        if rate <= 0 or last is None:
            return 0.0
        now = self._rate_clock()
        if now < last:
            self._last_start = None
            return 0.0
        return max(0.0, last + 1.0 / rate - now)

    def step(self) -> Outcome:
        """Process the pending frame, if any and if the rate limit allows it; never blocks."""
        if self.time_until_allowed() > 0:
            return Outcome.RATE_LIMITED if self._slot.pending else Outcome.IDLE
        frame = self._slot.take(0.0)
        return Outcome.IDLE if frame is None else self._process(frame)

    def stats(self) -> PipelineStats:
        with self._lock:
            return self._counters.snapshot(self._clock())

    def _process(self, frame: Frame) -> Outcome:
        self._busy = True
        try:
            return self._caption(frame)
        finally:
            self._busy = False

    def _caption(self, frame: Frame) -> Outcome:
        began = self._clock()
        try:
            image = self._decode(frame.msg)
        except ImageDecodeError as error:
            return self._failed("decode", describe_frame(frame.msg), f"{self.name}: skipped a frame that cannot "
                                f"be decoded ({describe_frame(frame.msg)}): {error}")
        start = self._clock()
        self._last_start = self._rate_clock()
        try:
            text, confidence = _text_and_confidence(self._caption_fn(image))
        except Exception as error:  # noqa: BLE001 - the worker must survive any model failure
            return self._failed("inference", type(error).__name__, f"{self.name}: captioning a "
                                f"{describe_frame(frame.msg)} frame failed: {type(error).__name__}: {error}")
        end = self._clock()
        with self._lock:
            self._counters.inferred(end - start, end)
        if self.publish_on_change_only and text == self._last_text:
            return Outcome.UNCHANGED
        self._publish(CaptionEvent(frame.msg, frame.stamp, text, confidence, start - began, end - start))
        self._last_text = text
        with self._lock:
            self._counters.published_at(end, self._stamp_clock() - frame.stamp)
        return Outcome.PUBLISHED

    def _failed(self, kind: str, detail: str, message: str) -> Outcome:
        with self._lock:
            if kind == "decode":
                self._counters.decode_errors += 1
            else:
                self._counters.inference_errors += 1
        self._warn_throttled((kind, detail), message)
        return Outcome.DECODE_ERROR if kind == "decode" else Outcome.INFERENCE_ERROR

    def _warn_throttled(self, key: tuple[str, str], message: str) -> None:
        """One throttle per kind of failure: a burst of one kind never hides (or counts) another."""
        throttle = self._throttles.setdefault(key, _Throttle(self._log_period, self._clock))
        held = throttle.allow()
        if held is not None:
            self._warn(message + (f" ({held} similar messages suppressed)" if held else ""))

    # -- worker thread ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Run the worker thread (a daemon) until ``stop``. After a stop that timed out, waits for the old
        worker to finish its caption first: there is never more than one worker."""
        if self._thread is not None:
            if self._thread.is_alive() and not self._stop.is_set():
                return
            self._thread.join()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"caption:{self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> bool:
        """Stop the worker after the caption in progress and join it (up to ``timeout`` seconds; None: until
        it ends). True when it has ended; False when it still finishes a caption (``start`` then waits)."""
        self._stop.set()
        self._slot.wake()
        if self._thread is None:
            return True
        self._thread.join(timeout)
        if self._thread.is_alive():
            return False
        self._thread = None
        return True

    def wake(self) -> None:
        """Make the waiting worker look again now (queued changes for ``between``)."""
        self._slot.wake()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stop.is_set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._guarded("applying setting changes", self._between)
            wait = self.time_until_allowed()
            if wait > 0:  # sleep first, then take the newest frame: never caption a stale one
                self._stop.wait(min(wait, 0.1))
                continue
            frame = self._slot.take(0.25)
            if frame is None or self._stop.is_set():
                continue
            self._guarded("publishing a caption", lambda taken=frame: self._process(taken))

    def _guarded(self, doing: str, work: Callable[[], Any]) -> None:
        try:
            work()
        except Exception as error:  # noqa: BLE001 - a failing publish or change must not kill the worker
            self._warn_throttled((doing, type(error).__name__), f"{self.name}: {doing} failed: "
                                 f"{type(error).__name__}: {error}")
