"""The blip_captioner node on a real ROS 2: one `ros2 launch` shared by the checks of this module.

Launched in namespace cam1 with a params file (a model that does not exist, adapter a, `max_rate_hz: 2` as a
YAML integer) and launch arguments (model: the tiny BLIP, device, image_topic, foxglove_annotations). A probe
process (bench/ros_probe.py) publishes camera messages made from seed_blocks photos and listens to the
captions and /diagnostics; `ros2 param` and `ros2 topic` run as their own processes. Every message crosses
real DDS with real rosidl types, blip_captioner_msgs/Caption included.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from ros_env import launch, ros2, ros2_at_once, wait_until, write_params
from ros_frames import bridged, image_frame, photo

from bench.ros2_stack import probe

pytestmark = [pytest.mark.ros, pytest.mark.slow, pytest.mark.xdist_group("ros_node")]
TOPIC = "/test_cam/image_raw"
NODE = "/cam1/blip_captioner"
CAPTION = "/cam1/caption"
PHOTOS = ["image_train/blue_0001.jpg", "image_train/red_0001.jpg", "image_train/green_0001.jpg"]


@pytest.fixture(scope="module")
def photos():
    from conftest import SEED_BLOCKS

    if not (SEED_BLOCKS / "annotations.jsonl").is_file():
        pytest.fail(f"seed_blocks dataset not found at {SEED_BLOCKS}")
    return [photo(SEED_BLOCKS / name) for name in PHOTOS]


@pytest.fixture(scope="module")
def launched(ros_env, tiny_model_dir, adapters, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ros_node")
    params = write_params(folder / "params.yaml", model="/no/such/model/in/the/yaml", adapter=adapters["a"],
                          max_rate_hz=2, max_new_tokens=8)
    node = launch(ros_env, folder, f"params_file:={params}", "namespace:=cam1", f"model:={tiny_model_dir}",
                  "device:=cpu", f"image_topic:={TOPIC}", "foxglove_annotations:=true")
    node.folder = folder
    node.wait_for("[cam1.blip_captioner]: captioning")
    yield node
    node.stop()


def send(env, folder, frames, **spec) -> dict:
    return probe(env, dict(topic=TOPIC, caption_topic=CAPTION, frames=frames, **spec), folder)


def frames_of(images, encoding="rgb8", start=0, **kw):
    built = [image_frame(rgb, encoding, sec=1000 + start + i, nanosec=123_456_789, frame_id=f"cam_{start + i}", **kw)
             for i, rgb in enumerate(images)]
    return [frame for frame, _ in built], [seen for _, seen in built]


def test_launch_arguments_resolved_names_and_types(ros_env, launched, tiny_model_dir):
    output = launched.output()
    # the launch argument model:= wins over the YAML; relative topics resolved in the namespace or remapped
    assert f"captioning {TOPIC} -> {CAPTION} with {tiny_model_dir} on cpu" in output
    assert "at most 2 Hz; fast static-cache (eager), cpu, float32, quantize none" in output
    assert "Loading weights" not in output and "it/s]" not in output  # no progress bar in the launch log
    assert ros2_at_once(ros_env, ("param", "get", NODE, "max_rate_hz"), ("param", "get", NODE, "model"),
                        ("lifecycle", "get", NODE)) == \
        ["Double value is: 2.0", f"String value is: {tiny_model_dir}", "active [3]"]
    topics = ros2(ros_env, "topic", "list", "-t")
    for line in [f"{TOPIC} [sensor_msgs/msg/Image]", f"{CAPTION} [std_msgs/msg/String]",
                 f"{CAPTION}/stamped [blip_captioner_msgs/msg/Caption]",
                 f"{CAPTION}/annotations [foxglove_msgs/msg/ImageAnnotations]",
                 "/diagnostics [diagnostic_msgs/msg/DiagnosticArray]"]:
        assert line in topics
    assert not [line for line in topics.splitlines() if line.startswith(("/caption ", "/caption/", "/image "))]


@pytest.mark.parametrize("encoding, pad", [("rgb8", 6), ("bgr8", 0), ("mono8", 3), ("yuv422_yuy2", 0)])
def test_images_in_every_encoding_get_the_adapters_captions(ros_env, launched, photos, reference, adapters,
                                                           tiny_model_dir, encoding, pad):
    assert ros2(ros_env, "param", "set", NODE, "max_rate_hz", "0.0") == "Set parameter successful"
    frames, known = frames_of(photos, encoding, pad=pad)
    report = send(ros_env, launched.folder, frames, bridge=True, annotations=True)
    seen = [bridged(frame) for frame in report["frames"]]
    for image, source in zip(seen, known, strict=True):
        if source is not None:
            np.testing.assert_array_equal(image, source)  # cv_bridge agrees with the source array
    expected = reference(seen, adapters["a"])
    assert expected != reference(seen)  # the adapter changes the captions: they prove it is applied
    assert [frame["text"] for frame in report["frames"]] == expected
    assert set(expected) <= set(report["captions"])  # the same captions on caption as std_msgs/String
    digest = hashlib.sha256(Path(adapters["a"]).read_bytes()).hexdigest()[:12]
    for frame, sent in zip(report["frames"], frames, strict=True):
        assert frame["stamp"] == [sent["sec"], 123_456_789] and frame["frame_id"] == sent["frame_id"]
        assert (frame["adapter_name"], frame["adapter_hash"], frame["model"]) == ("a", digest, str(tiny_model_dir))
        assert 0 < frame["confidence"] <= 1 and frame["inference_time"] > 0 and frame["prompt"] == ""
    annotated = {(a["stamp"][0], a["text"]) for a in report["annotations"]}
    assert {(sent["sec"], text) for sent, text in zip(frames, expected, strict=True)} <= annotated


def test_ros2_topic_echo_reaches_the_caption_text(ros_env, launched, photos, reference, adapters):
    ros2(ros_env, "param", "set", NODE, "max_rate_hz", "0.0")
    echo = subprocess.Popen(["ros2", "topic", "echo", "--once", f"{CAPTION}/stamped", "--field", "text"],
                            env=ros_env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    wait_until(lambda: "Subscription count: 1" in ros2(ros_env, "topic", "info", f"{CAPTION}/stamped"),
               "ros2 topic echo subscribed")
    frames, seen = frames_of(photos[:1], "rgb8", start=50, reliable=True)
    report = send(ros_env, launched.folder, frames)
    (expected,) = reference(seen, adapters["a"])
    assert report["frames"][0]["text"] == expected
    assert echo.communicate(timeout=30)[0].strip() == f"{expected}\n---"


def test_parameters_keep_their_word(ros_env, launched, photos, reference, adapters, tmp_path):
    # max_new_tokens against the tiny model's 40 positions: the start token and the prompt take their share
    refused = ros2(ros_env, "param", "set", NODE, "max_new_tokens", "512")
    assert refused == ("Setting parameter failed: max_new_tokens 512 is more than the model's text positions "
                       "leave after the start token: at most 39")
    assert ros2(ros_env, "param", "set", NODE, "max_new_tokens", "39") == "Set parameter successful"
    assert ros2(ros_env, "param", "set", NODE, "prompt", "a picture of").startswith(
        "Setting parameter failed: max_new_tokens 39 is more than the model's text positions leave after the "
        "prompt 'a picture of' and the start token: at most")
    # a float stays a float: an integer is refused by type, the value stays a double
    assert ros2(ros_env, "param", "set", NODE, "max_rate_hz", "0") == \
        "Setting parameter failed: Wrong parameter type, expected 'Type.DOUBLE' got 'Type.INTEGER'"
    assert ros2(ros_env, "param", "set", NODE, "max_rate_hz", "0.0") == "Set parameter successful"
    assert ros2(ros_env, "param", "get", NODE, "max_rate_hz") == "Double value is: 0.0"
    # dump, change, load: the dumped values come back
    dump = tmp_path / "dump.yaml"
    dump.write_text(ros2(ros_env, "param", "dump", NODE))
    assert yaml.safe_load(dump.read_text())[NODE]["ros__parameters"]["max_new_tokens"] == 39
    assert ros2(ros_env, "param", "set", NODE, "max_new_tokens", "8") == "Set parameter successful"
    loaded = ros2(ros_env, "param", "load", NODE, str(dump))
    for name in ("adapter", "prompt", "max_new_tokens", "max_rate_hz", "num_beams"):
        assert f"Set parameter {name} successful" in loaded, loaded
    assert ros2(ros_env, "param", "get", NODE, "max_new_tokens") == "Integer value is: 39"
    assert ros2(ros_env, "param", "set", NODE, "max_new_tokens", "8") == "Set parameter successful"

    frames, seen = frames_of(photos[:2], start=400)

    def caption(start: int) -> list[str]:
        return [frame["text"] for frame in send(ros_env, launched.folder, frames_of(photos[:2], start=start)[0])
                ["frames"]]

    assert ros2(ros_env, "param", "set", NODE, "adapter", adapters["b"]) == "Set parameter successful"
    assert caption(400) == reference(seen, adapters["b"]) != reference(seen, adapters["a"])
    missing = str(tmp_path / "missing.safetensors")
    assert ros2(ros_env, "param", "set", NODE, "adapter", missing).startswith(
        f"Setting parameter failed: adapter '{missing}' not loaded, kept '{adapters['b']}'")
    assert ros2(ros_env, "param", "get", NODE, "adapter") == f"String value is: {adapters['b']}"
    assert ros2(ros_env, "param", "set", NODE, "adapter", "none") == "Set parameter successful"
    assert caption(420) == reference(seen)
    assert ros2_at_once(ros_env, ("param", "set", NODE, "prompt", "a picture of"),
                        ("param", "set", NODE, "num_beams", "2")) == ["Set parameter successful"] * 2
    assert caption(430) == reference(seen, prompt="a picture of", num_beams=2)
    assert ros2_at_once(ros_env, ("param", "set", NODE, "num_beams", "17"), ("param", "set", NODE, "model", "x"),
                        ("param", "set", NODE, "prompt", "none"), ("param", "set", NODE, "num_beams", "1"),
                        ("param", "set", NODE, "adapter", adapters["a"])) == [
        "Setting parameter failed: Parameter num_beams out of range. Min: 1, Max: 16, value: 17",
        "Setting parameter failed: Trying to set a read-only parameter: model."] + ["Set parameter successful"] * 3
    assert caption(440) == reference(seen, adapters["a"])
    assert launched.running and "Traceback" not in launched.output()


def test_diagnostics_name_the_node_and_warn_after_undecodable_frames(ros_env, launched, photos):
    ros2(ros_env, "param", "set", NODE, "max_rate_hz", "0.0")
    good, _ = frames_of(photos[:1], start=100, stamp_now=True)  # captions of old stamps would lag: WARN
    report = send(ros_env, launched.folder, good, diagnostics_s=2.5)
    ours = [d for d in report["diagnostics"] if d["name"] == f"{NODE}: captioning"]
    assert len(ours) >= 2 and ours[-1]["level"] == 0 and ours[-1]["message"].startswith("captioning at ")
    values = ours[-1]["values"]
    assert (values["image_topic"], values["caption_topic"], values["stamped_topic"], values["lifecycle_state"]) == \
        (TOPIC, CAPTION, f"{CAPTION}/stamped", "active")
    assert values["decoder"] == "fast static-cache (eager), cpu, float32, quantize none"
    assert values["image_qos"] == "best_effort, keep_last 5" and values["incompatible_qos_events"] == "0"

    bad = [dict(image_frame(photos[0], "rgb8", sec=200 + i, nanosec=0, frame_id="bad")[0], encoding="foo16",
                expect=False, repeat=2) for i in range(3)]
    mixed = [frame for i in range(3) for frame in (bad[i], frames_of(photos[1:2], start=300 + i, stamp_now=True)[0][0])]
    report = send(ros_env, launched.folder, mixed, diagnostics_s=1.5)
    warned = [d for d in report["diagnostics"] if d["level"] == 1 and "frames not decodable" in d["message"]]
    assert warned and int(warned[-1]["values"]["decode_errors"]) >= 2, report["diagnostics"]
    assert f"{TOPIC}: skipped a frame that cannot be decoded" in launched.output() and "foo16" in launched.output()


def test_ctrl_c_ends_the_launch_cleanly(launched):
    assert launched.stop() == 0
    output = launched.output()
    assert "process has finished cleanly" in output and "Traceback" not in output, output[-3000:]
    # the clean-up's lines reach /rosout: the context is still valid while it runs
    assert "model freed" in output and "context is invalid" not in output, output[-3000:]
