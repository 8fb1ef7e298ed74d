"""CaptionPipeline: newest-frame semantics, drops, rate limit, change filter, failures, stats, diagnostics."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rosbags.typesys import Stores, get_typestore

from blip_lora_core.errors import ImageDecodeError
from blip_lora_core.runtime.diagnostics import Level, Thresholds, diagnose, stats_values
from blip_lora_core.runtime.pipeline import (
    CaptionPipeline,
    LatestFrameSlot,
    Outcome,
    PipelineStats,
    describe_frame,
    stamp_seconds,
)

TYPES = get_typestore(Stores.ROS2_HUMBLE).types


class FakeClock:
    """Seconds that move only when told to."""

    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


def frame(i: int, encoding: str = "rgb8") -> SimpleNamespace:
    """A stand-in message; the fake decoder turns it into a 2x2 image filled with i."""
    return SimpleNamespace(index=i, encoding=encoding, width=2, height=2)


def fake_decode(msg) -> np.ndarray:
    if msg.encoding != "rgb8":
        raise ImageDecodeError(f"unsupported encoding {msg.encoding!r}")
    return np.full((2, 2, 3), msg.index, np.uint8)


def make(clock: FakeClock, caption=None, **kwargs):
    """A pipeline on a fake clock; captions are 'frame <pixel value>', publications land in a list."""
    published: list[tuple[str, float]] = []
    warnings: list[str] = []
    fn = caption or (lambda image: f"frame {int(image[0, 0, 0])}")
    pipe = CaptionPipeline(fn, lambda event: published.append((event.text, event.stamp)), decode=fake_decode,
                           clock=clock, name="/camera/image_raw", warn=warnings.append, **kwargs)
    return pipe, published, warnings


def wait_until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.002)


# -- LatestFrameSlot -------------------------------------------------------------------------------------


def test_slot_keeps_only_the_newest_and_counts_drops():
    slot = LatestFrameSlot()
    assert slot.put("a") is False
    assert slot.put("b") is True
    assert slot.put("c") is True
    assert slot.pending
    assert slot.take() == "c"
    assert slot.take() is None
    assert not slot.pending
    assert slot.put("d") is False  # the slot was emptied: replacing nothing is no drop
    assert slot.dropped == 2


def test_slot_take_waits_for_a_put_from_another_thread():
    slot = LatestFrameSlot()
    timer = threading.Timer(0.05, slot.put, args=("late",))
    timer.start()
    assert slot.take(timeout=5.0) == "late"
    timer.join()
    assert slot.take(timeout=0.01) is None


def test_slot_wake_releases_a_waiting_take():
    slot, result = LatestFrameSlot(), []
    waiter = threading.Thread(target=lambda: result.append(slot.take(timeout=30.0)))
    waiter.start()
    slot.wake()  # before or during the take: either way it returns
    waiter.join(10.0)
    assert result == [None]


def test_slot_a_wake_before_the_take_is_not_lost():
    """The worker checks its stop flag, stop() wakes the slot, then the worker takes: it must not sleep."""
    slot, result = LatestFrameSlot(), []
    slot.wake()
    waiter = threading.Thread(target=lambda: result.append(slot.take(timeout=30.0)))
    waiter.start()
    waiter.join(10.0)  # the old slot forgot the wake and waited the full 30 s
    assert result == [None] and not waiter.is_alive()
    slot.put("x")
    assert slot.take(timeout=1.0) == "x"  # the wake was used up, not left to empty later takes


@settings(max_examples=200, deadline=None)
@given(st.lists(st.booleans(), max_size=60))
def test_slot_drop_count_matches_a_model(ops):
    """True = put a new item, False = take: every put item is taken once or counted as dropped."""
    slot, taken, n = LatestFrameSlot(), [], 0
    for is_put in ops:
        if is_put:
            slot.put(n)
            n += 1
        elif (item := slot.take()) is not None:
            taken.append(item)
    assert taken == sorted(taken)  # never out of order
    assert slot.dropped + len(taken) + slot.pending == n
    if taken:
        assert all(item > prev for prev, item in zip(taken, taken[1:], strict=False))


# -- step(): newest frame, rate, change filter -------------------------------------------------------------


def test_submit_is_cheap_and_step_captions_only_the_newest():
    clock = FakeClock()
    decoded = []
    pipe, published, _ = make(clock)
    pipe._decode = lambda msg: decoded.append(msg.index) or fake_decode(msg)
    for i in range(1, 6):
        pipe.submit(frame(i), stamp=float(i))
    assert decoded == []  # nothing decoded in the subscription callback
    assert pipe.step() is Outcome.PUBLISHED
    assert decoded == [5]
    assert published == [("frame 5", 5.0)]
    assert pipe.step() is Outcome.IDLE
    stats = pipe.stats()
    assert (stats.frames_received, stats.frames_dropped, stats.captions_published) == (5, 4, 1)


def test_rate_limit_waits_then_takes_the_newest_frame():
    clock = FakeClock(100.0)

    def slow_caption(image):
        clock.advance(0.1)
        return f"frame {int(image[0, 0, 0])}"

    pipe, published, _ = make(clock, caption=slow_caption, max_rate_hz=2.0)
    pipe.submit(frame(1), 100.0)
    assert pipe.step() is Outcome.PUBLISHED  # starts at 100.0, ends at 100.1
    pipe.submit(frame(2), 100.1)
    clock.t = 100.2
    assert pipe.time_until_allowed() == pytest.approx(0.3)
    assert pipe.step() is Outcome.RATE_LIMITED
    clock.t = 100.45
    pipe.submit(frame(3), 100.45)  # replaces frame 2 while waiting
    assert pipe.step() is Outcome.RATE_LIMITED
    clock.t = 100.5
    assert pipe.step() is Outcome.PUBLISHED
    assert published == [("frame 1", 100.0), ("frame 3", 100.45)]
    stats = pipe.stats()  # frame 2 waited for the rate limit, not for a busy model
    assert (stats.frames_rate_limited, stats.frames_replaced, stats.frames_dropped) == (1, 0, 1)
    assert pipe.step() is Outcome.IDLE  # rate-limited but nothing waiting


def test_rate_change_takes_effect_at_once():
    clock = FakeClock()
    pipe, published, _ = make(clock, max_rate_hz=0.5)
    pipe.submit(frame(1), 0.0)
    assert pipe.step() is Outcome.PUBLISHED
    pipe.submit(frame(2), 0.0)
    clock.t = 1.0
    assert pipe.time_until_allowed() == pytest.approx(1.0)
    pipe.max_rate_hz = 0.0
    assert pipe.time_until_allowed() == 0.0
    assert pipe.step() is Outcome.PUBLISHED
    pipe.max_rate_hz = 4.0
    assert pipe.time_until_allowed() == pytest.approx(0.25)
    with pytest.raises(ValueError, match="max_rate_hz"):
        pipe.max_rate_hz = -1.0
    with pytest.raises(ValueError, match="max_rate_hz"):
        pipe.max_rate_hz = float("nan")
    assert pipe.max_rate_hz == 4.0


def test_change_filter_publishes_only_new_captions():
    clock = FakeClock()
    texts = iter(["a red cube", "a red cube", "a blue cube", "a blue cube", "a blue cube"])
    pipe, published, _ = make(clock, caption=lambda image: next(texts), publish_on_change_only=True)
    outcomes = []
    for i in range(4):
        pipe.submit(frame(i), float(i))
        outcomes.append(pipe.step())
    assert outcomes == [Outcome.PUBLISHED, Outcome.UNCHANGED, Outcome.PUBLISHED, Outcome.UNCHANGED]
    assert published == [("a red cube", 0.0), ("a blue cube", 2.0)]
    pipe.publish_on_change_only = False
    pipe.submit(frame(4), 4.0)
    assert pipe.step() is Outcome.PUBLISHED
    assert published[-1] == ("a blue cube", 4.0)
    stats = pipe.stats()
    assert (stats.captions_made, stats.captions_published) == (5, 3)


# -- failures ----------------------------------------------------------------------------------------------


def test_bad_frames_are_counted_skipped_and_logged_throttled():
    clock = FakeClock()
    pipe, published, warnings = make(clock)
    for i in range(3):
        pipe.submit(frame(i, encoding="foo16"), 0.0)
        assert pipe.step() is Outcome.DECODE_ERROR
        clock.advance(1.0)
    assert len(warnings) == 1
    assert "/camera/image_raw" in warnings[0] and "2x2 foo16" in warnings[0]
    clock.advance(5.0)
    pipe.submit(frame(9, encoding="foo16"), 0.0)
    pipe.step()
    assert len(warnings) == 2 and "(2 similar messages suppressed)" in warnings[1]
    pipe.submit(frame(7), 0.0)
    assert pipe.step() is Outcome.PUBLISHED
    assert published == [("frame 7", 0.0)]
    stats = pipe.stats()
    assert (stats.decode_errors, stats.inference_errors, stats.captions_published) == (4, 0, 1)


def test_real_decoder_rejects_a_bad_image_message():
    clock = FakeClock()
    header = TYPES["std_msgs/msg/Header"](stamp=TYPES["builtin_interfaces/msg/Time"](sec=3, nanosec=0),
                                          frame_id="cam")
    bad = TYPES["sensor_msgs/msg/Image"](header=header, height=2, width=2, encoding="rgb8", is_bigendian=0,
                                         step=6, data=np.zeros(5, np.uint8))  # needs 12 bytes
    warnings: list[str] = []
    pipe = CaptionPipeline(lambda image: "x", lambda event: None, clock=clock, name="/cam",
                           warn=warnings.append)
    pipe.submit(bad, stamp_seconds(bad))
    assert pipe.step() is Outcome.DECODE_ERROR
    assert pipe.stats().decode_errors == 1
    assert warnings[0].startswith("/cam: skipped a frame that cannot be decoded (2x2 rgb8)")


def test_inference_errors_are_counted_and_the_worker_survives():
    calls = []

    def flaky(image):
        calls.append(int(image[0, 0, 0]))
        if len(calls) == 1:
            raise RuntimeError("CUDA out of memory")
        return "fine"

    published, warnings = [], []
    pipe = CaptionPipeline(flaky, lambda event: published.append(event.text), decode=fake_decode,
                           name="/cam", warn=warnings.append)
    pipe.start()
    try:
        pipe.submit(frame(1), 0.0)
        wait_until(lambda: pipe.stats().inference_errors == 1)
        pipe.submit(frame(2), 0.0)
        wait_until(lambda: published == ["fine"])
        assert pipe.running
    finally:
        pipe.stop()
    assert not pipe.running
    assert calls == [1, 2]
    assert "RuntimeError: CUDA out of memory" in warnings[0] and "2x2 rgb8" in warnings[0]


def test_a_failing_publish_does_not_kill_the_worker():
    attempts = []

    def publish(event):
        attempts.append(event.text)
        if len(attempts) == 1:
            raise RuntimeError("context is shut down")

    warnings: list[str] = []
    pipe = CaptionPipeline(lambda image: "x", publish, decode=fake_decode, warn=warnings.append)
    pipe.start()
    try:
        pipe.submit(frame(1), 0.0)
        wait_until(lambda: len(attempts) == 1)
        pipe.submit(frame(2), 0.0)
        wait_until(lambda: len(attempts) == 2)
        assert pipe.running
    finally:
        pipe.stop()
    assert "publishing a caption failed" in warnings[0]
    assert pipe.stats().captions_published == 1


def test_worker_captions_the_newest_frame_after_a_slow_inference():
    busy, release = threading.Event(), threading.Event()
    seen = []

    def blocking(image):
        seen.append(int(image[0, 0, 0]))
        busy.set()
        assert release.wait(5.0)
        return f"frame {seen[-1]}"

    published = []
    pipe = CaptionPipeline(blocking, lambda event: published.append((event.text, event.stamp)), decode=fake_decode)
    pipe.start()
    try:
        pipe.submit(frame(1), 1.0)
        assert busy.wait(5.0)
        for i in range(2, 11):  # the camera goes on while the model is busy
            pipe.submit(frame(i), float(i))
        release.set()
        wait_until(lambda: len(published) == 2)
    finally:
        pipe.stop()
    assert published == [("frame 1", 1.0), ("frame 10", 10.0)]
    stats = pipe.stats()
    assert (stats.frames_received, stats.frames_replaced, stats.frames_rate_limited, stats.captions_published) == \
        (10, 8, 0, 2)


def test_worker_honours_the_rate_limit_in_real_time():
    published = []
    pipe = CaptionPipeline(lambda image: "x", lambda event: published.append(time.monotonic()),
                           decode=fake_decode, max_rate_hz=20.0)
    pipe.start()
    try:
        for i in range(3):
            pipe.submit(frame(i), 0.0)
            wait_until(lambda n=i + 1: len(published) == n)
    finally:
        pipe.stop()
    gaps = np.diff(published)
    assert (gaps >= 0.05 - 0.002).all()


# -- statistics --------------------------------------------------------------------------------------------


def test_latency_age_and_rate_statistics():
    clock = FakeClock(10.0)
    durations = iter([0.2, 0.4])

    def caption(image):
        clock.advance(next(durations))
        return "x"

    pipe, published, _ = make(clock, caption=caption)
    pipe.submit(frame(1), stamp=9.5)
    pipe.step()
    stats = pipe.stats()
    assert stats.last_latency_s == pytest.approx(0.2)
    assert stats.last_caption_age_s == pytest.approx(10.2 - 9.5)
    pipe.submit(frame(2), stamp=10.1)
    pipe.step()
    stats = pipe.stats()
    assert stats.last_latency_s == pytest.approx(0.4)
    assert stats.mean_latency_s == pytest.approx(0.3)
    assert stats.last_caption_age_s == pytest.approx(10.6 - 10.1)
    assert stats.since_last_caption_s == pytest.approx(0.0)
    assert stats.uptime_s == pytest.approx(0.6)


def test_caption_rate_over_the_window():
    clock = FakeClock(0.0)
    pipe, _, _ = make(clock, rate_window_s=10.0)
    empty = pipe.stats()
    assert (empty.caption_rate_hz, empty.mean_latency_s, empty.last_caption_age_s) == (0.0, None, None)
    for i in range(1, 6):
        clock.t = float(i)
        pipe.submit(frame(i))  # stamp None: now
        pipe.step()
    stats = pipe.stats()
    assert stats.caption_rate_hz == pytest.approx(5 / 5.0)
    assert stats.last_caption_age_s == 0.0
    clock.t = 12.5  # captions at t=1, 2 have left the 10 s window
    assert pipe.stats().caption_rate_hz == pytest.approx(3 / 10.0)
    assert pipe.stats().since_last_frame_s == pytest.approx(7.5)
    clock.t = 30.0
    assert pipe.stats().caption_rate_hz == 0.0


def test_caption_age_uses_the_stamp_clock():
    clock, stamps = FakeClock(5.0), FakeClock(1_700_000_000.5)
    pipe, published, _ = make(clock, stamp_clock=stamps)
    pipe.submit(frame(1), stamp=1_700_000_000.0)
    pipe.step()
    assert pipe.stats().last_caption_age_s == pytest.approx(0.5)
    pipe.submit(frame(2))
    pipe.step()
    assert published[-1] == ("frame 2", 1_700_000_000.5)


def test_stamp_seconds_and_frame_description():
    time_t, header_t = TYPES["builtin_interfaces/msg/Time"], TYPES["std_msgs/msg/Header"]
    msg = SimpleNamespace(header=header_t(stamp=time_t(sec=12, nanosec=250_000_000), frame_id=""))
    assert stamp_seconds(msg) == 12.25
    assert stamp_seconds(SimpleNamespace(header=header_t(stamp=time_t(sec=0, nanosec=0), frame_id=""))) is None
    assert stamp_seconds(object()) is None
    assert describe_frame(SimpleNamespace(encoding="bgr8", width=640, height=480)) == "640x480 bgr8"
    assert describe_frame(SimpleNamespace(format="jpeg", data=b"")) == "compressed jpeg"


# -- diagnostics -------------------------------------------------------------------------------------------


def healthy(**changes) -> PipelineStats:
    base = dict(frames_received=300, frames_replaced=30, frames_rate_limited=250, captions_made=20,
                captions_published=20,
                last_latency_s=0.1, mean_latency_s=0.1, caption_rate_hz=2.0, last_caption_age_s=0.15,
                since_last_frame_s=0.03, since_last_caption_s=0.4, uptime_s=10.0)
    base.update(changes)
    return PipelineStats(**base)


def test_diagnose_ok_lists_every_statistic():
    diagnosis = diagnose(healthy())
    assert diagnosis.level is Level.OK
    assert diagnosis.message == "captioning at 2.00 Hz"
    values = dict(diagnosis.values)
    assert (values["frames_received"], values["frames_replaced"], values["frames_rate_limited"]) == ("300", "30", "250")
    assert values["last_caption_age_s"] == "0.150" and values["decode_errors"] == "0"
    assert [key for key, _ in stats_values(PipelineStats())][:4] == ["frames_received", "frames_replaced",
                                                                      "frames_rate_limited", "decode_errors"]
    assert dict(stats_values(PipelineStats()))["mean_latency_s"] == "n/a"


@pytest.mark.parametrize("stats, previous, level, words", [
    (PipelineStats(uptime_s=1.0), None, Level.WARN, "no images received yet"),
    (healthy(since_last_frame_s=12.0), None, Level.WARN, "no image for 12.0 s"),
    (healthy(decode_errors=3), healthy(), Level.ERROR, "every frame failed (3 not decodable, 0 inference"),
    (healthy(decode_errors=3, captions_made=21), healthy(), Level.WARN, "3 frames not decodable"),
    (healthy(inference_errors=1, captions_made=22), healthy(), Level.WARN, "1 inference errors"),
    (healthy(decode_errors=3), healthy(decode_errors=3), Level.OK, "captioning at"),
    (healthy(last_caption_age_s=2.5), None, Level.WARN, "captions lag 2.50 s behind the camera"),
    (healthy(frames_received=310, since_last_caption_s=11.0), healthy(), Level.ERROR,
     "images arrive but no caption for 11.0 s"),
    (healthy(frames_received=10, captions_made=0, captions_published=0, since_last_caption_s=None,
             uptime_s=30.0), PipelineStats(frames_received=5), Level.ERROR, "no caption for 30.0 s"),
    (healthy(since_last_caption_s=11.0), healthy(), Level.OK, "captioning at"),  # no new frames: quiet is fine
])
def test_diagnose_levels(stats, previous, level, words):
    diagnosis = diagnose(stats, previous)
    assert diagnosis.level is level
    assert words in diagnosis.message


def test_diagnose_puts_the_worst_problem_first_and_honours_thresholds():
    stats = healthy(decode_errors=2, last_caption_age_s=0.9)
    diagnosis = diagnose(stats, healthy(), Thresholds(max_age_s=0.5))
    assert diagnosis.level is Level.ERROR
    assert diagnosis.message == ("every frame failed (2 not decodable, 0 inference errors); "
                                 "captions lag 0.90 s behind the camera")
    assert diagnose(healthy(last_caption_age_s=0.9)).level is Level.OK


# -- one result per frame, clocks, throttles, stopping -----------------------------------------------------


def test_the_publisher_gets_one_event_with_the_frame_text_confidence_and_timings():
    clock = FakeClock(10.0)
    result = SimpleNamespace(text="One blue cube", confidence=0.25)

    def caption(image):
        clock.advance(0.5)
        return result

    events = []
    pipe = CaptionPipeline(caption, events.append, decode=fake_decode, clock=clock)
    msg = SimpleNamespace(index=3, encoding="rgb8", width=2, height=2, header="the image's header")
    pipe.submit(msg, stamp=7.0)
    assert pipe.step() is Outcome.PUBLISHED
    (event,) = events
    assert (event.msg, event.header, event.stamp, event.text, event.confidence) == \
        (msg, "the image's header", 7.0, "One blue cube", 0.25)
    assert (event.decode_s, event.inference_s) == (0.0, 0.5)


def test_the_rate_limit_counts_in_the_rate_clock_not_the_wall_clock():
    """A replay's ROS clock: wall time runs on, but no new caption until the ROS clock allowed one."""
    wall, ros = FakeClock(0.0), FakeClock(500.0)
    pipe, published, _ = make(wall, max_rate_hz=1.0, rate_clock=ros)
    pipe.submit(frame(1), 500.0)
    assert pipe.step() is Outcome.PUBLISHED
    wall.advance(10.0)  # ten wall seconds, the bag paused
    pipe.submit(frame(2), 500.0)
    assert pipe.step() is Outcome.RATE_LIMITED
    ros.advance(1.0)
    assert pipe.step() is Outcome.PUBLISHED
    ros.t = 100.0  # the replay starts again from an earlier time: the limit starts afresh
    pipe.submit(frame(3), 100.0)
    assert pipe.step() is Outcome.PUBLISHED
    assert [text for text, _ in published] == ["frame 1", "frame 2", "frame 3"]


def test_each_kind_of_failure_has_its_own_throttle():
    clock = FakeClock()
    pipe, _, warnings = make(clock)
    for encoding in ["foo16", "foo16", "bar8", "foo16", "bar8"]:
        pipe.submit(frame(1, encoding), 0.0)
        pipe.step()
    assert len(warnings) == 2 and "foo16" in warnings[0] and "bar8" in warnings[1]
    clock.advance(6.0)
    pipe.submit(frame(1, "bar8"), 0.0)
    pipe.step()
    assert warnings[2].endswith("(1 similar messages suppressed)") and "bar8" in warnings[2]  # not 3


def test_a_stop_that_timed_out_never_leaves_two_workers():
    busy, release = threading.Event(), threading.Event()

    def blocking(image):
        busy.set()
        assert release.wait(10.0)
        return "x"

    pipe = CaptionPipeline(blocking, lambda event: None, decode=fake_decode, name="/slow")
    pipe.start()
    pipe.submit(frame(1), 0.0)
    assert busy.wait(10.0)
    assert pipe.stop(timeout=0.01) is False  # still captioning
    starter = threading.Thread(target=pipe.start)
    starter.start()  # waits for the old worker instead of starting a second one beside it
    assert [t.name for t in threading.enumerate()].count("caption:/slow") == 1
    release.set()
    starter.join(10.0)
    assert not starter.is_alive() and pipe.running
    assert [t.name for t in threading.enumerate()].count("caption:/slow") == 1
    assert pipe.stop() is True and not pipe.running
