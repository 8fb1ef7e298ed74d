"""The blip_captioner node on tests/fake_rclpy: parameters, QoS, newest-frame captioning, run-time changes.

The fake rclpy is put on sys.path by the ``ros`` fixture only, and purged from sys.modules afterwards.
Messages are the rosbags typestore classes, so CDR bytes round-trip through the node.
"""

from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import yaml

from blip_lora_core.errors import AdapterError, BlipLoraError, ConfigError
from blip_lora_core.models.caption_settings import CaptionSettings

ROOT = Path(__file__).resolve().parents[1]
FAKE = Path(__file__).resolve().parent / "fake_rclpy"
PACKAGE = ROOT / "ros2_ws" / "src" / "blip_captioner"
ROS_MODULES = {"rclpy", "std_msgs", "sensor_msgs", "diagnostic_msgs", "rcl_interfaces", "builtin_interfaces",
               "_fake_msgs", "blip_captioner"}
FIXED = ["model", "device", "dtype", "quantize", "image_topic", "compressed", "caption_topic", "qos_reliability", "qos_depth"]


def _purge() -> None:
    for name in list(sys.modules):
        if name.split(".")[0] in ROS_MODULES:
            del sys.modules[name]


def _fake_captioner_class():
    """A Captioner stand-in whose captions spell out its settings and the image it saw."""

    class FakeCaptioner:
        loads: list[tuple[str, dict]] = []
        fail: str | None = None

        def __init__(self, model: str, settings, adapter) -> None:
            self.name, self.prompt = model, settings.prompt
            self.max_new_tokens, self.num_beams = settings.max_new_tokens, settings.num_beams
            self.adapter, self.merged = adapter, settings.merge
            self.adapter_calls: list[tuple] = []
            self.images: list[np.ndarray] = []
            self.model = SimpleNamespace(device="cpu")

        @classmethod
        def from_pretrained(cls, model: str, settings, adapter=None):
            if cls.fail:
                raise BlipLoraError(cls.fail)
            cls.loads.append((model, settings, adapter))
            return cls(model, settings, adapter)

        def describe(self) -> str:
            return f"fake, beams {self.num_beams}"

        def set_adapter(self, path, merge=True) -> None:
            self.adapter_calls.append((path, merge))
            if path and "missing" in path:
                raise AdapterError(f"adapter file {path} does not exist")
            self.adapter, self.merged = path, merge

        def caption(self, images) -> list[str]:
            self.images.extend(images)
            return [f"{self.prompt + ': ' if self.prompt else ''}mean {int(np.mean(image))} "
                    f"tokens {self.max_new_tokens} beams {self.num_beams} adapter {self.adapter} "
                    f"merged {self.merged}" for image in images]

    return FakeCaptioner


@pytest.fixture()
def ros(monkeypatch):
    """Modules from the fake rclpy and the package; Captioner replaced by a counting fake."""
    _purge()
    monkeypatch.syspath_prepend(str(FAKE))
    monkeypatch.syspath_prepend(str(PACKAGE))
    ns = SimpleNamespace(**{name: importlib.import_module(module) for name, module in [
        ("rclpy", "rclpy"), ("node", "blip_captioner.node"), ("params", "blip_captioner.params"),
        ("Parameter", "rclpy.parameter"), ("qos", "rclpy.qos"), ("logging", "rclpy.logging"),
        ("sensor", "sensor_msgs.msg"), ("std", "std_msgs.msg"), ("fake_msgs", "_fake_msgs")]})
    assert ns.rclpy.__file__.startswith(str(FAKE))
    ns.Parameter = ns.Parameter.Parameter
    ns.Captioner = _fake_captioner_class()
    monkeypatch.setattr(ns.params, "Captioner", ns.Captioner)
    ns.logging.RECORDS.clear()
    yield ns
    ns.rclpy.SPIN_HOOKS.clear()
    ns.rclpy.try_shutdown()
    _purge()


@pytest.fixture()
def make_node(ros):
    """make_node(stopped=True, **overrides) -> a started CaptionerNode; destroyed after the test."""
    ros.rclpy.init()
    nodes = []

    def make(stopped: bool = False, **overrides):
        params = [ros.Parameter(name, value=value) for name, value in overrides.items()]
        node = ros.node.CaptionerNode(parameter_overrides=params)
        if stopped:
            node._pipeline.stop()
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        node.destroy_node()


def camera(ros, topic="/camera/image_raw", msg_type=None, reliable=False):
    """A publisher node standing in for a camera driver."""
    qos = ros.qos.QoSProfile(depth=10, reliability=ros.qos.ReliabilityPolicy.RELIABLE if reliable
                             else ros.qos.ReliabilityPolicy.BEST_EFFORT)
    return ros.rclpy.node.Node("camera").create_publisher(msg_type or ros.sensor.Image, topic, qos)


def image_msg(ros, value: int, *, sec: int = 1, width: int = 4, height: int = 2, encoding: str = "rgb8"):
    msg = ros.sensor.Image(height=height, width=width, encoding=encoding, step=width * 3,
                           data=np.full(height * width * 3, value, np.uint8))
    msg.header.stamp.sec = sec
    return msg


def listener(ros, topic: str, msg_type):
    received = []
    ros.rclpy.node.Node("listener").create_subscription(msg_type, topic, received.append, 10)
    return received


def wait_until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.002)


def set_param(ros, node, name, value):
    return node.set_parameters([ros.Parameter(name, value=value)])[0]


# -- parameters --------------------------------------------------------------------------------------------


def test_every_parameter_is_declared_with_its_default_and_descriptor(ros, make_node):
    node = make_node()
    for spec in ros.params.PARAMS:
        assert node.get_parameter(spec.name).value == spec.default
        desc = node.describe_parameter(spec.name)
        assert desc.description == spec.description
        assert desc.read_only is (spec.name in FIXED)
    assert sorted(ros.params.RUNTIME) == ["adapter", "max_new_tokens", "max_rate_hz", "merge_adapter",
                                          "num_beams", "prompt", "publish_on_change_only"]
    assert sorted(FIXED + list(ros.params.RUNTIME)) == sorted(spec.name for spec in ros.params.PARAMS)
    tokens = node.describe_parameter("max_new_tokens").integer_range[0]
    assert (tokens.from_value, tokens.to_value) == (1, 512)
    assert node.describe_parameter("max_rate_hz").floating_point_range[0].to_value == 1000.0
    assert node.describe_parameter("qos_reliability").additional_constraints == "one of: best_effort, reliable"


def test_yaml_holds_every_parameter_with_the_node_defaults(ros):
    config = yaml.safe_load((ROOT / "config" / "captioner.yaml").read_text())
    values = config["blip_captioner"]["ros__parameters"]
    assert values == {spec.name: spec.default for spec in ros.params.PARAMS}
    assert all(type(values[spec.name]) is type(spec.default) for spec in ros.params.PARAMS)


def test_load_parameters_reach_the_captioner(ros, make_node):
    make_node(model="/models/tiny", adapter="/a/x.safetensors", prompt="a photo of", device="cpu",
              dtype="fp32", merge_adapter=False, max_new_tokens=12, num_beams=3)
    assert ros.Captioner.loads == [("/models/tiny", CaptionSettings(
        prompt="a photo of", max_new_tokens=12, num_beams=3, device="cpu", dtype="fp32", merge=False,
        batch_size=1), "/a/x.safetensors")]
    make_node()
    assert ros.Captioner.loads[1] == ("Salesforce/blip-image-captioning-large", CaptionSettings(batch_size=1), None)
    with pytest.raises(ConfigError, match="quantize int8 runs on the CPU only"):
        make_node(device="cuda", quantize="int8")


def test_default_qos_is_best_effort_keep_last_one(ros, make_node):
    node = make_node()
    (sub,) = node.subscriptions
    assert (sub.topic_name, sub.msg_type.__msgtype__) == ("/camera/image_raw", "sensor_msgs/msg/Image")
    assert sub.qos_profile == ros.qos.QoSProfile(history=ros.qos.HistoryPolicy.KEEP_LAST, depth=1,
                                                 reliability=ros.qos.ReliabilityPolicy.BEST_EFFORT,
                                                 durability=ros.qos.DurabilityPolicy.VOLATILE)
    topics = {pub.topic_name: pub.msg_type.__msgtype__ for pub in node.publishers}
    assert topics == {"/caption": "std_msgs/msg/String", "/diagnostics": "diagnostic_msgs/msg/DiagnosticArray"}


def test_best_effort_subscription_hears_reliable_and_best_effort_cameras(ros, make_node):
    node = make_node(stopped=True)
    camera(ros, reliable=True).publish(image_msg(ros, 1))
    camera(ros, reliable=False).publish(image_msg(ros, 2))
    assert node._pipeline.stats().frames_received == 2


def test_qos_and_topics_can_be_overridden(ros, make_node):
    node = make_node(stopped=True, qos_reliability="reliable", qos_depth=5, image_topic="/cam/color",
                     caption_topic="/robot/caption")
    (sub,) = node.subscriptions
    assert (sub.topic_name, sub.qos_profile.reliability, sub.qos_profile.depth) == (
        "/cam/color", ros.qos.ReliabilityPolicy.RELIABLE, 5)
    assert "/robot/caption" in {pub.topic_name for pub in node.publishers}
    camera(ros, "/cam/color", reliable=False).publish(image_msg(ros, 1))
    assert node._pipeline.stats().frames_received == 0  # a reliable reader does not match best-effort
    camera(ros, "/cam/color", reliable=True).publish(image_msg(ros, 1))
    assert node._pipeline.stats().frames_received == 1


def test_bad_parameter_values_are_refused_at_start(ros, make_node):
    from blip_lora_core.errors import ConfigError

    with pytest.raises(ConfigError, match="qos_reliability must be one of best_effort, reliable, got 'fast'"):
        make_node(qos_reliability="fast")
    with pytest.raises(ros.rclpy.exceptions.InvalidParameterValueException, match="out of range"):
        make_node(qos_depth=0)
    assert ros.Captioner.loads == []


# -- frames and captions -----------------------------------------------------------------------------------


def test_callback_keeps_only_the_newest_frame(ros, make_node):
    node = make_node(stopped=True, max_rate_hz=0.0)
    captions = listener(ros, "/caption", ros.std.String)
    cam = camera(ros)
    for value in range(10, 60, 10):
        cam.publish(image_msg(ros, value, sec=value))
    captioner = node._live.captioner
    assert captioner.images == []  # the callback neither decodes nor captions
    stats = node._pipeline.stats()
    assert (stats.frames_received, stats.frames_dropped) == (5, 4)
    node._pipeline.step()
    assert len(captioner.images) == 1 and int(captioner.images[0].mean()) == 50
    assert [msg.data for msg in captions] == ["mean 50 tokens 30 beams 1 adapter None merged True"]
    assert node._pipeline.step().value == "idle"


def test_worker_publishes_string_captions_on_the_caption_topic(ros, make_node):
    make_node(caption_topic="/robot/caption", max_rate_hz=0.0)
    captions = listener(ros, "/robot/caption", ros.std.String)
    camera(ros).publish(image_msg(ros, 77))
    wait_until(lambda: len(captions) == 1)
    assert captions[0].__msgtype__ == "std_msgs/msg/String"
    assert captions[0].data == "mean 77 tokens 30 beams 1 adapter None merged True"
    data = ros.fake_msgs.TYPESTORE.serialize_cdr(captions[0], "std_msgs/msg/String")
    assert ros.fake_msgs.TYPESTORE.deserialize_cdr(data, "std_msgs/msg/String").data == captions[0].data


def test_cdr_image_with_padded_rows_is_decoded_exactly(ros, make_node):
    node = make_node(stopped=True)
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (3, 5, 3), dtype=np.uint8)
    step = 5 * 3 + 4  # 4 bytes of padding after every row
    rows = np.zeros((3, step), np.uint8)
    rows[:, :15] = rgb[..., ::-1].reshape(3, 15)  # bgr8
    rows[:, 15:] = 0xEE
    msg = ros.sensor.Image(height=3, width=5, encoding="bgr8", step=step, data=rows.reshape(-1))
    msg.header.stamp.sec, msg.header.frame_id = 42, "camera_optical"
    store = ros.fake_msgs.TYPESTORE
    wire = store.deserialize_cdr(store.serialize_cdr(msg, "sensor_msgs/msg/Image"), "sensor_msgs/msg/Image")
    camera(ros).publish(wire)
    node._pipeline.step()
    np.testing.assert_array_equal(node._live.captioner.images[0], rgb)


def test_compressed_png_frames_via_cdr(ros, make_node):
    node = make_node(stopped=True, compressed=True, image_topic="/camera/image_raw/compressed")
    (sub,) = node.subscriptions
    assert sub.msg_type.__msgtype__ == "sensor_msgs/msg/CompressedImage"
    rgb = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    ok, png = cv2.imencode(".png", rgb[..., ::-1])
    msg = ros.sensor.CompressedImage(format="rgb8; png compressed bgr8", data=png.reshape(-1))
    store = ros.fake_msgs.TYPESTORE
    kind = "sensor_msgs/msg/CompressedImage"
    camera(ros, "/camera/image_raw/compressed", ros.sensor.CompressedImage).publish(
        store.deserialize_cdr(store.serialize_cdr(msg, kind), kind))
    node._pipeline.step()
    np.testing.assert_array_equal(node._live.captioner.images[0], rgb)


def test_bad_frames_are_skipped_with_a_warning_naming_topic_and_encoding(ros, make_node):
    node = make_node(stopped=True)
    cam = camera(ros)
    cam.publish(image_msg(ros, 1, encoding="foo16"))
    assert node._pipeline.step().value == "decode_error"
    cam.publish(image_msg(ros, 9))
    assert node._pipeline.step().value == "published"
    warnings = [msg for name, level, msg in ros.logging.RECORDS if level == "WARN"]
    assert len(warnings) == 1
    assert warnings[0].startswith("/camera/image_raw: skipped a frame that cannot be decoded (4x2 foo16)")


# -- run-time parameter changes ----------------------------------------------------------------------------


def test_runtime_changes_take_effect_without_reloading(ros, make_node):
    node = make_node(stopped=True, max_rate_hz=0.0)
    captions = listener(ros, "/caption", ros.std.String)
    cam = camera(ros)

    def caption_now(value: int) -> str:
        cam.publish(image_msg(ros, value))
        node._pipeline.step()
        return captions[-1].data

    assert caption_now(5) == "mean 5 tokens 30 beams 1 adapter None merged True"
    for name, value in [("adapter", "/adapters/kitchen.safetensors"), ("prompt", "a photo of"),
                        ("max_new_tokens", 12), ("num_beams", 3), ("merge_adapter", False)]:
        assert set_param(ros, node, name, value).successful
        assert node.get_parameter(name).value == value
    assert caption_now(6) == "a photo of: mean 6 tokens 12 beams 3 adapter /adapters/kitchen.safetensors merged False"
    assert node._live.captioner.adapter_calls == [("/adapters/kitchen.safetensors", True),
                                                  ("/adapters/kitchen.safetensors", False)]
    assert set_param(ros, node, "adapter", "").successful and set_param(ros, node, "prompt", "").successful
    assert caption_now(7) == "mean 7 tokens 12 beams 3 adapter None merged False"
    assert len(ros.Captioner.loads) == 1  # never reloaded


def test_rate_and_change_filter_change_at_run_time(ros, make_node):
    node = make_node(stopped=True)
    assert node._pipeline.max_rate_hz == 2.0 and node._pipeline.publish_on_change_only is False
    assert set_param(ros, node, "max_rate_hz", 5.0).successful
    assert set_param(ros, node, "publish_on_change_only", True).successful
    assert node._pipeline.max_rate_hz == 5.0 and node._pipeline.publish_on_change_only is True
    assert set_param(ros, node, "max_rate_hz", 0.0).successful
    captions = listener(ros, "/caption", ros.std.String)
    cam = camera(ros)
    for value in (3, 3, 4):
        cam.publish(image_msg(ros, value))
        node._pipeline.step()
    assert [msg.data.split(" tokens")[0] for msg in captions] == ["mean 3", "mean 4"]


@pytest.mark.parametrize("name, value", [("model", "other/model"), ("device", "cuda:1"), ("dtype", "fp16"),
                                         ("image_topic", "/other"), ("compressed", True),
                                         ("caption_topic", "/other"), ("qos_reliability", "reliable"),
                                         ("qos_depth", 3)])
def test_parameters_that_need_a_restart_are_refused(ros, make_node, name, value):
    node = make_node(stopped=True)
    before = node.get_parameter(name).value
    result = set_param(ros, node, name, value)
    assert (result.successful, result.reason) == (False, f"Trying to set a read-only parameter: {name}.")
    assert node.get_parameter(name).value == before
    reason = ros.params.apply_changes({name: value, "prompt": "x"}, node._live, node._pipeline)
    assert reason == f"{name} cannot change while the node runs: restart the node to change it"
    assert node._live.captioner.prompt is None  # all or nothing
    assert len(ros.Captioner.loads) == 1


def test_a_missing_adapter_is_refused_and_the_previous_one_kept(ros, make_node):
    node = make_node(stopped=True, adapter="/adapters/good.safetensors")
    result = set_param(ros, node, "adapter", "/adapters/missing.safetensors")
    assert not result.successful
    assert result.reason == ("adapter '/adapters/missing.safetensors' not loaded, kept "
                             "'/adapters/good.safetensors': adapter file /adapters/missing.safetensors does not exist")
    assert node.get_parameter("adapter").value == "/adapters/good.safetensors"
    assert node._live.captioner.adapter == "/adapters/good.safetensors"
    assert node._live.captioner.adapter_calls[-1] == ("/adapters/good.safetensors", True)
    assert any("parameter change refused" in msg for _, level, msg in ros.logging.RECORDS if level == "WARN")


@pytest.mark.parametrize("name, value, reason", [
    ("max_new_tokens", 0, "Parameter max_new_tokens out of range. Min: 1, Max: 512, value: 0"),
    ("num_beams", 17, "Parameter num_beams out of range. Min: 1, Max: 16, value: 17"),
    ("max_rate_hz", -1.0, "Parameter max_rate_hz out of range. Min: 0.0, Max: 1000.0, value: -1.0"),
    ("max_rate_hz", 5, "Wrong parameter type, expected 'Type.DOUBLE' got 'Type.INTEGER'"),
])
def test_out_of_range_and_wrongly_typed_values_are_refused(ros, make_node, name, value, reason):
    node = make_node(stopped=True)
    result = set_param(ros, node, name, value)
    assert (result.successful, result.reason) == (False, reason)


# -- diagnostics -------------------------------------------------------------------------------------------


def test_diagnostics_once_a_second(ros, make_node):
    node = make_node(stopped=True, max_rate_hz=0.0)
    (timer,) = node.timers
    assert timer.timer_period_ns == 1_000_000_000
    diagnostics = listener(ros, "/diagnostics", ros.node.DiagnosticArray)
    timer.callback()
    status = diagnostics[-1].status[0]
    assert (status.level, status.message, status.name, status.hardware_id) == (
        1, "no images received yet", "blip_captioner: captioning", "cpu")
    camera(ros).publish(image_msg(ros, 1, sec=0))  # unstamped: the age counts from arrival
    node._pipeline.step()
    timer.callback()
    status = diagnostics[-1].status[0]
    values = {kv.key: kv.value for kv in status.values}
    assert status.level == 0 and status.message.startswith("captioning at ")
    assert (values["frames_received"], values["captions_published"], values["image_topic"]) == (
        "1", "1", "/camera/image_raw")
    assert values["decoder"] == "fake, beams 1"  # Captioner.describe()
    assert 0.0 <= float(values["last_caption_age_s"]) < 1.0
    assert diagnostics[-1].header.stamp.sec > 1_600_000_000
    store, kind = ros.fake_msgs.TYPESTORE, "diagnostic_msgs/msg/DiagnosticArray"
    again = store.deserialize_cdr(store.serialize_cdr(diagnostics[-1], kind), kind)
    assert again.status[0].values[0].key == "frames_received"


# -- main() ------------------------------------------------------------------------------------------------


def test_model_load_failure_exits_non_zero_with_a_clear_message(ros):
    ros.Captioner.fail = "cannot load BLIP model 'no/such-model': repository not found"
    assert ros.node.main(["--ros-args", "-p", "model:=no/such-model"]) == 1
    fatal = [msg for _, level, msg in ros.logging.RECORDS if level == "FATAL"]
    assert fatal == ["blip_captioner cannot start: cannot load BLIP model 'no/such-model': repository not found"]
    assert not ros.rclpy.ok()


def test_wrongly_typed_command_line_parameter_exits_non_zero(ros):
    assert ros.node.main(["--ros-args", "-p", "max_rate_hz:=2"]) == 1
    (fatal,) = [msg for _, level, msg in ros.logging.RECORDS if level == "FATAL"]
    assert "max_rate_hz" in fatal and "expecting type 'DOUBLE'" in fatal
    assert ros.Captioner.loads == []


@pytest.mark.parametrize("how", ["external_shutdown", "ctrl_c"])
def test_main_spins_until_shutdown_and_cleans_up(ros, how):
    seen = {}

    def hook(node):
        if "node" not in seen:
            seen["node"], seen["captions"] = node, listener(ros, "/caption", ros.std.String)
            camera(ros).publish(image_msg(ros, 3))
        elif seen["captions"]:
            if how == "ctrl_c":
                raise KeyboardInterrupt
            ros.rclpy.shutdown()

    ros.rclpy.SPIN_HOOKS.append(hook)
    assert ros.node.main(["--ros-args", "-p", "max_rate_hz:=0.0"]) == 0
    assert seen["captions"][0].data.startswith("mean 3 ")
    assert seen["node"].destroyed and not seen["node"]._pipeline.running
    assert not ros.rclpy.ok()


# -- with a real (tiny) BLIP -------------------------------------------------------------------------------


def test_node_captions_with_a_real_tiny_blip(ros, make_node, tiny_model_dir, monkeypatch):
    from blip_lora_core.models.captioning import Captioner

    loads = []

    class CountingCaptioner(Captioner):
        @classmethod
        def from_pretrained(cls, model, settings, **kwargs):
            loads.append(model)
            return Captioner.from_pretrained(model, settings, **kwargs)

    monkeypatch.setattr(ros.params, "Captioner", CountingCaptioner)
    node = make_node(model=str(tiny_model_dir), device="cpu", max_new_tokens=5, max_rate_hz=0.0)
    captions = listener(ros, "/caption", ros.std.String)
    cam = camera(ros)
    cam.publish(image_msg(ros, 120, width=32, height=24))
    wait_until(lambda: len(captions) == 1, timeout=30.0)
    assert isinstance(captions[0].data, str) and node._pipeline.stats().inference_errors == 0
    started = [msg for _, level, msg in ros.logging.RECORDS if level == "INFO" and "captioning" in msg]
    assert started and started[0].endswith("; fast static-cache (eager), cpu, float32, quantize none")
    assert set_param(ros, node, "max_new_tokens", 3).successful
    assert set_param(ros, node, "prompt", "a picture of").successful
    assert node._live.captioner.max_new_tokens == 3 and node._live.captioner.prompt == "a picture of"
    cam.publish(image_msg(ros, 30, width=32, height=24))
    wait_until(lambda: len(captions) == 2, timeout=30.0)
    assert len(captions[1].data.split()) <= 3
    assert loads == [str(tiny_model_dir)]


def test_the_fake_rclpy_does_not_leak():
    """Runs without the ros fixture: nothing of the fake is importable or imported."""
    assert str(FAKE) not in sys.path and str(PACKAGE) not in sys.path
    assert not [name for name in sys.modules if name.split(".")[0] in ROS_MODULES]
