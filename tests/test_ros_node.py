"""The blip_captioner node on a real ROS 2: one `ros2 launch` shared by the checks of this module.

Launched with a params file (tiny BLIP, adapter a, `max_rate_hz: 2` as a YAML integer, image_topic from the
YAML) and argument overrides (image_topic, device). A probe process (bench/ros_probe.py) publishes camera
messages made from seed_blocks photos and listens to /caption, /caption/stamped and /diagnostics; `ros2 param`
and `ros2 topic` run as their own processes. Every message crosses real DDS with real rosidl types.
"""

from __future__ import annotations

import subprocess
import time

import pytest
from ros_env import write_params
from ros_frames import image_frame, photo

from bench.ros2_stack import Launched, probe, run

pytestmark = [pytest.mark.ros, pytest.mark.slow, pytest.mark.xdist_group("ros_node")]
TOPIC = "/test_cam/image_raw"
NODE = "/blip_captioner"
PHOTOS = ["image_train/blue_0001.jpg", "image_train/red_0001.jpg", "image_train/green_0001.jpg"]


@pytest.fixture(scope="module")
def photos(seed_blocks_dir):
    return [photo(seed_blocks_dir / name) for name in PHOTOS]


@pytest.fixture(scope="module")
def seed_blocks_dir():
    from conftest import SEED_BLOCKS

    if not (SEED_BLOCKS / "annotations.jsonl").is_file():
        pytest.skip(f"seed_blocks dataset not found at {SEED_BLOCKS}")
    return SEED_BLOCKS


@pytest.fixture(scope="module")
def launched(ros_env, tiny_model_dir, adapters, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ros_node")
    params = write_params(folder / "params.yaml", model=str(tiny_model_dir), adapter=adapters["a"],
                          max_rate_hz=2, max_new_tokens=8, image_topic="/from_the_yaml/image_raw")
    node = Launched(ros_env, ["ros2", "launch", "blip_captioner", "blip_captioner.launch.py",
                              f"params_file:={params}", f"image_topic:={TOPIC}", "device:=cpu"], folder / "launch.log")
    node.folder = folder
    node.wait_for("[blip_captioner]: captioning")
    yield node
    node.stop()


def param(env, *args: str) -> str:
    done = run(env, "ros2", "param", *args)
    return (done.stdout + done.stderr.split("disabling multicast\n")[-1]).strip()


def params_at_once(env, *commands: tuple[str, ...]) -> list[str]:
    """Several `ros2 param` commands run side by side (each CLI start takes about a second); their outputs."""
    processes = [subprocess.Popen(["ros2", "param", *command], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for command in commands]
    outputs = [process.communicate(timeout=60) for process in processes]
    return [(out + err.split("disabling multicast\n")[-1]).strip() for out, err in outputs]


def send(env, folder, frames, **spec) -> dict:
    return probe(env, dict(topic=TOPIC, frames=frames, **spec), folder)


def frames_of(images, encoding="rgb8", start=0, **kw):
    built = [image_frame(rgb, encoding, sec=1000 + start + i, nanosec=123_456_789, frame_id=f"cam_{start + i}", **kw)
             for i, rgb in enumerate(images)]
    return [frame for frame, _ in built], [seen for _, seen in built]


def test_launch_takes_the_yaml_integer_rate_and_the_argument_overrides(ros_env, launched, tiny_model_dir):
    assert "at most 2 Hz" in launched.output()
    # the decoding path in the start-up line: the tiny model on the CPU takes the static-cache decoder
    assert "at most 2 Hz; fast static-cache (eager), cpu, float32, quantize none" in launched.output()
    assert param(ros_env, "get", NODE, "max_rate_hz") == "Integer value is: 2"
    assert param(ros_env, "get", NODE, "image_topic") == f"String value is: {TOPIC}"
    assert param(ros_env, "get", NODE, "model") == f"String value is: {tiny_model_dir}"
    topics = run(ros_env, "ros2", "topic", "list", "-t").stdout
    for line in [f"{TOPIC} [sensor_msgs/msg/Image]", "/caption [std_msgs/msg/String]",
                 "/caption/stamped [diagnostic_msgs/msg/DiagnosticArray]",
                 "/diagnostics [diagnostic_msgs/msg/DiagnosticArray]"]:
        assert line in topics


@pytest.mark.parametrize("encoding, pad", [("rgb8", 8), ("bgr8", 0), ("mono8", 3), ("yuyv", 0)])
def test_images_in_every_encoding_get_the_adapters_captions(ros_env, launched, photos, reference, adapters,
                                                           encoding, pad):
    assert param(ros_env, "set", NODE, "max_rate_hz", "0") == "Set parameter successful"
    frames, seen = frames_of(photos, encoding, pad=pad)
    report = send(ros_env, launched.folder, frames)
    expected = reference(seen, adapters["a"])
    assert expected != reference(seen)  # the adapter changes the captions: they prove it is applied
    assert [frame["text"] for frame in report["frames"]] == expected
    assert set(expected) <= set(report["captions"])  # the same captions on /caption as std_msgs/String
    for frame, sent in zip(report["frames"], frames, strict=True):
        assert frame["stamp"] == [sent["sec"], 123_456_789] and frame["frame_id"] == sent["frame_id"]
        assert frame["values"]["adapter"] == adapters["a"] and float(frame["values"]["latency_s"]) > 0


def test_a_reliable_camera_is_heard_and_ros2_topic_echo_shows_the_caption(ros_env, launched, photos, reference,
                                                                          adapters):
    param(ros_env, "set", NODE, "max_rate_hz", "0")
    echo = subprocess.Popen(["ros2", "topic", "echo", "--once", "/caption"], env=ros_env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    time.sleep(2.0)  # the echo's subscription is discovered
    frames, seen = frames_of(photos[:1], "rgb8", start=50, reliable=True)
    report = send(ros_env, launched.folder, frames)
    (expected,) = reference(seen, adapters["a"])
    assert report["frames"][0]["text"] == expected
    assert echo.communicate(timeout=30)[0].strip() == f"data: {expected}\n---".strip()


def test_diagnostics_once_a_second_ok_then_warn_after_undecodable_frames(ros_env, launched, photos):
    param(ros_env, "set", NODE, "max_rate_hz", "0")
    good, _ = frames_of(photos[:1], start=100, stamp_now=True)  # captions of old stamps would lag: WARN
    report = send(ros_env, launched.folder, good, diagnostics_s=2.5)
    ours = [d for d in report["diagnostics"] if d["name"] == "blip_captioner: captioning"]
    assert len(ours) >= 2 and all(d["level"] in (0, 1, 2) for d in ours)
    assert ours[-1]["level"] == 0 and ours[-1]["message"].startswith("captioning at ")
    assert ours[-1]["values"]["decoder"] == "fast static-cache (eager), cpu, float32, quantize none"
    gaps = [b["t"] - a["t"] for a, b in zip(ours, ours[1:], strict=False)]
    assert all(0.6 < gap < 1.4 for gap in gaps), gaps

    bad = [dict(image_frame(photos[0], "rgb8", sec=200 + i, nanosec=0, frame_id="bad")[0], encoding="foo16",
                expect=False, repeat=2) for i in range(3)]
    mixed = [frame for i in range(3) for frame in (bad[i], frames_of(photos[1:2], start=300 + i, stamp_now=True)[0][0])]
    report = send(ros_env, launched.folder, mixed, diagnostics_s=1.5)
    levels = [d["level"] for d in report["diagnostics"] if d["name"] == "blip_captioner: captioning"]
    warned = [d for d in report["diagnostics"] if d["level"] == 1 and "frames not decodable" in d["message"]]
    assert warned and set(levels) <= {0, 1, 2}, report["diagnostics"]
    assert int(warned[-1]["values"]["decode_errors"]) >= 2
    assert f"{TOPIC}: skipped a frame that cannot be decoded" in launched.output()
    assert "foo16" in launched.output()


def test_run_time_parameters_through_ros2_param(ros_env, launched, photos, reference, adapters, tmp_path,
                                                tiny_model_dir):
    frames, seen = frames_of(photos[:2], start=400)

    def caption(start: int) -> list[str]:
        report = send(ros_env, launched.folder, frames_of(photos[:2], start=start)[0])
        return [frame["text"] for frame in report["frames"]]

    assert param(ros_env, "set", NODE, "max_rate_hz", "0") == "Set parameter successful"
    assert param(ros_env, "set", NODE, "adapter", adapters["b"]) == "Set parameter successful"
    assert caption(400) == reference(seen, adapters["b"]) != reference(seen, adapters["a"])

    missing = str(tmp_path / "missing.safetensors")
    refused = param(ros_env, "set", NODE, "adapter", missing)
    assert refused.startswith(f"Setting parameter failed: adapter '{missing}' not loaded, kept '{adapters['b']}'")
    assert param(ros_env, "get", NODE, "adapter") == f"String value is: {adapters['b']}"
    assert caption(410) == reference(seen, adapters["b"])

    assert param(ros_env, "set", NODE, "adapter", "''") == "Set parameter successful"  # clearing it on Humble
    assert param(ros_env, "get", NODE, "adapter") == "String value is:"
    assert caption(420) == reference(seen)

    assert param(ros_env, "set", NODE, "prompt", "a picture of") == "Set parameter successful"
    assert param(ros_env, "set", NODE, "num_beams", "2") == "Set parameter successful"
    assert caption(430) == reference(seen, prompt="a picture of", num_beams=2)

    assert param(ros_env, "set", NODE, "max_rate_hz", "2.5") == "Set parameter successful"
    assert param(ros_env, "get", NODE, "max_rate_hz") == "Double value is: 2.5"
    streamed = probe(ros_env, dict(topic=TOPIC, stream=dict(fps=20, seconds=3.0, width=96, height=72)),
                     launched.folder)
    assert streamed["sent"] >= 50 and 5 <= len(streamed["ages"]) <= 2.5 * 3.0 + 2  # 60 frames, ~8 captions
    refused = params_at_once(
        ros_env, ("set", NODE, "max_rate_hz", "fast"), ("set", NODE, "max_rate_hz", "-1"),
        ("set", NODE, "max_rate_hz", "-1.0"), ("set", NODE, "num_beams", "17"), ("set", NODE, "model", "other/model"),
        ("describe", NODE, "max_rate_hz", "model"))
    assert refused[:5] == [
        "Setting parameter failed: max_rate_hz must be a number, got 'fast'",
        "Setting parameter failed: max_rate_hz must be from 0.0 to 1000.0, got -1",
        "Setting parameter failed: Parameter max_rate_hz out of range Min: 0.0, Max: 1000.0, value: -1.0",
        "Setting parameter failed: Parameter num_beams out of range. Min: 1, Max: 16, value: 17",
        "Setting parameter failed: Trying to set a read-only parameter: model."]
    described = refused[5]
    for line in ("Min value: 0.0", "Max value: 1000.0",
                 "Additional constraints: a number from 0 to 1000 (integer or float)"):
        assert line in described.split("Parameter name: model")[0]
    assert "Read only: true" in described.split("Parameter name: model")[1]
    assert params_at_once(ros_env, ("get", NODE, "max_rate_hz"), ("get", NODE, "model"), ("get", NODE, "num_beams")) \
        == ["Double value is: 2.5", f"String value is: {tiny_model_dir}", "Integer value is: 2"]

    assert params_at_once(ros_env, ("set", NODE, "prompt", "''"), ("set", NODE, "num_beams", "1"),
                          ("set", NODE, "adapter", adapters["a"]), ("set", NODE, "max_rate_hz", "0")) == \
        ["Set parameter successful"] * 4
    assert caption(440) == reference(seen, adapters["a"])
    assert launched.running and "Traceback" not in launched.output()


def test_ctrl_c_ends_the_launch_cleanly(launched):
    assert launched.stop() == 0
    output = launched.output()
    assert "process has finished cleanly" in output and "Traceback" not in output, output[-3000:]
