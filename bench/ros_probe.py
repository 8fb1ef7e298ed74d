"""A camera and a listener in one ROS 2 process, for the node tests: `python ros_probe.py SPEC.json`.

SPEC keys: topic (image topic), caption_topic (default /caption; Caption messages on caption_topic/stamped),
frames (list of messages, below),
frame_timeout_s, diagnostics_s (listen to /diagnostics from the start, and this long at the end),
stream ({fps, seconds, width, height}: a 640x480-style rgb8 stream stamped with the current time; reports
every stamped caption's age).
A frame: {kind: image|compressed, encoding/height/width/step or format, data_b64, sec, nanosec, frame_id,
reliable (default false: best effort), stamp_now (stamp it with the current time at each publish), expect
(default true: publish again every 0.5 s until its caption comes back on caption_topic/stamped, matched by
stamp; false: publish `repeat` times), once (publish it a single time, then wait for its caption: a lost
frame fails), fill (instead of data_b64: seeded random bytes, height * step of them; for large frames)}.
With bridge: true each reported frame carries `bridge_b64` and `bridge_shape`: the image as the real
cv_bridge decodes it (`imgmsg_to_cv2(msg, "rgb8")`, `compressed_imgmsg_to_cv2`), the independent
expectation of what the node sees.
Prints one JSON line: frames, captions, diagnostics, ages.
"""

from __future__ import annotations

import array
import base64
import json
import sys
import time

import numpy as np
import rclpy
from blip_captioner_msgs.msg import Caption
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import String


def _message(frame: dict):
    if "fill" in frame:
        pixels = np.random.default_rng(frame["fill"]).integers(0, 256, frame["height"] * frame["step"], np.uint8)
        data = array.array("B", pixels.tobytes())
    else:
        data = array.array("B", base64.b64decode(frame["data_b64"]))
    if frame["kind"] == "image":
        msg = Image(height=frame["height"], width=frame["width"], encoding=frame["encoding"], step=frame["step"],
                    is_bigendian=0, data=data)
    else:
        msg = CompressedImage(format=frame["format"], data=data)
    msg.header.stamp.sec, msg.header.stamp.nanosec = frame["sec"], frame["nanosec"]
    msg.header.frame_id = frame["frame_id"]
    return msg


def _bridged(msg) -> dict:
    """The message decoded by the real cv_bridge to rgb8."""
    from cv_bridge import CvBridge

    bridge = CvBridge()
    rgb = (bridge.imgmsg_to_cv2(msg, "rgb8") if isinstance(msg, Image)
           else bridge.compressed_imgmsg_to_cv2(msg, "rgb8"))
    return dict(bridge_b64=base64.b64encode(np.ascontiguousarray(rgb).tobytes()).decode(),
                bridge_shape=list(rgb.shape))


def _values(status) -> dict[str, str]:
    return {kv.key: kv.value for kv in status.values}


class Probe:
    def __init__(self, spec: dict) -> None:
        self.spec = spec
        self.node = rclpy.create_node("blip_captioner_probe")
        caption_topic = spec.get("caption_topic", "/caption")
        self.captions: list[str] = []
        self.stamped: dict[tuple[int, int], dict] = {}
        self.ages: list[float] = []
        self.sent_stamps: set[tuple[int, int]] = set()
        self.diagnostics: list[dict] = []
        self.node.create_subscription(String, caption_topic, lambda m: self.captions.append(m.data), 50)
        self.node.create_subscription(Caption, caption_topic + "/stamped", self._on_stamped, 50)
        self.publishers = {}
        self.topic = spec.get("topic", "/camera/image_raw")
        self.annotations: list[dict] = []
        if spec.get("annotations"):
            from foxglove_msgs.msg import ImageAnnotations

            self.node.create_subscription(ImageAnnotations, caption_topic + "/annotations", self._on_annotations, 50)
        if spec.get("diagnostics_s"):
            self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 50)

    def _on_annotations(self, msg) -> None:
        self.annotations += [dict(text=t.text, stamp=[t.timestamp.sec, t.timestamp.nanosec]) for t in msg.texts]

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            self.diagnostics.append(dict(t=time.monotonic(), level=status.level[0], name=status.name,
                                         message=status.message, values=_values(status)))

    def _publisher(self, kind: str, reliable: bool):
        key = (kind, reliable)
        if key not in self.publishers:
            qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE if reliable
                             else ReliabilityPolicy.BEST_EFFORT)
            self.publishers[key] = self.node.create_publisher(Image if kind == "image" else CompressedImage,
                                                              self.topic, qos)
        return self.publishers[key]

    def _on_stamped(self, msg: Caption) -> None:
        stamp = (msg.header.stamp.sec, msg.header.stamp.nanosec)
        self.stamped[stamp] = dict(text=msg.text, stamp=list(stamp), frame_id=msg.header.frame_id,
                                   confidence=msg.confidence, prompt=msg.prompt, adapter_name=msg.adapter_name,
                                   adapter_hash=msg.adapter_hash, model=msg.model, decoder=msg.decoder,
                                   decode_time=msg.decode_time, inference_time=msg.inference_time)
        now = self.node.get_clock().now().nanoseconds * 1e-9
        self.ages.append(now - (stamp[0] + stamp[1] * 1e-9))

    def spin_for(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            rclpy.spin_once(self.node, timeout_sec=min(0.05, max(0.0, end - time.monotonic())))

    def wait_for_subscriber(self, publisher, timeout: float = 20.0) -> None:
        end = time.monotonic() + timeout
        while publisher.get_subscription_count() == 0:
            if time.monotonic() > end:
                raise SystemExit(f"no subscriber on {self.topic} within {timeout} s")
            self.spin_for(0.1)

    def send(self, frame: dict) -> dict | None:
        """Publish one frame (again every 0.5 s) until its stamped caption arrives; None if not expected."""
        publisher = self._publisher(frame["kind"], frame.get("reliable", False))
        if frame.get("wait", True):
            self.wait_for_subscriber(publisher)
        else:  # a subscriber that cannot match (incompatible QoS): give discovery its time
            self.spin_for(1.0)
        msg = _message(frame)
        sent = {(frame["sec"], frame["nanosec"])}
        if not frame.get("expect", True):
            for _ in range(frame.get("repeat", 3)):
                publisher.publish(msg)
                self.spin_for(0.1)
            return None
        end = time.monotonic() + self.spec.get("frame_timeout_s", 30.0)
        if frame.get("once"):
            publisher.publish(msg)
        while not sent & set(self.stamped):
            if time.monotonic() > end:
                raise SystemExit(f"no caption for frame {frame['frame_id']} within the timeout")
            if frame.get("once"):
                self.spin_for(0.1)
                continue
            if frame.get("stamp_now"):
                msg.header.stamp = self.node.get_clock().now().to_msg()
                sent.add((msg.header.stamp.sec, msg.header.stamp.nanosec))
            publisher.publish(msg)
            self.spin_for(0.5)
        report = dict(self.stamped[(sent & set(self.stamped)).pop()], sent_frame_id=frame["frame_id"])
        if self.spec.get("bridge"):
            report.update(_bridged(msg))
        return report

    def stream(self, fps: float, seconds: float, width: int, height: int) -> int:
        publisher = self._publisher("image", False)
        self.wait_for_subscriber(publisher)
        pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), np.uint8)
        # array('B') is taken as is by the generated setter; bytes would be checked value by value (~0.1 s)
        variants = [array.array("B", np.roll(pixels, 7 * i, axis=1).tobytes()) for i in range(8)]
        start, sent = time.monotonic(), 0
        while (elapsed := time.monotonic() - start) < seconds:
            if elapsed >= sent / fps:
                msg = Image(height=height, width=width, encoding="rgb8", step=width * 3, is_bigendian=0)
                msg.data = variants[sent % len(variants)]
                msg.header.stamp = self.node.get_clock().now().to_msg()
                msg.header.frame_id = "stream"
                self.sent_stamps.add((msg.header.stamp.sec, msg.header.stamp.nanosec))
                publisher.publish(msg)
                sent += 1
            rclpy.spin_once(self.node, timeout_sec=max(0.0, min(0.005, (sent / fps) - elapsed)))
        return sent


def main() -> None:
    with open(sys.argv[1]) as file:
        spec = json.load(file)
    rclpy.init()
    probe = Probe(spec)
    report: dict = {"frames": [probe.send(frame) for frame in spec.get("frames", [])]}
    if "stream" in spec:
        report["sent"] = probe.stream(**spec["stream"])
        report["unmatched_stamps"] = len(set(probe.stamped) - probe.sent_stamps)
        probe.spin_for(2.0)
    probe.spin_for(spec.get("diagnostics_s") or 0.3)
    report.update(captions=probe.captions, diagnostics=probe.diagnostics, ages=probe.ages,
                  annotations=probe.annotations,
                  latencies=[s["inference_time"] for s in probe.stamped.values()])
    probe.node.destroy_node()
    rclpy.try_shutdown()
    print(json.dumps(report))


if __name__ == "__main__":
    main()
