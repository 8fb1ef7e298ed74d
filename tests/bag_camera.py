"""A camera for the real `ros2 bag record`: `python bag_camera.py SPEC.json` in a ROS 2 environment.

Publishes ``count`` sensor_msgs/Image frames (rgb8, ``width`` x ``height``) on ``topic``, reliable, after
``subscribers`` subscriptions (the recorders) have matched; frame i has the pixels of ``frame_pixels(i)``,
header.stamp ``START_NS + i * period_ns`` and frame_id ``frame <i>``, and each is acknowledged by every
recorder before the next goes out (``period_s`` apart). With ``string_topic`` a std_msgs/String "status <i>"
goes there beside each frame. Prints one JSON line: {"published": count}.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np

START_NS = 1_700_000_000 * 10**9
PERIOD_NS = 100_000_000


def frame_pixels(index: int, width: int, height: int) -> np.ndarray:
    """The (height, width, 3) uint8 RGB content of frame ``index``: seeded noise in 16x16 blocks (compressible,
    and whole JPEG blocks, so a JPEG of it stays close), the same in every process."""
    blocks = np.random.default_rng(index).integers(0, 256, (-(-height // 16), -(-width // 16), 3), dtype=np.uint8)
    return np.ascontiguousarray(blocks.repeat(16, 0).repeat(16, 1)[:height, :width])


def _wait(node, predicate, timeout_s: float, what: str) -> None:
    import rclpy

    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"bag_camera: {what} within {timeout_s} s")
        rclpy.spin_once(node, timeout_sec=0.05)


def main(spec: dict) -> None:
    import rclpy
    from rclpy.duration import Duration
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image
    from std_msgs.msg import String

    rclpy.init()
    node = rclpy.create_node("bag_camera")
    qos = QoSProfile(depth=10, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE)
    image_pub = node.create_publisher(Image, spec["topic"], qos)
    string_pub = node.create_publisher(String, spec["string_topic"], qos) if spec.get("string_topic") else None
    publishers = [p for p in (image_pub, string_pub) if p is not None]
    wanted = spec.get("subscribers", 1)
    _wait(node, lambda: all(p.get_subscription_count() >= wanted for p in publishers), 60,
          f"no {wanted} subscriber(s) on {spec['topic']}")
    width, height = spec["width"], spec["height"]
    for i in range(spec["count"]):
        stamp = START_NS + i * spec.get("period_ns", PERIOD_NS)
        msg = Image(height=height, width=width, encoding="rgb8", is_bigendian=0, step=width * 3,
                    data=frame_pixels(i, width, height).tobytes())
        msg.header.stamp.sec, msg.header.stamp.nanosec = stamp // 10**9, stamp % 10**9
        msg.header.frame_id = f"frame {i}"
        image_pub.publish(msg)
        if string_pub is not None:
            string_pub.publish(String(data=f"status {i}"))
        for publisher in publishers:
            if not publisher.wait_for_all_acked(Duration(seconds=30)):
                raise SystemExit(f"bag_camera: frame {i} not acknowledged within 30 s")
        time.sleep(spec.get("period_s", 0.0))
    print(json.dumps({"published": spec["count"]}), flush=True)
    node.destroy_node()
    rclpy.shutdown()


if __name__ == "__main__":
    with open(sys.argv[1]) as file:
        main(json.load(file))
