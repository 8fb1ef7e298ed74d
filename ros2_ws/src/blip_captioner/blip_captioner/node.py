"""ROS 2 glue: parameters, the camera subscription, caption and diagnostics publishers.

The work happens in blip_lora_core.runtime.pipeline (newest frame only, captioned on a worker thread) and in
blip_captioner.params (what a parameter change does); this module only wires them to rclpy.
"""

from __future__ import annotations

import sys
from typing import Any

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException
from rclpy.logging import get_logger
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import String

from blip_lora_core.runtime.diagnostics import Diagnosis, diagnose
from blip_lora_core.errors import BlipLoraError
from blip_lora_core.runtime.pipeline import CaptionPipeline, PipelineStats, stamp_seconds

from blip_captioner.params import PARAMS, LiveCaptioner, ParamSpec, apply_changes, check_values

NODE_NAME = "blip_captioner"
DIAGNOSTICS_PERIOD_S = 1.0


def descriptor(spec: ParamSpec) -> ParameterDescriptor:
    """Description, read-only flag (parameters that need a restart), ranges and choices of one parameter."""
    desc = ParameterDescriptor(description=spec.description, read_only=not spec.runtime)
    if spec.choices:
        desc.additional_constraints = "one of: " + ", ".join(spec.choices)
    if spec.low is not None and isinstance(spec.default, float):
        desc.floating_point_range = [FloatingPointRange(from_value=spec.low, to_value=spec.high, step=0.0)]
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
    status = DiagnosticStatus(level=int(diagnosis.level), name=f"{NODE_NAME}: captioning",
                              message=diagnosis.message, hardware_id=hardware_id,
                              values=[KeyValue(key=k, value=v) for k, v in diagnosis.values + extra])
    array = DiagnosticArray(status=[status])
    array.header.stamp = stamp
    return array


class CaptionerNode(Node):
    """Subscribes to a camera, publishes captions of the newest frame and diagnostics once a second."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        values = {spec.name: self.declare_parameter(spec.name, spec.default, descriptor(spec)).value
                  for spec in PARAMS}
        check_values(values)
        self._live = LiveCaptioner.load(values)
        self._pipeline = CaptionPipeline(
            self._live.caption, self._publish_caption, max_rate_hz=values["max_rate_hz"],
            publish_on_change_only=values["publish_on_change_only"], stamp_clock=self._ros_seconds,
            name=values["image_topic"], warn=self.get_logger().warning)
        self._previous_stats: PipelineStats | None = None
        self._caption_pub = self.create_publisher(String, values["caption_topic"], 10)
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_subscription(CompressedImage if values["compressed"] else Image, values["image_topic"],
                                 self._on_image, subscription_qos(values["qos_reliability"], values["qos_depth"]))
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.create_timer(DIAGNOSTICS_PERIOD_S, self._on_diagnostics_timer)
        self._pipeline.start()
        self.get_logger().info(f"captioning {values['image_topic']} -> {values['caption_topic']} with "
                               f"{values['model']} on {self._live.device}, adapter "
                               f"{values['adapter'] or '(none)'}, at most {values['max_rate_hz']} Hz; "
                               f"{self._live.describe()}")

    def _on_image(self, msg: Image | CompressedImage) -> None:
        self._pipeline.submit(msg, stamp_seconds(msg))

    def _on_set_parameters(self, params: list) -> SetParametersResult:
        return self._apply({param.name: param.value for param in params})

    def _on_diagnostics_timer(self) -> None:
        self._publish_diagnostics()

    def _apply(self, changes: dict[str, Any]) -> SetParametersResult:
        reason = apply_changes(changes, self._live, self._pipeline)
        if reason:
            self.get_logger().warning(f"parameter change refused: {reason}")
        return SetParametersResult(successful=reason is None, reason=reason or "")

    def _publish_caption(self, text: str, stamp: float) -> None:
        self._caption_pub.publish(String(data=text))

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
        self._pipeline.stop()
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    """Spin until Ctrl-C or an external shutdown; 1 when the node cannot start (bad model or parameters)."""
    rclpy.init(args=args)
    node = None
    try:
        node = CaptionerNode()
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except (BlipLoraError, ParameterException) as error:
        get_logger(NODE_NAME).fatal(f"{NODE_NAME} cannot start: {error}")
        return 1
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
