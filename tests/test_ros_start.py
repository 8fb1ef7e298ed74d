"""Starting and stopping blip_captioner on a real ROS 2: namespaces, remapping, lifecycle, QoS overrides,
start-up failures, SIGTERM to ros2 launch."""

from __future__ import annotations

import os
import re
import signal
import sys
import time

import pytest
from ros_env import launch, ros2, wait_until, write_params
from ros_frames import compressed_frame, image_frame, photo

from bench.ros2_stack import Launched, probe, run

pytestmark = [pytest.mark.ros, pytest.mark.slow]


def _rgb(seed_blocks):
    return photo(seed_blocks / "image_train/blue_0001.jpg")


def test_two_cameras_in_two_namespaces_with_one_yaml_and_a_remapped_caption(
        ros_env, tiny_model_dir, adapters, reference, seed_blocks, tmp_path):
    params = write_params(tmp_path / "params.yaml", model=str(tiny_model_dir), adapter=adapters["a"],
                          max_rate_hz=0.0, max_new_tokens=8, device="cpu", autostart=True)
    cam1 = launch(ros_env, tmp_path, f"params_file:={params}", "namespace:=cam1", "compressed:=true", log="cam1.log")
    # the same YAML, started with ros2 run: the namespace and the caption topic remapped with --ros-args
    cam2 = Launched(ros_env, ["ros2", "run", "blip_captioner", "blip_captioner", "--ros-args", "-r", "__ns:=/cam2",
                              "-r", "caption:=/cam2/words", "--params-file", str(params)], tmp_path / "cam2.log")
    try:
        cam1.wait_for("[cam1.blip_captioner]: captioning /cam1/image/compressed -> /cam1/caption")
        cam2.wait_for("[cam2.blip_captioner]: captioning /cam2/image -> /cam2/words")
        rgb = _rgb(seed_blocks)
        built = [compressed_frame(rgb, fmt, sec=int(time.time()), nanosec=i, frame_id=f"optical_{i}")
                 for i, fmt in enumerate(["jpeg", "png", "rgb8; jpeg compressed bgr8"])]
        one = probe(ros_env, dict(topic="/cam1/image/compressed", caption_topic="/cam1/caption", bridge=True,
                                  frames=[frame for frame, _ in built], diagnostics_s=1.5), tmp_path)
        from ros_frames import bridged

        assert [f["text"] for f in one["frames"]] == reference([bridged(f) for f in one["frames"]], adapters["a"])
        frame, seen = image_frame(rgb, "rgb8", sec=7, nanosec=1, frame_id="two")
        two = probe(ros_env, dict(topic="/cam2/image", caption_topic="/cam2/words", frames=[frame],
                                  diagnostics_s=1.5), tmp_path)
        assert [f["text"] for f in two["frames"]] == reference([seen], adapters["a"])
        assert set(one["captions"]).isdisjoint({"never"}) and two["captions"] == [two["frames"][0]["text"]]
        names = {d["name"] for d in one["diagnostics"] + two["diagnostics"]}
        assert {"/cam1/blip_captioner: captioning", "/cam2/blip_captioner: captioning"} <= names
        words = [d for d in two["diagnostics"] if d["name"] == "/cam2/blip_captioner: captioning"][-1]["values"]
        assert (words["caption_topic"], words["stamped_topic"]) == ("/cam2/words", "/cam2/words/stamped")
        topics = ros2(ros_env, "topic", "list", "-t")
        assert "/cam2/words/stamped [blip_captioner_msgs/msg/Caption]" in topics
        assert not [line for line in topics.splitlines() if line.startswith("/caption")]
    finally:
        codes = cam1.stop(), cam2.stop()
    assert codes == (0, 0) and "Traceback" not in cam1.output() + cam2.output()


def test_lifecycle_qos_overrides_and_incompatible_qos(ros_env, tiny_model_dir, seed_blocks, tmp_path):
    params = write_params(tmp_path / "params.yaml", model=str(tiny_model_dir), max_rate_hz=0.0, max_new_tokens=8)
    text = params.read_text() + ("    qos_overrides:\n      /lc/image:\n        subscription:\n"
                                 "          reliability: reliable\n          depth: 1\n")
    params.write_text(text)
    node = launch(ros_env, tmp_path, f"params_file:={params}", "namespace:=lc", "autostart:=false", "device:=cpu")
    try:
        wait_until(lambda: ros2(ros_env, "lifecycle", "get", "/lc/blip_captioner") == "unconfigured [1]",
                   "unconfigured node")
        assert "captioning" not in node.output()  # no model loaded yet
        assert ros2(ros_env, "lifecycle", "set", "/lc/blip_captioner", "configure") == "Transitioning successful"
        assert "image QoS reliable, depth 1" in node.output()  # the standard qos_overrides parameters
        assert ros2(ros_env, "lifecycle", "set", "/lc/blip_captioner", "activate") == "Transitioning successful"
        frame, _ = image_frame(_rgb(seed_blocks), "rgb8", sec=3, nanosec=0, frame_id="lc", reliable=True)
        report = probe(ros_env, dict(topic="/lc/image", caption_topic="/lc/caption", frames=[frame]), tmp_path)
        assert report["frames"][0]["frame_id"] == "lc"
        # a best-effort camera cannot reach a reliable subscription: said in diagnostics
        quiet = dict(frame, reliable=False, expect=False, repeat=3, wait=False)
        report = probe(ros_env, dict(topic="/lc/image", caption_topic="/lc/caption", frames=[quiet],
                                     diagnostics_s=2.5), tmp_path)
        ours = [d for d in report["diagnostics"] if d["name"] == "/lc/blip_captioner: captioning"]
        assert any(d["level"] == 1 and "incompatible QoS (last: RELIABILITY)" in d["message"] for d in ours), ours
        assert ros2(ros_env, "lifecycle", "set", "/lc/blip_captioner", "deactivate") == "Transitioning successful"
        assert ros2(ros_env, "lifecycle", "set", "/lc/blip_captioner", "cleanup") == "Transitioning successful"
        wait_until(lambda: "model freed" in node.output(), "the model freed")
        assert ros2(ros_env, "lifecycle", "get", "/lc/blip_captioner") == "unconfigured [1]" and node.running
        assert ros2(ros_env, "lifecycle", "set", "/lc/blip_captioner", "configure") == "Transitioning successful"
    finally:
        assert node.stop() == 0
    assert "Traceback" not in node.output()


def test_a_node_that_dies_at_start_ends_ros2_launch_with_an_error(ros_env, tmp_path):
    missing = tmp_path / "no_model_here"
    node = launch(ros_env, tmp_path, f"model:={missing}", "device:=cpu")
    assert node.process.wait(60) != 0
    output = node.output()
    assert f"blip_captioner cannot start: cannot load BLIP model '{missing}'" in output  # the argument is used
    assert "exited with code 1" in output and "Traceback" not in output


@pytest.mark.parametrize("params, fatal", [
    (["model:={missing}"], "blip_captioner cannot start: cannot load BLIP model '{missing}'"),
    (["model:={missing}", "dtype:=fp8"], "blip_captioner cannot start: dtype must be one of 'auto', 'fp32', "
                                         "'float32', 'fp16', 'float16', 'bf16', 'bfloat16', got 'fp8'"),
])
def test_a_start_up_failure_is_one_fatal_line_and_exit_1(ros_env, tmp_path, params, fatal):
    missing = tmp_path / "no_model_here"
    done = run(ros_env, "ros2", "run", "blip_captioner", "blip_captioner", "--ros-args", "-p", "autostart:=true",
               *[arg for param in params for arg in ("-p", param.format(missing=missing))])
    output = done.stdout + done.stderr
    fatal_lines = [line for line in output.splitlines() if "[FATAL]" in line]
    assert done.returncode == 1, output
    assert len(fatal_lines) == 1 and fatal.format(missing=missing) in fatal_lines[0], output
    assert "Traceback" not in output


def test_sigterm_to_ros2_launch_leaves_no_orphan(ros_env, tiny_model_dir, tmp_path):
    node = launch(ros_env, tmp_path, f"model:={tiny_model_dir}", "device:=cpu", "namespace:=term")
    node.wait_for("[term.blip_captioner]: captioning")
    pid = int(re.search(r"process started with pid \[(\d+)\]", node.output()).group(1))
    os.kill(node.process.pid, signal.SIGTERM)  # ros2 launch alone, as a service manager stops it
    node.process.wait(30)

    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        with open(f"/proc/{pid}/stat") as stat:  # a zombie has ended too
            return stat.read().split(")")[1].split()[0] == "Z"

    wait_until(gone, "the node ending after ros2 launch", timeout=30)
    node.stop()
    assert sys.platform == "linux"
