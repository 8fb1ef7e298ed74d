"""ROS 2 glue: parameters, the camera subscription, caption and diagnostics publishers.

The work happens in blip_lora_core.runtime.pipeline (newest frame only, captioned on a worker thread) and in
blip_captioner.params (what a parameter change does); this module only wires them to rclpy.

Topics: ``caption_topic`` (std_msgs/String, the caption), ``caption_topic + "/stamped"``
(diagnostic_msgs/DiagnosticArray: header = the image's header, one status whose message is the caption and
whose values are adapter, prompt and latency_s) and ``/diagnostics`` once a second.
"""

from __future__ import annotations

import signal
import sys
import time
from typing import Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.executors import ExternalShutdownException
from rclpy.logging import get_logger
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header, String

from blip_captioner.params import PARAMS, LiveCaptioner, ParamSpec, apply_changes, checked
from blip_lora_core.errors import BlipLoraError
from blip_lora_core.runtime.diagnostics import Diagnosis, Level, diagnose
from blip_lora_core.runtime.image_msgs import decode_message
from blip_lora_core.runtime.pipeline import CaptionPipeline, PipelineStats, stamp_seconds

NODE_NAME = "blip_captioner"
DIAGNOSTICS_PERIOD_S = 1.0
STAMPED_SUFFIX = "/stamped"
# diagnostic_msgs levels are ROS `byte`s: one-byte bytes in rclpy (DiagnosticStatus.WARN == b'\x01')
LEVELS: dict[Level, bytes] = {Level.OK: DiagnosticStatus.OK, Level.WARN: DiagnosticStatus.WARN,
                              Level.ERROR: DiagnosticStatus.ERROR}


def descriptor(spec: ParamSpec) -> ParameterDescriptor:
    """Description, read-only flag (parameters that need a restart), ranges and choices of one parameter.

    Float parameters are dynamically typed so that an integer (YAML ``2``, ``ros2 param set ... 0``) is
    accepted; blip_captioner.params checks their type and range.
    """
    is_float = isinstance(spec.default, float)
    desc = ParameterDescriptor(description=spec.description, read_only=not spec.runtime, dynamic_typing=is_float)
    if spec.choices:
        desc.additional_constraints = "one of: " + ", ".join(spec.choices)
    if spec.low is not None and is_float:
        desc.floating_point_range = [FloatingPointRange(from_value=spec.low, to_value=spec.high, step=0.0)]
        desc.additional_constraints = f"a number from {spec.low:g} to {spec.high:g} (integer or float)"
    elif spec.low is not None:
        desc.integer_range = [IntegerRange(from_value=int(spec.low), to_value=int(spec.high), step=1)]
    return desc


def subscription_qos(reliability: str, depth: int) -> QoSProfile:
    """Keep-last ``depth``, volatile; best_effort matches best-effort and reliable publishers alike."""
    policy = ReliabilityPolicy.RELIABLE if reliability == "reliable" else ReliabilityPolicy.BEST_EFFORT
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=policy,
                      durability=DurabilityPolicy.VOLATILE)


def diagnostic_array(diagnosis: Diagnosis, stamp: Any, hardware_id: str,
                     extra: list[tuple[str, str]]) -> DiagnosticArray:
    """One DiagnosticStatus named 'blip_captioner: captioning' with the statistics and extra pairs."""
    status = DiagnosticStatus(level=LEVELS[diagnosis.level], name=f"{NODE_NAME}: captioning",
                              message=diagnosis.message, hardware_id=hardware_id,
                              values=[KeyValue(key=k, value=v) for k, v in diagnosis.values + extra])
    array = DiagnosticArray(status=[status])
    array.header.stamp = stamp
    return array


def stamped_caption(text: str, header: Header, hardware_id: str, values: list[tuple[str, str]]) -> DiagnosticArray:
    """The caption of one image: header = the image's header; status.message = the caption."""
    status = DiagnosticStatus(level=DiagnosticStatus.OK, name=f"{NODE_NAME}: caption", message=text,
                              hardware_id=hardware_id, values=[KeyValue(key=k, value=v) for k, v in values])
    return DiagnosticArray(header=header, status=[status])


class CaptionerNode(Node):
    """Subscribes to a camera, publishes captions of the newest frame and diagnostics once a second.

    Topics and parameters are checked (publishers and the subscription created) before the model loads, so a
    bad topic name or value fails in a second, not after a model load.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        values = checked({spec.name: self.declare_parameter(spec.name, spec.default, descriptor(spec)).value
                          for spec in PARAMS})
        self._caption_pub = self.create_publisher(String, values["caption_topic"], 10)
        self._stamped_pub = self.create_publisher(DiagnosticArray, values["caption_topic"] + STAMPED_SUFFIX, 10)
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._pipeline: CaptionPipeline | None = None
        self.create_subscription(CompressedImage if values["compressed"] else Image, values["image_topic"],
                                 self._on_image, subscription_qos(values["qos_reliability"], values["qos_depth"]))
        self._live = LiveCaptioner.load(values)
        # decode -> caption -> publish run in turn on the worker thread: the header and latency of the frame
        # being captioned are kept here between those calls
        self._header, self._latency_s = Header(), 0.0
        self._pipeline = CaptionPipeline(
            self._caption, self._publish_caption, decode=self._decode, max_rate_hz=values["max_rate_hz"],
            publish_on_change_only=values["publish_on_change_only"], stamp_clock=self._ros_seconds,
            name=values["image_topic"], warn=self.get_logger().warning)
        self._previous_stats: PipelineStats | None = None
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.create_timer(DIAGNOSTICS_PERIOD_S, self._publish_diagnostics)
        self._pipeline.start()
        self.get_logger().info(f"captioning {values['image_topic']} -> {values['caption_topic']} with "
                               f"{values['model']} on {self._live.device}, adapter "
                               f"{values['adapter'] or '(none)'}, at most {values['max_rate_hz']:g} Hz; "
                               f"{self._live.describe()}")

    def _on_image(self, msg: Image | CompressedImage) -> None:
        if self._pipeline is not None:
            self._pipeline.submit(msg, stamp_seconds(msg))

    def _decode(self, msg: Image | CompressedImage) -> np.ndarray:
        self._header = msg.header
        return decode_message(msg)

    def _caption(self, image: np.ndarray) -> str:
        start = time.perf_counter()
        text = self._live.caption(image)
        self._latency_s = time.perf_counter() - start
        return text

    def _on_set_parameters(self, params: list) -> SetParametersResult:
        try:
            return self._apply({param.name: param.value for param in params})
        except Exception as error:  # noqa: BLE001 - CUDA OOM in a merge, say: refuse the change, keep running
            reason = f"{type(error).__name__}: {error}"
            self.get_logger().error(f"parameter change failed: {reason}")
            return SetParametersResult(successful=False, reason=reason)

    def _apply(self, changes: dict[str, Any]) -> SetParametersResult:
        reason = apply_changes(changes, self._live, self._pipeline)
        if reason:
            self.get_logger().warning(f"parameter change refused: {reason}")
        return SetParametersResult(successful=reason is None, reason=reason or "")

    def _publish_caption(self, text: str, stamp: float) -> None:
        self._caption_pub.publish(String(data=text))
        values = [("adapter", self._live.adapter), ("prompt", self._live.captioner.prompt or ""),
                  ("latency_s", f"{self._latency_s:.3f}")]
        self._stamped_pub.publish(stamped_caption(text, self._header, self._live.device, values))

    def _publish_diagnostics(self) -> None:
        stats = self._pipeline.stats()
        diagnosis = diagnose(stats, self._previous_stats)
        self._previous_stats = stats
        extra = [(name, str(self.get_parameter(name).value))
                 for name in ("image_topic", "caption_topic", "model", "adapter", "prompt", "max_rate_hz")]
        extra.append(("decoder", self._live.describe()))
        stamp = self.get_clock().now().to_msg()
        self._diagnostics_pub.publish(diagnostic_array(diagnosis, stamp, self._live.device, extra))

    def _ros_seconds(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def destroy_node(self) -> None:
        if self._pipeline is not None:
            self._pipeline.stop()
        super().destroy_node()


def _one_line(error: BaseException) -> str:
    """An exception as one line: rclpy's InvalidTopicNameException spans three (name, reason, a ^ marker)."""
    lines = [line.strip().rstrip(":") for line in str(error).splitlines()
             if line.strip() and set(line.strip()) != {"^"}]
    text = ": ".join(lines) or type(error).__name__
    return text if isinstance(error, BlipLoraError) else f"{type(error).__name__}: {text}"


def main(args: list[str] | None = None) -> int:
    """Spin until Ctrl-C or an external shutdown; 1 with one fatal line when the node cannot start."""
    rclpy.init(args=args)
    node = None
    try:
        node = CaptionerNode()
    except Exception as error:  # noqa: BLE001 - any start-up failure is one fatal line, not a traceback
        get_logger(NODE_NAME).fatal(f"{NODE_NAME} cannot start: {_one_line(error)}")
        rclpy.try_shutdown()
        return 1
    except KeyboardInterrupt:
        rclpy.try_shutdown()
        return 0
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        # Ctrl-C in a terminal reaches the node twice (the terminal's process group and ros2 launch forwarding
        # it): a second one must not cut the clean-up short with a KeyboardInterrupt traceback
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
