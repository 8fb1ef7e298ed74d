"""A flooded node: 10,000 frames as fast as they come, one in ten malformed, the model failing every 500.

The pipeline (the ROS node's core) must keep captioning, count every failure in its statistics and
diagnostics, and keep its memory flat: traced memory after 10,000 frames stays within a small bound of
that after 1,000, so nothing per frame is retained.
"""

from __future__ import annotations

import itertools
import time
import tracemalloc

import numpy as np
import pytest
from bag_fixtures import image_msg, raw_msg

from blip_lora_core.runtime.diagnostics import Level, diagnose
from blip_lora_core.runtime.pipeline import CaptionPipeline, Outcome

FRAMES = 10_000
MEMORY_BOUND = 64 * 1024  # bytes: far below one frame per 100 (each message holds 9 KiB of pixels)
HEIGHT, WIDTH = 48, 64


class FakeClock:
    """A 100 fps camera: every call to tick() moves time 10 ms on."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def tick(self) -> None:
        self.now += 0.01


LAST = 255  # pixel value of the flood's final frame (index % 251 never reaches it)


def _good_frame(index: int, value: int | None = None):
    rgb = np.full((HEIGHT, WIDTH, 3), index % 251 if value is None else value, np.uint8)
    return image_msg(rgb, "rgb8" if index % 2 else "bgr8", stamp_ns=index * 10_000_000)


def _bad_frame(index: int):
    """Bad encoding, short data, a step too small for the width, or no pixels at all."""
    size = HEIGHT * WIDTH * 3
    kind = (index // 10) % 4
    if kind == 0:
        return raw_msg(HEIGHT, WIDTH, "rgb9", WIDTH * 3, bytes(size))
    if kind == 1:
        return raw_msg(HEIGHT, WIDTH, "rgb8", WIDTH * 3, bytes(size // 2))
    if kind == 2:
        return raw_msg(HEIGHT, WIDTH, "rgb8", WIDTH, bytes(size))
    return raw_msg(0, 0, "rgb8", 0, b"")


class FlakyModel:
    """A fast fake caption function that raises on the frames it is told to fail."""

    def __init__(self) -> None:
        self.calls = self.raised = 0
        self.fail_next = False

    def __call__(self, image: np.ndarray) -> str:
        assert image.shape == (HEIGHT, WIDTH, 3) and image.dtype == np.uint8
        self.calls += 1
        if self.fail_next:
            self.fail_next = False
            self.raised += 1
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return f"One cube {int(image[0, 0, 0])}"


def _frame(index: int, model: FlakyModel):
    """Frame index: malformed when index % 10 == 3, an inference failure when index % 500 == 250."""
    if index % 10 == 3:
        return _bad_frame(index)
    model.fail_next = index % 500 == 250
    return _good_frame(index)


def test_ten_thousand_frames_one_in_ten_bad_keep_captioning_with_flat_memory():
    """Every frame processed (submit, then step): counts are exact and memory does not grow."""
    clock, model, published, warnings = FakeClock(), FlakyModel(), [0], []
    pipeline = CaptionPipeline(model, lambda event: published.__setitem__(0, published[0] + 1),
                               clock=clock, name="/camera/image_raw", warn=warnings.append)
    outcomes = dict.fromkeys(Outcome, 0)

    def run(indices) -> None:
        for index in indices:
            pipeline.submit(_frame(index, model))
            outcomes[pipeline.step()] += 1
            clock.tick()

    run(range(50))  # warm up caches (OpenCV, numpy) before measuring
    began = time.perf_counter()
    tracemalloc.start()
    try:
        run(range(50, 1_000))
        at_1000 = tracemalloc.get_traced_memory()[0]
        after_1000 = pipeline.stats()
        run(range(1_000, FRAMES))
        at_10000 = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    elapsed = time.perf_counter() - began
    stats = pipeline.stats()

    bad, failing = FRAMES // 10, FRAMES // 500
    assert (stats.frames_received, stats.decode_errors, stats.inference_errors) == (FRAMES, bad, failing)
    assert stats.captions_made == stats.captions_published == published[0] == FRAMES - bad - failing
    assert stats.frames_dropped == 0
    assert outcomes[Outcome.DECODE_ERROR] == bad and outcomes[Outcome.INFERENCE_ERROR] == failing
    assert at_10000 - at_1000 < MEMORY_BOUND, f"memory grew by {at_10000 - at_1000} bytes over 9,000 frames"

    diagnosis = diagnose(stats, after_1000)
    assert diagnosis.level == Level.WARN
    assert diagnosis.message == f"{bad - 100} frames not decodable, {failing - 2} inference errors"
    assert ("decode_errors", str(bad)) in diagnosis.values and ("inference_errors", str(failing)) in diagnosis.values

    # warnings are throttled (one per 5 s of camera time per kind: 64x48 rgb9, 64x48 rgb8, 0x0 rgb8 frames that
    # cannot be decoded, RuntimeError in the model) and say how many were held back
    assert 0 < len(warnings) <= 4 * (FRAMES * 0.01 / 5 + 1)
    assert any("cannot be decoded" in w for w in warnings) and any("RuntimeError: CUDA error" in w for w in warnings)
    assert any("similar messages suppressed" in w for w in warnings)
    assert elapsed < 60


def test_flood_against_the_worker_thread_loses_no_frame_from_the_books():
    """As fast as possible against the real worker: frames are dropped (newest wins), never lost or stuck."""
    model = FlakyModel()
    failures = itertools.count(1)

    def caption(image):
        model.fail_next = next(failures) % 500 == 0 and image[0, 0, 0] != LAST
        return model(image)

    published = []
    pipeline = CaptionPipeline(caption, lambda event: published.append(event.text), name="/camera/image_raw",
                               warn=lambda message: None)
    pipeline.start()
    try:
        for index in range(FRAMES - 1):
            pipeline.submit(_bad_frame(index) if index % 10 == 3 else _good_frame(index))
        pipeline.submit(_good_frame(FRAMES - 1, LAST))
        deadline = time.monotonic() + 30
        while _pending(pipeline) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert pipeline.running, "the worker thread died"
    finally:
        pipeline.stop()
    stats = pipeline.stats()
    processed = stats.decode_errors + stats.inference_errors + stats.captions_made
    assert stats.frames_received == FRAMES
    assert stats.frames_dropped + processed == FRAMES
    assert stats.captions_published == len(published) > 0
    assert stats.inference_errors == model.raised and model.calls // 500 - 1 <= model.raised <= model.calls // 500
    assert published[-1] == f"One cube {LAST}"  # the newest frame was captioned last


def _pending(pipeline: CaptionPipeline) -> bool:
    stats = pipeline.stats()
    done = stats.frames_dropped + stats.decode_errors + stats.inference_errors + stats.captions_made
    return done < stats.frames_received


@pytest.mark.parametrize("failure", [MemoryError, KeyboardInterrupt])
def test_worker_survives_model_errors_but_not_interrupts(failure):
    """Exception subclasses are counted and skipped; a KeyboardInterrupt is not swallowed by the pipeline."""
    def caption(image):
        raise failure("boom")

    pipeline = CaptionPipeline(caption, lambda event: None, warn=lambda message: None)
    pipeline.submit(_good_frame(1))
    if failure is KeyboardInterrupt:
        with pytest.raises(KeyboardInterrupt):
            pipeline.step()
    else:
        assert pipeline.step() is Outcome.INFERENCE_ERROR
        assert pipeline.stats().inference_errors == 1
