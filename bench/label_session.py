"""The README's "Label your frames" run, end to end against a real Label Studio (on demand only, not in make test).

A recording of the seven seed_blocks scenes (frames 129-160 of each: 224 frames at 10 Hz, the photos' own JPEG
bytes as sensor_msgs/CompressedImage on /camera/image_raw, an mcap bag written with rosbags) is extracted with
`blip-lora bag extract`, ordered with `blip-lora label order` by the adapter of "Train on your own data", a batch
pushed with `label push`, labelled through Label Studio's API the way the labelling page does (the next task of
the queue; a right pre-caption accepted, a wrong one replaced by the right caption, every tenth task skipped),
pulled with `label pull` and trained on with `blip-lora train` from the demo's base, scored on frames 1-128
(every fourth) of the same scenes, none of them in the recording. Then the one-line errors of push and pull.
Every command is printed with its real output, as the README pastes it.

    python -m bench.label_session [--out runs/label_session] [--limit 40] [--epochs 30]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import urllib.error
from pathlib import Path

import numpy as np
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from bench import label_studio_server
from blip_lora_core.atomic import write_jsonl
from blip_lora_core.train.data import read_jsonl

REPO = Path(__file__).resolve().parents[1]
SEED_BLOCKS = REPO.parent / "shared" / "data" / "seed_blocks"
BLIP_LORA = REPO / ".venv" / "bin" / "blip-lora"
TOPIC, PROJECT = "/camera/image_raw", "robot frames"
FRAMES, RATE_HZ, START_NS = range(129, 161), 10, 1_700_000_000 * 10**9


def _scene(stem: str) -> str:
    return stem.rsplit("_", 1)[0]


def write_recording(bag: Path, truth: dict[str, str]) -> dict[int, str]:
    """The recording: scene after scene, frames 129-160, at 10 Hz; returns header stamp (ns) -> image stem."""
    store = get_typestore(Stores.ROS2_HUMBLE)
    types = store.types
    stems = sorted((s for s in truth if int(s.rsplit("_", 1)[1]) in FRAMES), key=lambda s: (_scene(s), s))
    stamps = {}
    with Writer(bag, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        connection = writer.add_connection(TOPIC, "sensor_msgs/msg/CompressedImage", typestore=store)
        for i, stem in enumerate(stems):
            stamp = START_NS + i * 10**9 // RATE_HZ
            header = types["std_msgs/msg/Header"](
                stamp=types["builtin_interfaces/msg/Time"](sec=stamp // 10**9, nanosec=stamp % 10**9),
                frame_id="camera")
            data = (SEED_BLOCKS / "image_train" / f"{stem}.jpg").read_bytes()
            msg = types["sensor_msgs/msg/CompressedImage"](header=header, format="jpeg",
                                                           data=np.frombuffer(data, np.uint8).copy())
            writer.write(connection, stamp, bytes(store.serialize_cdr(msg, msg.__msgtype__)))
            stamps[stamp] = stem
    return stamps


def run(argv: list[str], env: dict[str, str] | None = None, shown_env: str = "") -> int:
    """Run `blip-lora ...argv` from the repository root, print the command and its output; the exit code."""
    print(f"$ {shown_env}{shlex.join(['blip-lora', *argv])}", flush=True)
    done = subprocess.run([str(BLIP_LORA), *argv], cwd=REPO, env={**os.environ, **(env or {})},
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    print(done.stdout, end="", flush=True)
    if done.returncode:
        print(f"(exit code {done.returncode})", flush=True)
    return done.returncode


def label(server: label_studio_server.Server, project: int, truth: dict[str, str], stem_of: dict[int, str]
          ) -> dict[str, int]:
    """The labeller: takes the queue's next task until none is left, as the labelling page does."""
    right: dict[str, set[str]] = {}  # every phrasing of a scene is right (the five of an empty table)
    for name, text in truth.items():
        right.setdefault(_scene(name), set()).add(text.lower())
    counts = {"accepted": 0, "typed": 0, "skipped": 0}
    served = 0
    while True:
        try:
            task = server.api("GET", f"/api/projects/{project}/next")
        except urllib.error.HTTPError as error:
            if error.code == 404:  # the queue is empty
                return counts
            raise
        served += 1
        stem = stem_of[round(task["data"]["blip_lora"]["row"]["stamp"] * 10**9)]
        prediction = (task.get("predictions") or [{}])[-1]
        pre = (prediction.get("result") or [{"value": {"text": [""]}}])[0]["value"]["text"][0]
        if served % 10 == 0:
            payload, kind = {"result": [], "was_cancelled": True}, "skipped"
        elif pre.strip().lower() in right[_scene(stem)]:
            payload, kind = {"result": _caption(pre), "parent_prediction": prediction["id"]}, "accepted"
        else:
            payload, kind = {"result": _caption(truth[stem]), "lead_time": 5.0}, "typed"
        server.api("POST", f"/api/tasks/{task['id']}/annotations/", payload)
        counts[kind] += 1


def _caption(text: str) -> list[dict]:
    return [{"from_name": "caption", "to_name": "image", "type": "textarea", "value": {"text": [text]}}]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/label_session"))
    parser.add_argument("--limit", type=int, default=40, help="frames pushed (label order --limit)")
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args()
    out = args.out
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    samples, _ = read_jsonl(SEED_BLOCKS / "annotations.jsonl")
    truth = {s.image.stem: s.text for s in samples}
    stem_of = write_recording(out / "recording", truth)
    val = [{"image": str(s.image), "text": s.text} for s in samples
           if int(s.image.stem.rsplit("_", 1)[1]) <= 128 and int(s.image.stem.rsplit("_", 1)[1]) % 4 == 0]
    write_jsonl(out / "val.jsonl", val)
    print(f"# recording: {len(stem_of)} frames on {TOPIC} at {RATE_HZ} Hz; validation: {len(val)} photos")

    started = time.monotonic()
    frames, batch, labelled = out / "frames", out / "frames" / "batch1.jsonl", out / "labelled" / "batch1.jsonl"
    assert run(["bag", "extract", str(out / "recording"), "--topic", TOPIC, "--out", str(frames)]) == 0
    assert run(["label", "order", str(frames / "annotations.jsonl"), "--model", "demo_out/base/model", "--adapter",
                "runs/seed_blocks/best.safetensors", "--limit", str(args.limit), "--out", str(batch)]) == 0
    with label_studio_server.running(out / "label-studio") as server:
        env = {"LABEL_STUDIO_URL": server.url, "LABEL_STUDIO_API_KEY": server.personal_token}
        print(f"$ export LABEL_STUDIO_URL={server.url} LABEL_STUDIO_API_KEY=...   # a personal access token")
        assert run(["label", "push", str(batch), "--project", PROJECT], env) == 0
        project = server.api("GET", "/api/projects?title=robot%20frames")["results"][0]["id"]
        counts = label(server, project, truth, stem_of)
        print(f"# the labeller: {sum(counts.values())} tasks, {counts['accepted']} pre-captions accepted, "
              f"{counts['typed']} typed, {counts['skipped']} skipped")
        assert run(["label", "pull", "--project", PROJECT, "--out", str(labelled)], env) == 0
        run(["train", "--model", "demo_out/base/model", "--train", str(labelled), "--val", str(out / "val.jsonl"),
             "--group-references", "--out", str(out / "run"), "--r", "8", "--alpha", "16", "--dropout", "0",
             "--epochs", str(args.epochs), "--eval-every", "50", "--batch-size", "8", "--grad-accum", "1",
             "--lr", "0.006", "--warmup-steps", "10", "--precision", "fp32", "--workers", "0",
             "--max-new-tokens", "12", "--no-progress"])
        print(f"# round trip: {time.monotonic() - started:.0f} s\n\n# errors")
        _errors(server, out, batch, env)
    return 0


def _errors(server: label_studio_server.Server, out: Path, batch: Path, env: dict[str, str]) -> None:
    """One line and exit code 2 each: a server that is down, a refused token, a missing frame, a bad line."""
    rows = batch.read_text().splitlines()
    missing, bad = batch.with_name("missing_frame.jsonl"), batch.with_name("bad_line.jsonl")
    row = json.loads(rows[1])
    missing.write_text("\n".join([rows[0], json.dumps({**row, "image": "images/frame_gone.jpg"}), *rows[2:]]) + "\n")
    bad.write_text("\n".join([rows[0], rows[1][: len(rows[1]) // 2], *rows[2:]]) + "\n")
    down = server.url.rsplit(":", 1)[0] + ":9"  # the discard port: nothing listens
    run(["label", "push", str(batch), "--project", PROJECT, "--url", down], env)
    run(["label", "pull", "--project", PROJECT, "--out", str(out / "x.jsonl")], {**env, "LABEL_STUDIO_API_KEY":
        "0" * 40}, "LABEL_STUDIO_API_KEY=0000...0000 ")
    run(["label", "push", str(missing), "--project", PROJECT], env)
    run(["label", "push", str(bad), "--project", PROJECT], env)


if __name__ == "__main__":
    sys.exit(main())
