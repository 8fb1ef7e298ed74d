"""Benchmark the caption node's pipeline: a 30 Hz camera of 640x480 rgb8 sensor_msgs/Image into CaptionPipeline.

    python -m bench.node_pipeline                      # fake 0.1 s model and the tiny BLIP, 300 frames each
    python -m bench.node_pipeline --model /path/to/blip --frames 900 --memory-frames 10000
    python -m bench.node_pipeline --model fake --fake-inference-s 0.25 --skip-realtime
    python -m bench.node_pipeline --model tiny --real-dds --skip-memory   # adds the node over real DDS

Real time: frames are published at --fps with real sleeps while the pipeline's worker captions; reports the
caption rate, the age of each caption (publish time minus image stamp, median and p95) against one inference
time (goal: p95 <= 1.5x), and dropped frames.
Memory: --memory-frames frames through the same pipeline on a simulated clock (no sleeping; the worker is
stepped whenever it would be free, inference advances the clock by its measured or fake duration); RSS is
sampled every 1000 frames (goal: flat).
Messages are the real ROS 2 type (rosbags' sensor_msgs/msg/Image), decoded by blip_lora_core.runtime.image_msgs.
Real DDS (--real-dds): the blip_captioner node itself, started with `ros2 launch` on a real ROS 2 (see
bench/ros2_stack.py), and a camera process publishing over Cyclone DDS on loopback; ages are measured by the
camera process when the caption comes back on /caption/stamped, dropped frames come from the node's
/diagnostics, and the node's RSS is sampled once a second.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rosbags.typesys import Stores, get_typestore

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

from blip_lora_core.runtime.pipeline import CaptionPipeline

TYPES = get_typestore(Stores.ROS2_HUMBLE).types
WIDTH, HEIGHT = 640, 480
TINY_CAPTIONS = ["a red cube", "a blue cube", "a green cube on a table", "a picture of"]


def image_message(index: int, stamp: float) -> object:
    """A fresh 640x480 rgb8 Image (a new buffer, like a subscription hands out) stamped ``stamp`` seconds."""
    sec = int(stamp)
    header = TYPES["std_msgs/msg/Header"](
        stamp=TYPES["builtin_interfaces/msg/Time"](sec=sec, nanosec=int((stamp - sec) * 1e9)), frame_id="camera")
    data = np.full(HEIGHT * WIDTH * 3, index % 256, np.uint8)
    return TYPES["sensor_msgs/msg/Image"](header=header, height=HEIGHT, width=WIDTH, encoding="rgb8",
                                          is_bigendian=0, step=WIDTH * 3, data=data)


def message_stamp(msg) -> float:
    return msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9


@dataclass
class Model:
    """A caption function and how long one call took (the last one)."""

    name: str
    caption: Callable[[np.ndarray], str]
    fake_s: float | None = None  # fake models: the inference time they stand for
    durations: list[float] = field(default_factory=list)

    def timed(self, image: np.ndarray) -> str:
        start = time.perf_counter()
        text = self.caption(image)
        self.durations.append(time.perf_counter() - start)
        return text


def fake_model(seconds: float, sleep: bool) -> Model:
    def caption(image: np.ndarray) -> str:
        if sleep:
            time.sleep(seconds)
        return f"frame {int(image[0, 0, 0])}"

    return Model(f"fake ({seconds * 1000:.0f} ms sleep)", caption, fake_s=seconds)


def blip_model(spec: str, device: str) -> Model:
    """'tiny' builds the tiny BLIP in a temporary folder; anything else is a hub id or a model folder."""
    from blip_lora_core.models.captioning import Captioner
    from blip_lora_core.models.loading import build_tiny_blip

    path = spec
    if spec == "tiny":
        path = str(build_tiny_blip(tempfile.mkdtemp(prefix="bench_tiny_blip_"), TINY_CAPTIONS, seed=0))
    captioner = Captioner.from_pretrained(path, device=device, max_new_tokens=20)
    captioner.caption([np.zeros((HEIGHT, WIDTH, 3), np.uint8)])  # warm up
    return Model("tiny BLIP" if spec == "tiny" else spec, lambda image: captioner.caption([image])[0])


def load_model(spec: str, args: argparse.Namespace, sleep: bool) -> Model:
    if spec == "fake":
        return fake_model(args.fake_inference_s, sleep)
    return blip_model(spec, args.device)


def rss_mib() -> float:
    """Resident memory of this process now, in MiB."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        import psutil

        return psutil.Process().memory_info().rss / 2**20


# ---------------------------------------------------------------- real time


@dataclass
class RealtimeResult:
    model: str
    frames: int
    seconds: float
    captions: int
    ages: list[float]
    inference_s: float
    dropped: int
    errors: int


def run_realtime(model: Model, frames: int, fps: float, max_rate_hz: float) -> RealtimeResult:
    """Publish ``frames`` images at ``fps`` with real sleeps; the pipeline's worker captions meanwhile."""
    ages: list[float] = []
    pipe = CaptionPipeline(model.timed, lambda event: ages.append(time.monotonic() - event.stamp),
                           max_rate_hz=max_rate_hz, name="/bench/image_raw")
    pipe.start()
    start = time.monotonic()
    for index in range(frames):
        delay = start + index / fps - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        now = time.monotonic()
        pipe.submit(image_message(index, now), now)
    seconds = time.monotonic() - start
    captions = len(ages)  # published while the camera ran
    pipe.stop()
    stats = pipe.stats()
    return RealtimeResult(model.name, frames, seconds, captions, ages, statistics.median(model.durations),
                          stats.frames_dropped, stats.decode_errors + stats.inference_errors)


# ---------------------------------------------------------------- real DDS: the node itself


@dataclass
class DdsResult(RealtimeResult):
    """A real-DDS run: frames the node received (the rest were lost in best-effort DDS) and its RSS samples."""

    received: int = 0
    rss: list[tuple[float, float]] = field(default_factory=list)
    stamps_matched: bool = True  # every caption's stamp is a sent frame's

    def rss_drift_mib(self, after_s: float = 5.0) -> float:
        """RSS change of the node from ``after_s`` seconds into the stream to its end (warm-up excluded)."""
        start = next(mib for t, mib in self.rss if t >= after_s)
        return self.rss[-1][1] - start


def _node_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_real_dds(model_dir: str, seconds: float, fps: float, folder: Path, env: dict[str, str] | None = None,
                 max_new_tokens: int = 20) -> DdsResult:
    """Launch blip_captioner (max_rate_hz 0) and stream ``fps`` Hz 640x480 rgb8 at it for ``seconds``."""
    import re

    import yaml

    from bench import ros2_stack

    env = env or ros2_stack.environment(folder / "ros2_ws")
    config = yaml.safe_load((ros2_stack.SRC / "blip_captioner" / "config" / "captioner.yaml").read_text())
    config["/**"]["ros__parameters"].update(model=model_dir, device="cpu", max_rate_hz=0.0,
                                            max_new_tokens=max_new_tokens)
    params = folder / "bench_params.yaml"
    params.write_text(yaml.safe_dump(config))
    node = ros2_stack.Launched(env, ["ros2", "launch", "blip_captioner", "blip_captioner.launch.py",
                                     f"params_file:={params}", "image_topic:=/bench/image_raw"],
                                 folder / "bench_launch.log")
    try:
        node.wait_for("[blip_captioner]: captioning")
        pid = int(re.search(r"\[blip_captioner-1\]: process started with pid \[(\d+)\]", node.output()).group(1))
        rss: list[tuple[float, float]] = []
        stop = threading.Event()

        def sample() -> None:
            began = time.monotonic()
            while not stop.wait(1.0):
                rss.append((time.monotonic() - began, _node_rss_mib(pid)))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        spec = dict(topic="/bench/image_raw", stream=dict(fps=fps, seconds=seconds, width=WIDTH, height=HEIGHT),
                    diagnostics_s=1.5)
        report = ros2_stack.probe(env, spec, folder, timeout=seconds + 120)
        stop.set()
        sampler.join()
    finally:
        code = node.stop()
    if code != 0:
        raise RuntimeError(f"the node did not stop cleanly (exit {code}):\n{node.output()[-3000:]}")
    last = [d for d in report["diagnostics"] if d["name"] == "/blip_captioner: captioning"][-1]["values"]
    return DdsResult("tiny BLIP, node over real DDS", report["sent"], seconds, len(report["ages"]), report["ages"],
                     statistics.median(report["latencies"]),
                     int(last["frames_replaced"]) + int(last["frames_rate_limited"]),
                     int(last["decode_errors"]) + int(last["inference_errors"]), int(last["frames_received"]),
                     rss,
                     report["unmatched_stamps"] == 0)


# ---------------------------------------------------------------- memory, simulated clock


class SimClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _run_worker_until(pipe: CaptionPipeline, clock: SimClock, until: float, busy: list[float]) -> None:
    """Step the pipeline at every moment before ``until`` at which the node's worker would take a frame."""
    while True:
        now = clock.t
        clock.t = max(now, busy[0])
        start = clock.t + pipe.time_until_allowed()
        if start > until:
            clock.t = now
            return
        clock.t = start
        if pipe.step().value == "idle":
            return
        busy[0] = clock.t


def in_worker_thread(fn: Callable, *args):
    """fn(*args) on a fresh thread, as the node runs inference (torch sizes its thread pool per thread)."""
    result: list = []
    thread = threading.Thread(target=lambda: result.append(fn(*args)))
    thread.start()
    thread.join()
    return result[0]


def run_memory(model: Model, frames: int, fps: float, max_rate_hz: float, every: int) -> tuple[list, list]:
    """``frames`` images through the pipeline without sleeping; (frame count, RSS MiB) samples and the ages."""
    clock = SimClock()

    def caption(image: np.ndarray) -> str:
        start = time.perf_counter()
        text = model.caption(image)
        clock.t += model.fake_s if model.fake_s is not None else time.perf_counter() - start
        return text

    ages: list[float] = []
    pipe = CaptionPipeline(caption, lambda event: ages.append(clock() - event.stamp), clock=clock,
                           max_rate_hz=max_rate_hz, name="/bench/image_raw")
    busy, samples = [0.0], [(0, rss_mib())]
    for index in range(frames):
        t = index / fps
        _run_worker_until(pipe, clock, t - 1e-9, busy)  # a worker free exactly at t gets the new frame
        clock.t = max(clock.t, t)
        pipe.submit(image_message(index, t), t)
        _run_worker_until(pipe, clock, t, busy)
        if (index + 1) % every == 0:
            samples.append((index + 1, rss_mib()))
    return samples, ages


# ---------------------------------------------------------------- report


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def realtime_table(results: list[RealtimeResult], fps: float, goal: float) -> str:
    lines = ["| model | frames | captions | caption rate (Hz) | inference median (ms) | age median (ms) | "
             "age p95 (ms) | p95 / inference | p95 <= 1.5x inference | floor: inference + 1/fps (ms) | "
             "dropped | errors |", "|---" * 12 + "|"]
    for r in results:
        median, p95 = float(np.median(r.ages)), float(np.percentile(r.ages, 95))
        ratio = p95 / r.inference_s
        lines.append(f"| {r.model} | {r.frames} @ {fps:g} Hz | {r.captions} | {r.captions / r.seconds:.2f} | "
                     f"{_ms(r.inference_s)} | {_ms(median)} | {_ms(p95)} | {ratio:.2f}x | "
                     f"{'yes' if ratio <= goal else 'no'} | {_ms(r.inference_s + 1 / fps)} | {r.dropped} | "
                     f"{r.errors} |")
    return "\n".join(lines)


def memory_table(samples: dict[str, list[tuple[int, float]]]) -> str:
    names = list(samples)
    lines = ["| frames | " + " | ".join(f"{name} RSS (MiB)" for name in names) + " |",
             "|---|" + "---|" * len(names)]
    for row, (count, _) in enumerate(samples[names[0]]):
        lines.append(f"| {count} | " + " | ".join(f"{samples[name][row][1]:.1f}" for name in names) + " |")
    growth = [samples[name][-1][1] - samples[name][1][1] for name in names]
    lines.append("| growth after the first 1000 | " + " | ".join(f"{g:+.1f}" for g in growth) + " |")
    return "\n".join(lines)


def _machine() -> str:
    try:
        from bench.common import machine_description

        return machine_description()
    except Exception:  # noqa: BLE001 - the shared helper is optional here
        return f"{os.cpu_count()} CPUs"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", help="fake, tiny, or a hub id / folder (repeatable; "
                        "default: fake and tiny)")
    parser.add_argument("--fake-inference-s", type=float, default=0.1, help="inference time of the fake model")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--frames", type=int, default=300, help="frames in the real-time run")
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--max-rate-hz", type=float, default=0.0, help="the node's max_rate_hz (0: unlimited)")
    parser.add_argument("--memory-frames", type=int, default=10_000)
    parser.add_argument("--memory-max-rate-hz", type=float, default=5.0,
                        help="max_rate_hz of the memory run (bounds how many frames a real model captions)")
    parser.add_argument("--sample-every", type=int, default=1000)
    parser.add_argument("--skip-realtime", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--real-dds", action="store_true", help="add the node itself over real DDS (needs ROS 2 "
                        "sourced or ../shared/ros2-humble)")
    parser.add_argument("--dds-seconds", type=float, default=20.0, help="length of the real-DDS stream")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    specs = args.model or ["fake", "tiny"]
    print(f"# Caption node pipeline: {WIDTH}x{HEIGHT} rgb8 sensor_msgs/Image at {args.fps:g} Hz, "
          f"max_rate_hz {args.max_rate_hz:g}, {_machine()}\n")
    if not args.skip_realtime:
        results = [run_realtime(load_model(spec, args, sleep=True), args.frames, args.fps, args.max_rate_hz)
                   for spec in specs]
        if args.real_dds:
            from blip_lora_core.models.loading import build_tiny_blip

            folder = Path(tempfile.mkdtemp(prefix="bench_dds_"))
            dds = run_real_dds(str(build_tiny_blip(folder / "tiny", TINY_CAPTIONS, seed=0)), args.dds_seconds,
                               args.fps, folder)
            results.append(dds)
            print(f"Real DDS: {dds.frames} frames sent, {dds.received} received by the node, node RSS drift "
                  f"{dds.rss_drift_mib():+.1f} MiB from 5 s to {dds.rss[-1][0]:.0f} s\n")
        print(f"## Real time ({args.frames} frames)\n\n{realtime_table(results, args.fps, 1.5)}\n")
        print("Age = publish time - image stamp. The newest frame can be up to one frame interval old when the "
              "worker takes it, so a model faster than about 2 frame intervals cannot reach 1.5x; its floor is "
              "inference + 1/fps.\n")
    if not args.skip_memory:
        samples, simulated = {}, {}
        for spec in specs:
            model = load_model(spec, args, sleep=False)
            samples[model.name], simulated[model.name] = in_worker_thread(
                run_memory, model, args.memory_frames, args.fps, args.memory_max_rate_hz, args.sample_every)
        print(f"## Memory, {args.memory_frames} frames on a simulated clock, max_rate_hz "
              f"{args.memory_max_rate_hz:g}\n\n{memory_table(samples)}\n")
        for name, ages in simulated.items():
            print(f"- {name}: {len(ages)} captions, simulated age median {_ms(float(np.median(ages)))} ms, "
                  f"p95 {_ms(float(np.percentile(ages, 95)))} ms")


if __name__ == "__main__":
    main()
