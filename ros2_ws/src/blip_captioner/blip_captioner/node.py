"""ROS 2 glue: a managed (lifecycle) node around blip_lora_core.runtime (pipeline, live captioner).

configure loads the model and creates the topics, activate starts captioning, deactivate stops it, cleanup
frees the model (the process lives on). With ``autostart`` (the launch file's default) the node goes to active
by itself and a failed start ends it with one fatal line and exit status 1.

Topics, all relative (a namespace and ``--ros-args -r`` move them): ``image`` (sensor_msgs/Image; with
``compressed`` sensor_msgs/CompressedImage on ``<image>/compressed``) in; ``caption`` (std_msgs/String),
``<caption>/stamped`` (blip_captioner_msgs/Caption) and, with ``foxglove_annotations``,
``<caption>/annotations`` (foxglove_msgs/ImageAnnotations) out, sub-names of the resolved caption topic so
they follow a remapping of ``caption``; ``/diagnostics`` once a second of steady time.

The executor never waits for the model: parameter changes are checked in the callback and applied by the
worker thread between two captions.
"""

from __future__ import annotations

import ctypes
import gc
import signal
import sys
import time
import weakref
from typing import Any

import rclpy
from blip_captioner_msgs.msg import Caption
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from foxglove_msgs.msg import Color, ImageAnnotations, Point2, TextAnnotation
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.clock import Clock, ClockType
from rclpy.executors import ExternalShutdownException
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.logging import get_logger
from rclpy.parameter import Parameter
from rclpy.qos import qos_profile_sensor_data
from rclpy.qos_overriding_options import QoSOverridingOptions
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import String

try:  # Jazzy: rclpy.event_handler (importing rclpy.qos_event warns there); Humble has rclpy.qos_event only
    from rclpy.event_handler import SubscriptionEventCallbacks
except ImportError:
    from rclpy.qos_event import SubscriptionEventCallbacks

from blip_captioner.params import (
    FLOATS,
    NONE,
    PARAMS,
    ParamSpec,
    caption_settings,
    checked,
    core_value,
    live_changes,
)
from blip_lora_core.errors import BlipLoraError
from blip_lora_core.runtime.diagnostics import Diagnosis, Level, diagnose, with_problems
from blip_lora_core.runtime.image_msgs import decode_message
from blip_lora_core.runtime.live import LiveCaptioner
from blip_lora_core.runtime.pipeline import CaptionEvent, CaptionPipeline, PipelineStats, stamp_seconds

NODE_NAME = "blip_captioner"
DIAGNOSTICS_PERIOD_S = 1.0
CLOCK_SILENT_S = 3.0  # use_sim_time and /clock still for this long: a WARN in diagnostics
# diagnostic_msgs levels are ROS `byte`s: one-byte bytes in rclpy (DiagnosticStatus.WARN == b'\x01')
LEVELS: dict[Level, bytes] = {Level.OK: DiagnosticStatus.OK, Level.WARN: DiagnosticStatus.WARN,
                              Level.ERROR: DiagnosticStatus.ERROR}
ANNOTATION_WHITE, ANNOTATION_SHADE = Color(r=1.0, g=1.0, b=1.0, a=1.0), Color(r=0.0, g=0.0, b=0.0, a=0.6)


def descriptor(spec: ParamSpec) -> ParameterDescriptor:
    """Description, read-only flag (parameters that need a restart), ranges and choices of one parameter."""
    desc = ParameterDescriptor(description=spec.description, read_only=not spec.runtime)
    if spec.choices:
        desc.additional_constraints = "one of: " + ", ".join(repr(choice) for choice in spec.choices)
    if spec.low is not None and isinstance(spec.default, float):
        desc.floating_point_range = [FloatingPointRange(from_value=spec.low, to_value=spec.high, step=0.0)]
    elif spec.low is not None:
        desc.integer_range = [IntegerRange(from_value=int(spec.low), to_value=int(spec.high), step=1)]
    return desc


def caption_message(event: CaptionEvent, live: LiveCaptioner, model: str) -> Caption:
    """The Caption of one captioned frame: the image's header, text, confidence, prompt, adapter, timings."""
    adapter = live.adapter
    return Caption(header=event.header, text=event.text, confidence=float(event.confidence or 0.0),
                   prompt=live.captioner.prompt or "", adapter_name=adapter.name, adapter_hash=adapter.hash,
                   model=model, decoder=live.describe(), decode_time=float(event.decode_s),
                   inference_time=float(event.inference_s))


def annotations(event: CaptionEvent) -> ImageAnnotations:
    """The caption as white text on a dark band at the image's top left, at the image's stamp (Foxglove)."""
    text = TextAnnotation(timestamp=event.header.stamp, position=Point2(x=8.0, y=24.0), text=event.text,
                          font_size=20.0, text_color=ANNOTATION_WHITE, background_color=ANNOTATION_SHADE)
    return ImageAnnotations(texts=[text])


class CaptionerNode(LifecycleNode):
    """Subscribes to a camera, publishes captions of the newest frame and diagnostics once a second."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        for name in FLOATS:  # YAML `max_rate_hz: 2`: a float parameter stays float
            given = self._parameter_overrides.get(name)
            if given is not None and given.type_ == Parameter.Type.INTEGER:
                self._parameter_overrides[name] = Parameter(name, Parameter.Type.DOUBLE, float(given.value))
        for spec in PARAMS:
            self.declare_parameter(spec.name, spec.default, descriptor(spec))
        checked({spec.name: self.get_parameter(spec.name).value for spec in PARAMS})
        self.start_error: str | None = None
        self._live: LiveCaptioner | None = None
        self._pipeline: CaptionPipeline | None = None
        self._entities: list[Any] = []
        self._topics: dict[str, str] = {}
        self._active = False
        self._incompatible: list[str] = []
        self._previous_stats: PipelineStats | None = None
        self._ros_time_seen = (self.get_clock().now().nanoseconds, time.monotonic())
        self.add_on_set_parameters_callback(self._on_set_parameters)
        steady = Clock(clock_type=ClockType.STEADY_TIME)  # diagnostics go on while a replay's /clock is silent
        self.create_timer(DIAGNOSTICS_PERIOD_S, self._publish_diagnostics, clock=steady)
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)

    # -- lifecycle --------------------------------------------------------------------------------------

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Topics first (a bad name fails in a second), then the model; FAILURE with an error line."""
        try:
            self._configure()
        except Exception as error:  # noqa: BLE001 - any failure is one line and the node stays unconfigured
            self.start_error = one_line(error)
            self.get_logger().error(f"configure failed: {self.start_error}")
            self._release()
            return TransitionCallbackReturn.FAILURE
        return TransitionCallbackReturn.SUCCESS

    def _configure(self) -> None:
        values = {spec.name: self.get_parameter(spec.name).value for spec in PARAMS}
        settings = caption_settings(values)
        image = self.resolve_topic_name("image") + ("/compressed" if values["compressed"] else "")
        caption = self.resolve_topic_name("caption")
        self._topics = {"image": image, "caption": caption, "stamped": caption + "/stamped"}
        self._caption_pub = self._add(self.create_publisher(String, caption, 10))
        self._stamped_pub = self._add(self.create_publisher(Caption, self._topics["stamped"], 10))
        self._annotations_pub = None
        if values["foxglove_annotations"]:
            self._topics["annotations"] = caption + "/annotations"
            self._annotations_pub = self._add(self.create_publisher(ImageAnnotations, caption + "/annotations", 10))
        events = SubscriptionEventCallbacks(incompatible_qos=self._on_incompatible_qos)
        self._subscription = self._add(self.create_subscription(
            CompressedImage if values["compressed"] else Image, image, self._on_image, qos_profile_sensor_data,
            event_callbacks=events, qos_overriding_options=QoSOverridingOptions.with_default_policies()))
        self._live = LiveCaptioner.load(values["model"], settings, core_value("adapter", values["adapter"]),
                                        refused=self._on_refused)
        reason = self._live.check({})
        if reason:
            raise BlipLoraError(reason)
        ros_seconds = self._ros_seconds
        self._pipeline = CaptionPipeline(
            self._live.caption, self._publish, decode=decode_message, max_rate_hz=values["max_rate_hz"],
            publish_on_change_only=values["publish_on_change_only"], rate_clock=ros_seconds,
            stamp_clock=ros_seconds, between=self._live.apply_pending, name=image, warn=self.get_logger().warning)
        self._model = values["model"]
        qos = self._subscription.qos_profile
        self.get_logger().info(
            f"configured: {image} -> {caption}, {self._topics['stamped']}; model {values['model']} on "
            f"{self._live.device}; image QoS {qos.reliability.name.lower()}, depth {qos.depth}")

    def _add(self, entity: Any) -> Any:
        self._entities.append(entity)
        return entity

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._active = True
        self._pipeline.start()
        adapter = self._live.adapter
        self.get_logger().info(
            f"captioning {self._topics['image']} -> {self._topics['caption']} with {self._model} on "
            f"{self._live.device}, adapter {adapter.path or '(none)'}"
            f"{f' ({adapter.hash})' if adapter.hash else ''}, at most "
            f"{self.get_parameter('max_rate_hz').value:g} Hz; {self._live.describe()}")
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._active = False
        self._pipeline.stop()
        self.get_logger().info("inactive: not captioning")
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def _release(self) -> None:
        """Stop the worker, destroy the topics and free the model (and its GPU memory)."""
        self._active = False
        if self._pipeline is not None:
            self._pipeline.stop()
        for entity in self._entities:
            (self.destroy_subscription if entity is getattr(self, "_subscription", None)
             else self.destroy_publisher)(entity)
        self._entities, self._pipeline, self._subscription = [], None, None
        if self._live is None:
            return
        model = weakref.ref(self._live.captioner)
        self._live = None
        gc.collect()
        _empty_gpu_cache()
        freed = "freed" if model() is None else "still referenced elsewhere"
        self.get_logger().info(f"model {freed}")

    # -- callbacks ---------------------------------------------------------------------------------------

    def _on_image(self, msg: Image | CompressedImage) -> None:
        if self._active:
            self._pipeline.submit(msg, stamp_seconds(msg))

    def _on_incompatible_qos(self, info: Any) -> None:
        policy = getattr(info.last_policy_kind, "name", str(info.last_policy_kind)).removeprefix("RMW_QOS_POLICY_")
        self._incompatible.append(policy)
        self.get_logger().warning(f"{self._topics.get('image')}: a publisher offers an incompatible QoS "
                                  f"({policy}); its images never arrive")

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        """Check at once, queue for the worker: never waits for a caption or a model change."""
        changes = {param.name: param.value for param in params}
        try:
            checked(changes)
            reason = self._live.check(live_changes(changes)) if self._live is not None else None
        except Exception as error:  # noqa: BLE001 - refuse the change, keep running
            reason = f"{type(error).__name__}: {error}"
        if reason:
            self.get_logger().warning(f"parameter change refused: {reason}")
            return SetParametersResult(successful=False, reason=reason)
        if self._live is not None:
            self._live.queue(live_changes(changes))
        if self._pipeline is not None:
            if "max_rate_hz" in changes:
                self._pipeline.max_rate_hz = changes["max_rate_hz"]
            if "publish_on_change_only" in changes:
                self._pipeline.publish_on_change_only = changes["publish_on_change_only"]
            self._pipeline.wake()
        return SetParametersResult(successful=True)

    def _on_refused(self, kept: dict[str, Any], reason: str) -> None:
        """A queued adapter change failed in the worker: say so and put the parameters back."""
        self.get_logger().error(f"parameter change failed: {reason}")
        self.set_parameters([Parameter("adapter", value=kept["adapter"] or NONE),
                             Parameter("merge_adapter", value=kept["merge"])])

    def _publish(self, event: CaptionEvent) -> None:
        """Publish one caption (worker thread); nothing once the node is inactive or ROS shut down."""
        if not (self._active and self.context.ok()):
            return
        try:
            self._caption_pub.publish(String(data=event.text))
            self._stamped_pub.publish(caption_message(event, self._live, self._model))
            if self._annotations_pub is not None:
                self._annotations_pub.publish(annotations(event))
        except Exception:
            if self.context.ok():  # a publish racing Ctrl-C fails quietly; any other failure is reported
                raise

    # -- diagnostics ----------------------------------------------------------------------------------------

    def _diagnosis(self) -> Diagnosis:
        state = "active" if self._active else ("inactive" if self._live is not None else "unconfigured")
        if not self._active:
            return Diagnosis(Level.OK, f"{state}: not captioning", [])
        stats = self._pipeline.stats()
        diagnosis = diagnose(stats, self._previous_stats)
        self._previous_stats = stats
        problems = []
        if self._incompatible:
            problems.append((Level.WARN, f"{len(self._incompatible)} publishers on {self._topics['image']} offer an "
                             f"incompatible QoS (last: {self._incompatible[-1]}); their images never arrive"))
        silent = self._sim_clock_silent_s()
        if silent is not None:
            problems.append((Level.WARN, f"use_sim_time is true but /clock has not moved for {silent:.1f} s "
                             "(ros2 bag play BAG --clock?)"))
        return with_problems(diagnosis, problems)

    def _sim_clock_silent_s(self) -> float | None:
        """Seconds the ROS clock has stood still, when it follows /clock (use_sim_time) and stood still long."""
        now_ns, seen_ns, seen_at = self.get_clock().now().nanoseconds, *self._ros_time_seen
        if now_ns != seen_ns or not self.get_parameter("use_sim_time").value:
            self._ros_time_seen = (now_ns, time.monotonic())
            return None
        silent = time.monotonic() - seen_at
        return silent if silent > CLOCK_SILENT_S else None

    def _publish_diagnostics(self) -> None:
        diagnosis = self._diagnosis()
        extra = [("lifecycle_state", "active" if self._active else "inactive" if self._live else "unconfigured")]
        extra += [(f"{name}_topic", topic) for name, topic in self._topics.items()]
        extra += [(name, str(self.get_parameter(name).value)) for name in ("model", "prompt", "max_rate_hz")]
        if self._live is not None:
            extra += [("adapter", self._live.adapter.path), ("adapter_hash", self._live.adapter.hash),
                      ("decoder", self._live.describe())]
            qos = self._subscription.qos_profile
            extra.append(("image_qos", f"{qos.reliability.name.lower()}, {qos.history.name.lower()} {qos.depth}"))
        extra.append(("incompatible_qos_events", str(len(self._incompatible))))
        status = DiagnosticStatus(level=LEVELS[diagnosis.level], name=f"{self.get_fully_qualified_name()}: captioning",
                                  message=diagnosis.message, hardware_id=self._live.device if self._live else "",
                                  values=[KeyValue(key=k, value=v) for k, v in diagnosis.values + extra])
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self._diagnostics_pub.publish(array)

    def _ros_seconds(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9


def _empty_gpu_cache() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def one_line(error: BaseException) -> str:
    """An exception as one line: rclpy's InvalidTopicNameException spans three (name, reason, a ^ marker)."""
    lines = [line.strip().rstrip(":") for line in str(error).splitlines()
             if line.strip() and set(line.strip()) != {"^"}]
    text = ": ".join(lines) or type(error).__name__
    return text if isinstance(error, BlipLoraError) else f"{type(error).__name__}: {text}"


def _end_with_parent() -> None:
    """SIGINT when the parent (ros2 launch, ros2 run) dies, even by SIGTERM or SIGKILL: never an orphan."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGINT)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux
        return


def _autostart(node: CaptionerNode) -> str | None:
    """configure then activate; why it failed, or None."""
    node.start_error = None
    if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
        return node.start_error or "configure failed"
    if node.trigger_activate() != TransitionCallbackReturn.SUCCESS:
        return "activate failed"
    return None


def main(args: list[str] | None = None) -> int:
    """Spin until Ctrl-C or an external shutdown; 1 with one fatal line when the node cannot start."""
    _end_with_parent()
    # rclpy's own SIGINT handler shuts the context down at once, so the clean-up's log lines could no longer
    # reach /rosout; with Python's, Ctrl-C raises KeyboardInterrupt in spin (at the next wake-up: the 1 s
    # diagnostics timer at the latest) and the clean-up runs with the context still valid
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.SIGTERM)
    node = None
    try:
        node = CaptionerNode()
        failed = _autostart(node) if node.get_parameter("autostart").value else None
    except Exception as error:  # noqa: BLE001 - any start-up failure is one fatal line, not a traceback
        failed = one_line(error)
    except KeyboardInterrupt:
        rclpy.try_shutdown()
        return 0
    if failed:
        get_logger(NODE_NAME).fatal(f"{NODE_NAME} cannot start: {failed}")
        rclpy.try_shutdown()
        return 1
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        # Ctrl-C in a terminal reaches the node twice (the terminal's process group and ros2 launch forwarding
        # it): a second one must not cut the clean-up short with a KeyboardInterrupt traceback
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        node._release()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
