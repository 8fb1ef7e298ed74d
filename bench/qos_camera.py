"""A camera that counts what the blip_captioner node receives, for bench/qos_delivery.py: `python qos_camera.py SPEC`.

SPEC (JSON file): topic (the node's image topic), node (its fully qualified name), cases (list of {width,
height, reliable, frames, interval_s}). For each case: a publisher of that reliability (keep last 5, as camera
drivers do) sends ``frames`` rgb8 images ``interval_s`` apart once the node's subscription matched it; the
frames the node received are the rise of ``frames_received`` in its /diagnostics, read once the count has
stood still for two diagnostics messages after the last frame.
Prints one JSON line: {"cases": [{..., "sent", "received"}]}.
"""

from __future__ import annotations

import array
import json
import sys
import time

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

MATCH_TIMEOUT_S = 15.0  # no match by then: the QoS is incompatible (a reliable node, a best-effort camera)
SETTLE_TIMEOUT_S = 60.0


class Camera:
    def __init__(self, topic: str, node_name: str) -> None:
        self.node = rclpy.create_node("qos_delivery_camera")
        self.topic, self.status_name = topic, f"{node_name}: captioning"
        self.received: list[int] = []  # frames_received of each diagnostics message, in order
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            values = {kv.key: kv.value for kv in status.values}
            if status.name == self.status_name and "frames_received" in values:
                self.received.append(int(values["frames_received"]))

    def spin_until(self, done, timeout: float, what: str, fail: bool = True) -> bool:
        end = time.monotonic() + timeout
        while not done():
            if time.monotonic() > end:
                if fail:
                    raise SystemExit(f"qos_camera: no {what} within {timeout:g} s")
                return False
            rclpy.spin_once(self.node, timeout_sec=0.05)
        return True

    def settled_count(self) -> int:
        """frames_received once two diagnostics messages after now report the same count."""
        start = len(self.received)
        self.spin_until(lambda: len(self.received) >= start + 2 and self.received[-1] == self.received[-2],
                        SETTLE_TIMEOUT_S, "steady frames_received in /diagnostics")
        return self.received[-1]

    def run_case(self, width: int, height: int, reliable: bool, frames: int, interval_s: float) -> dict:
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=5,
                         reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT)
        publisher = self.node.create_publisher(Image, self.topic, qos)
        case = dict(width=width, height=height, reliable=reliable, sent=frames)
        if not self.spin_until(lambda: publisher.get_subscription_count() > 0, MATCH_TIMEOUT_S, "match", False):
            self.node.destroy_publisher(publisher)
            return dict(case, received=0, matched=False)
        before = self.settled_count()  # also gives the node's side of discovery two diagnostics periods
        data = array.array("B", bytes(width * height * 3))  # array('B'): taken as is, no per-byte check
        start = time.monotonic()
        for index in range(frames):
            due = start + index * interval_s
            self.spin_until(lambda due=due: time.monotonic() >= due, interval_s + 1, "tick")
            msg = Image(height=height, width=width, encoding="rgb8", step=width * 3, is_bigendian=0, data=data)
            msg.header.stamp = self.node.get_clock().now().to_msg()
            msg.header.frame_id = "qos_camera"
            publisher.publish(msg)
        received = self.settled_count() - before
        self.node.destroy_publisher(publisher)
        return dict(case, received=received, matched=True)


def main() -> None:
    with open(sys.argv[1]) as file:
        spec = json.load(file)
    rclpy.init()
    camera = Camera(spec["topic"], spec["node"])
    cases = [camera.run_case(**case) for case in spec["cases"]]
    camera.node.destroy_node()
    rclpy.try_shutdown()
    print(json.dumps({"cases": cases}))


if __name__ == "__main__":
    main()
