"""Benchmark large-frame delivery into the blip_captioner node over Cyclone DDS on loopback.

    python -m bench.qos_delivery                       # every setting, 720p / 1080p / 4K, 10 frames each at 2 Hz
    python -m bench.qos_delivery --setting shipped --frames 20 --interval-s 0.2

For each setting the node itself is launched (`ros2 launch`, the tiny BLIP, a real ROS 2: bench/ros2_stack.py);
a camera process (bench/qos_camera.py, Cyclone's defaults like most camera drivers) publishes rgb8 frames
from a reliable and then from a best-effort publisher (keep last 5); delivered = the rise of the node's
``frames_received`` in /diagnostics. Settings differ in the node's Cyclone configuration (CYCLONEDDS_URI)
and its image QoS (qos_overrides). Prints one table: delivered/sent per resolution x camera x setting.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from bench import ros2_stack
from bench.common import machine_description

CAMERA = Path(__file__).resolve().parent / "qos_camera.py"
TOPIC = "/qos_bench/image_raw"
RESOLUTIONS = {"720p": (1280, 720), "1080p": (1920, 1080), "4K": (3840, 2160)}
CYCLONE_XML = ('<?xml version="1.0" encoding="UTF-8"?>\n<CycloneDDS xmlns="https://cdds.io/config"><Domain Id="any">'
               "{}</Domain></CycloneDDS>\n")


@dataclass(frozen=True)
class Setting:
    """How the node is launched: its CYCLONEDDS_URI ('': the launch file's default, 'none': Cyclone's
    defaults, else XML elements written to a file) and its image subscription's reliability."""

    name: str
    cyclone: str
    reliability: str = "best_effort"


SETTINGS = [
    Setting("before: Cyclone defaults, best effort", "none"),
    Setting("64 kB datagrams (MaxMessageSize 65500 B)", "<General><MaxMessageSize>65500B</MaxMessageSize></General>"),
    Setting("Cyclone defaults, reliable (qos_overrides)", "none", "reliable"),
    Setting("shipped: config/cyclonedds.xml (64 MiB receive buffer requested), best effort", ""),
    Setting("shipped, reliable (qos_overrides)", "", "reliable"),
]
SHORT = {"before": 0, "datagrams": 1, "reliable": 2, "shipped": 3, "shipped-reliable": 4}


def _params(folder: Path, model_dir: str, setting: Setting) -> Path:
    config = yaml.safe_load((ros2_stack.SRC / "blip_captioner" / "config" / "captioner.yaml").read_text())
    values = config["/**"]["ros__parameters"]
    values.update(model=model_dir, device="cpu", max_rate_hz=0.5)
    if setting.reliability != "best_effort":
        values["qos_overrides"] = {TOPIC: {"subscription": {"reliability": setting.reliability}}}
    path = folder / "qos_params.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _cyclone_argument(folder: Path, setting: Setting) -> list[str]:
    if setting.cyclone in ("", "none"):
        return [f"cyclonedds_uri:={setting.cyclone}"] if setting.cyclone else []
    path = folder / "cyclonedds.xml"
    path.write_text(CYCLONE_XML.format(setting.cyclone))
    return [f"cyclonedds_uri:=file://{path}"]


def run_setting(env: dict[str, str], folder: Path, model_dir: str, setting: Setting, cases: list[dict]) -> list[dict]:
    """Launch the node with ``setting``, run the camera's ``cases`` against it; the cases with ``received``."""
    folder.mkdir(parents=True, exist_ok=True)
    command = ["ros2", "launch", "blip_captioner", "blip_captioner.launch.py",
               f"params_file:={_params(folder, model_dir, setting)}", f"image_topic:={TOPIC}",
               *_cyclone_argument(folder, setting)]
    node = ros2_stack.Launched(env, command, folder / "launch.log")
    try:
        node.wait_for("[blip_captioner]: captioning", timeout=180)
        spec = folder / "camera.json"
        spec.write_text(json.dumps(dict(topic=TOPIC, node="/blip_captioner", cases=cases)))
        done = ros2_stack.run(env, sys.executable, str(CAMERA), str(spec), timeout=900)
        if done.returncode != 0:
            raise RuntimeError(f"qos_camera failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    finally:
        node.stop()
    buffer = re.findall(r"socket receive buffer[^\n]*", node.output())
    if buffer:
        print(f"  {setting.name}: Cyclone says {buffer[0]}", file=sys.stderr)
    return json.loads(done.stdout.strip().splitlines()[-1])["cases"]


def table(results: dict[str, list[dict]]) -> str:
    names = list(results)
    lines = ["| frame | camera | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for row, case in enumerate(results[names[0]]):
        label = next(k for k, v in RESOLUTIONS.items() if v == (case["width"], case["height"]))
        cells = [(f"{r[row]['received']}/{r[row]['sent']}" if r[row]["matched"] else "no match (incompatible)")
                 for r in results.values()]
        lines.append(f"| {label} rgb8 ({case['width'] * case['height'] * 3 / 1e6:.1f} MB) | "
                     f"{'reliable' if case['reliable'] else 'best effort'} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setting", action="append", choices=list(SHORT),
                        help="settings to run (repeatable; default: all)")
    parser.add_argument("--resolution", action="append", choices=list(RESOLUTIONS))
    parser.add_argument("--frames", type=int, default=10, help="frames per resolution and camera")
    parser.add_argument("--interval-s", type=float, default=0.5, help="seconds between two frames")
    parser.add_argument("--distro", default="humble", choices=ros2_stack.DISTROS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    from blip_lora_core.models.loading import build_tiny_blip

    args = parse_args(argv)
    settings = [SETTINGS[SHORT[name]] for name in args.setting] if args.setting else SETTINGS
    folder = Path(tempfile.mkdtemp(prefix="bench_qos_"))
    env = ros2_stack.environment(folder / "ros2_ws", args.distro)
    model_dir = str(build_tiny_blip(folder / "tiny", ["a red cube", "a blue cube"], seed=0))
    cases = [dict(width=w, height=h, reliable=reliable, frames=args.frames, interval_s=args.interval_s)
             for w, h in (RESOLUTIONS[r] for r in (args.resolution or RESOLUTIONS)) for reliable in (True, False)]
    results = {}
    for index, setting in enumerate(settings):
        results[setting.name] = run_setting(env, folder / f"setting{index}", model_dir, setting, cases)
        print(f"  done: {setting.name}: {json.dumps(results[setting.name])}", file=sys.stderr)
    print(f"# Frames delivered into the blip_captioner node over Cyclone DDS on loopback ({args.distro}; "
          f"{args.frames} frames per row, {1 / args.interval_s:g} Hz; {machine_description()})\n\n{table(results)}")


if __name__ == "__main__":
    main()
