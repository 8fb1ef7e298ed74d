"""Replay with the real rosbag2: record a camera (sqlite3 and mcap), extract it, caption its replay in sim time.

Once per session: a camera process (tests/ros_bag_helper.py) publishes seed_blocks photos stamped with the
current time, PERIOD_S apart, while two `ros2 bag record` (sqlite3, `-s mcap`) record them. One node launch
(use_sim_time, the tiny BLIP + adapter a) replays them three times with `ros2 bag play BAG --clock`
(paused until the node is subscribed, then resumed) while `ros2 bag record` records `caption/stamped`; the
caption bags are read with rosbags. Waits are events: recorders matched and acknowledged, the player exited,
the node's /diagnostics counters settled.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from ros_env import launch, wait_until, write_params
from ros_frames import image_frame, photo

from bench import ros2_stack

pytestmark = [pytest.mark.ros, pytest.mark.slow, pytest.mark.xdist_group("ros_replay")]
HELPER = Path(__file__).resolve().parent / "ros_bag_helper.py"
CAPTION_MSG = ros2_stack.SRC / "blip_captioner_msgs" / "msg" / "Caption.msg"
TOPIC = "/replay_cam/image_raw"
STAMPED = "/replay/caption/stamped"
NODE_STATUS = "/replay/blip_captioner: captioning"
PHOTOS = [f"image_train/{colour}_000{i}.jpg" for i in (1, 2) for colour in ("blue", "red", "green", "blue_on_green")]
PERIOD_S = 0.5  # camera period: played at half speed, the tiny model captions every frame even on a busy machine
LIMIT_HZ, SLOW_RATE = 1.0, 0.5  # the rate run: at most 1 caption a bag second, played at half speed


def helper(env: dict[str, str], folder: Path, spec: dict, timeout: float = 120) -> dict:
    """tests/ros_bag_helper.py with ``spec`` in a ROS process; its JSON report."""
    path = folder / f"helper_{time.monotonic_ns()}.json"
    path.write_text(json.dumps(spec))
    done = ros2_stack.run(env, sys.executable, str(HELPER), str(path), timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def record(env: dict[str, str], out: Path, topic: str, *options: str) -> ros2_stack.Launched:
    """`ros2 bag record -o OUT OPTIONS TOPIC`, once subscribed to ``topic``."""
    recorder = ros2_stack.Launched(env, ["ros2", "bag", "record", "-o", str(out), *options, topic],
                                   out.parent / f"{out.name}.log")
    recorder.wait_for(f"Subscribed to topic '{topic}'")
    return recorder


@pytest.fixture(scope="module")
def images():
    from conftest import SEED_BLOCKS

    return [photo(SEED_BLOCKS / name) for name in PHOTOS]


@pytest.fixture(scope="module")
def recording(ros_env, images, tmp_path_factory) -> dict:
    """The camera recorded once into sqlite3 and mcap bags: {"stamps": [[sec, nanosec]], "bags": {...}}."""
    folder = tmp_path_factory.mktemp("camera_bags")
    frames = [image_frame(rgb, "rgb8")[0] for rgb in images]
    spec = dict(mode="camera", topic=TOPIC, frames=frames, period_s=PERIOD_S, subscribers=2)
    (folder / "camera.json").write_text(json.dumps(spec))
    camera = ros2_stack.Launched(ros_env, [sys.executable, str(HELPER), str(folder / "camera.json")],
                                 folder / "camera.log")
    bags = {"sqlite3": folder / "camera_sqlite3", "mcap": folder / "camera_mcap"}
    recorders = [record(ros_env, bags["sqlite3"], TOPIC, "-s", "sqlite3"),
                 record(ros_env, bags["mcap"], TOPIC, "-s", "mcap")]
    wait_until(lambda: not camera.running, "the camera published every frame", timeout=120)
    assert camera.stop() == 0, camera.output()[-3000:]
    for recorder in recorders:
        assert recorder.stop() == 0, recorder.output()[-3000:]
    stamps = json.loads(camera.output().strip().splitlines()[-1])["stamps"]
    return dict(stamps=stamps, bags=bags, folder=folder)


@pytest.fixture(scope="module")
def node(ros_env, tiny_model_dir, adapters, tmp_path_factory):
    folder = tmp_path_factory.mktemp("replay_node")
    params = write_params(folder / "params.yaml", adapter=adapters["a"], max_rate_hz=0.0, max_new_tokens=8)
    launched = launch(ros_env, folder, f"params_file:={params}", "namespace:=replay", f"model:={tiny_model_dir}",
                      "device:=cpu", f"image_topic:={TOPIC}", "use_sim_time:=true")
    launched.folder = folder
    launched.wait_for("[replay.blip_captioner]: captioning")
    yield launched
    assert launched.stop() == 0


def read_captions(bag: Path) -> list[tuple[tuple[int, int], str]]:
    """(header stamp, text) of every Caption in a bag, in recorded order (read with rosbags)."""
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.ROS2_HUMBLE)
    store.register(get_types_from_msg(CAPTION_MSG.read_text(), "blip_captioner_msgs/msg/Caption"))
    with AnyReader([bag], default_typestore=store) as reader:
        return [((msg.header.stamp.sec, msg.header.stamp.nanosec), msg.text)
                for conn, _, raw in reader.messages()
                for msg in [reader.deserialize(raw, conn.msgtype)]]


@pytest.fixture(scope="module")
def replays(ros_env, node, recording) -> dict[str, dict]:
    """Three replays by one node at --rate SLOW_RATE (a frame every PERIOD_S / SLOW_RATE s): the sqlite3 and
    the mcap bag with no rate limit, then the sqlite3 bag with max_rate_hz LIMIT_HZ. Each: {"captions",
    "status": the node's diagnostics once settled}."""
    runs = {"sqlite3": ("sqlite3", str(SLOW_RATE), 0.0, 0), "mcap": ("mcap", str(SLOW_RATE), 0.0, 0),
            "slow": ("sqlite3", str(SLOW_RATE), LIMIT_HZ, 1)}
    results, received = {}, 0
    for name, (storage, rate, limit, unsettled) in runs.items():
        done = ros2_stack.run(ros_env, "ros2", "param", "set", "/replay/blip_captioner", "max_rate_hz", str(limit))
        assert "Set parameter successful" in done.stdout, done.stdout + done.stderr
        out = node.folder / f"captions_{name}"
        recorder = record(ros_env, out, STAMPED)
        player = ros2_stack.Launched(ros_env, ["ros2", "bag", "play", str(recording["bags"][storage]), "--clock",
                                               "-p", "-r", rate], node.folder / f"play_{name}.log")
        received += len(recording["stamps"])
        status = helper(ros_env, node.folder, dict(mode="replay", topic=TOPIC, node_status=NODE_STATUS,
                                                  received=received, unsettled=unsettled, player="rosbag2_player"))
        wait_until(lambda p=player: not p.running, f"ros2 bag play of {name} ended", timeout=120)
        assert player.stop() == 0, player.output()[-3000:]
        assert recorder.stop() == 0, recorder.output()[-3000:]
        results[name] = dict(captions=read_captions(out), status=status)
    return results


def test_bag_extract_reads_the_real_recordings(recording, images, tmp_path):
    """`blip-lora bag extract` on each real recording: every published frame, its stamp, its pixels."""
    from blip_lora_training.cli import main

    for storage, bag in recording["bags"].items():
        # the command line in process: the same code path as `blip-lora bag extract`, without a torch import
        assert main(["bag", "extract", str(bag), "--topic", TOPIC, "--out", str(tmp_path / storage)]) == 0
        rows = [json.loads(line) for line in (tmp_path / storage / "annotations.jsonl").read_text().splitlines()]
        assert [[row["ros_stamp"]["sec"], row["ros_stamp"]["nanosec"]] for row in rows] == recording["stamps"]
        for index, row in enumerate(rows):
            extracted = photo(tmp_path / storage / row["image"]).astype(int)  # JPEG (quality 95) of the frame
            errors = [np.abs(extracted - other.astype(int)).mean() for other in images]
            assert errors.index(min(errors)) == index and min(errors) < 3.0, (storage, errors)


def test_diagnostics_warn_while_clock_is_silent(ros_env, node):
    """use_sim_time with no /clock: /diagnostics still comes, and says the clock is silent."""
    status = helper(ros_env, node.folder, dict(mode="diagnostics", node_status=NODE_STATUS,
                                               contains="use_sim_time is true but /clock has not moved"))
    assert status["level"] == 1  # WARN
    assert "(ros2 bag play BAG --clock?)" in status["message"]


def test_replayed_captions_carry_the_bags_stamps_and_the_reference_text(replays, recording, images, reference,
                                                                       adapters):
    """Every frame of each full-speed replay captioned once, at its image stamp, with the core's caption."""
    expected = dict(zip([tuple(stamp) for stamp in recording["stamps"]], reference(images, adapter=adapters["a"]),
                        strict=True))
    for name in ("sqlite3", "mcap"):
        assert replays[name]["captions"] == list(expected.items()), (name, replays[name]["status"])


def test_two_replays_give_the_same_captions(replays):
    assert replays["sqlite3"]["captions"] == replays["mcap"]["captions"], (replays["sqlite3"]["status"],
                                                                          replays["mcap"]["status"])
    assert len(replays["sqlite3"]["captions"]) == len(PHOTOS)


def test_rate_limit_follows_the_bag_clock(replays, recording, images, reference, adapters):
    """At --rate 0.5 with max_rate_hz 1, captions start at least a bag second apart: no more than the bag's
    span allows (a wall-clock limit, over twice as long, allows twice as many: 8 > 4 when tried), and each is
    an image of the bag with its caption."""
    stamps = [sec + nanosec * 1e-9 for sec, nanosec in recording["stamps"]]
    allowed = int((stamps[-1] - stamps[0]) * LIMIT_HZ + 0.1) + 1
    captions = replays["slow"]["captions"]
    assert 2 <= len(captions) <= allowed, (len(captions), allowed, replays["slow"]["status"])
    expected = dict(zip([tuple(stamp) for stamp in recording["stamps"]], reference(images, adapter=adapters["a"]),
                        strict=True))
    assert all(expected[stamp] == text for stamp, text in captions)
    assert [stamp for stamp, _ in captions] == sorted(stamp for stamp, _ in captions)
