"""Starting and stopping blip_captioner on a real ROS 2: a namespace, compressed cameras, start-up failures.

A start-up failure (missing model, bad topic name, bad value) is one fatal line and exit status 1, without a
traceback; topics and values are checked before the model loads, so those fail in about a second.
"""

from __future__ import annotations

import time

import pytest
from ros_env import write_params
from ros_frames import compressed_frame, photo

from bench.ros2_stack import Launched, probe, run

pytestmark = [pytest.mark.ros, pytest.mark.slow]
TOPIC = "/test_cam/image_raw/compressed"


def test_under_a_namespace_the_params_file_applies_and_compressed_frames_are_captioned(
        ros_env, tiny_model_dir, adapters, reference, seed_blocks, tmp_path):
    params = write_params(tmp_path / "params.yaml", model=str(tiny_model_dir), adapter=adapters["a"],
                          max_rate_hz=0, max_new_tokens=8, device="cpu")
    node = Launched(ros_env, ["ros2", "launch", "blip_captioner", "blip_captioner.launch.py",
                              f"params_file:={params}", "namespace:=robot1", "compressed:=true",
                              f"image_topic:={TOPIC}"], tmp_path / "launch.log")
    try:
        node.wait_for("[robot1.blip_captioner]: captioning")
        got = run(ros_env, "ros2", "param", "get", "/robot1/blip_captioner", "model").stdout.strip()
        assert got == f"String value is: {tiny_model_dir}"  # from the /** params file, under the namespace
        rgb = photo(seed_blocks / "image_train/blue_0001.jpg")
        built = [compressed_frame(rgb, fmt, sec=int(time.time()), nanosec=i, frame_id=f"optical_{i}")
                 for i, fmt in enumerate(["jpeg", "png", "tiff", "rgb8; png compressed rgb8",
                                          "rgb8; jpeg compressed bgr8"])]
        report = probe(ros_env, dict(topic=TOPIC, frames=[frame for frame, _ in built]), tmp_path)
        expected = reference([seen for _, seen in built], adapters["a"])
        assert [frame["text"] for frame in report["frames"]] == expected
        assert [(frame["frame_id"], frame["stamp"][1]) for frame in report["frames"]] == \
            [(f"optical_{i}", i) for i in range(len(built))]
    finally:
        code = node.stop()
    assert code == 0 and "process has finished cleanly" in node.output()
    assert "Traceback" not in node.output()


def _start(env, *params: str, timeout: float = 60):
    began = time.monotonic()
    done = run(env, "ros2", "run", "blip_captioner", "blip_captioner", "--ros-args",
               *[arg for param in params for arg in ("-p", param)], timeout=timeout)
    return done, time.monotonic() - began


@pytest.mark.parametrize("params, fatal", [
    (["model:={missing}"], "blip_captioner cannot start: cannot load BLIP model '{missing}'"),
    (["model:={missing}", "image_topic:=/bad topic"],
     "blip_captioner cannot start: InvalidTopicNameException: Invalid topic name: topic name must not contain "
     "characters other than alphanumerics, '_', '~', '{{', or '}}': '/bad topic'"),
    (["model:={missing}", "max_rate_hz:=fast"],
     "blip_captioner cannot start: max_rate_hz must be a number, got 'fast'"),
    (["model:={missing}", "qos_depth:=0"], "Parameter qos_depth out of range. Min: 1, Max: 100, value: 0"),
])
def test_a_start_up_failure_is_one_fatal_line_and_exit_1(ros_env, tmp_path, params, fatal):
    missing = tmp_path / "no_model_here"
    done, seconds = _start(ros_env, *[param.format(missing=missing) for param in params])
    output = done.stdout + done.stderr
    fatal_lines = [line for line in output.splitlines() if "[FATAL]" in line]
    assert done.returncode == 1, output
    assert len(fatal_lines) == 1 and fatal.format(missing=missing) in fatal_lines[0], output
    assert "Traceback" not in output
    if "model:={missing}" != params[-1]:
        assert "cannot load BLIP model" not in output  # checked before the model load


def test_a_launch_with_a_missing_model_reports_the_fatal_line(ros_env, tmp_path):
    params = write_params(tmp_path / "params.yaml", model=str(tmp_path / "no_model_here"), device="cpu")
    node = Launched(ros_env, ["ros2", "launch", "blip_captioner", "blip_captioner.launch.py",
                              f"params_file:={params}"], tmp_path / "launch.log")
    node.process.wait(60)
    output = node.output()
    assert "[FATAL]" in output and "blip_captioner cannot start: cannot load BLIP model" in output
    assert "exit code 1" in output and "Traceback" not in output
    node.stop()


CALLBACK_SCRIPT = """
import sys
import rclpy
from rclpy.parameter import Parameter
from blip_captioner.node import CaptionerNode

rclpy.init()
node = CaptionerNode(parameter_overrides=[Parameter("model", value=sys.argv[1]), Parameter("device", value="cpu")])

def out_of_memory(changes):
    raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB")

node._live.apply = out_of_memory
result = node.set_parameters([Parameter("adapter", value="/models/big.safetensors")])[0]
print("RESULT", result.successful, result.reason)
print("ADAPTER", repr(node.get_parameter("adapter").value))
node._live.apply = lambda changes: None
print("AGAIN", node.set_parameters([Parameter("prompt", value="a picture of")])[0].successful)
node.destroy_node()
rclpy.shutdown()
"""


def test_an_exception_in_the_parameter_callback_refuses_the_change_and_the_node_lives_on(ros_env, tiny_model_dir):
    """A real rclpy node whose model raises while applying a change (CUDA OOM in a merge, say)."""
    done = run(ros_env, "python3", "-c", CALLBACK_SCRIPT, str(tiny_model_dir), timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "RESULT False RuntimeError: CUDA out of memory. Tried to allocate 20.00 MiB" in done.stdout
    assert "ADAPTER ''" in done.stdout and "AGAIN True" in done.stdout
    assert "parameter change failed: RuntimeError: CUDA out of memory" in done.stderr
