"""Listen to what `ros2 bag play --start-paused` plays: `python bag_listener.py TOPIC COUNT` in a ROS 2 environment.

Subscribes to TOPIC (std_msgs/String, reliable, transient local: the player is given that QoS too, so nothing
published before the two are matched is lost), waits until the player's publisher shows in the graph, resumes
the player through its /rosbag2_player/resume service, and prints one JSON line: {"received": [texts]} once
COUNT messages came (or after 60 s, with what came).
"""

from __future__ import annotations

import json
import sys
import time

import rclpy
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rosbag2_interfaces.srv import Resume
from std_msgs.msg import String

TIMEOUT_S = 60.0


def _spin_until(node, done, deadline: float) -> bool:
    while not done():
        if time.monotonic() > deadline:
            return False
        rclpy.spin_once(node, timeout_sec=0.05)
    return True


def main(topic: str, count: int) -> None:
    rclpy.init()
    node = rclpy.create_node("bag_listener")
    received: list[str] = []
    qos = QoSProfile(depth=max(count, 10), reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)
    node.create_subscription(String, topic, lambda msg: received.append(msg.data), qos)
    deadline = time.monotonic() + TIMEOUT_S
    resume = node.create_client(Resume, "/rosbag2_player/resume")
    ready = (_spin_until(node, lambda: node.count_publishers(topic) > 0, deadline)
             and resume.wait_for_service(timeout_sec=max(0.0, deadline - time.monotonic())))
    if ready:
        future = resume.call_async(Resume.Request())
        _spin_until(node, future.done, deadline)
        _spin_until(node, lambda: len(received) >= count, deadline)
    print(json.dumps({"received": received, "matched": bool(ready)}), flush=True)
    node.destroy_node()
    rclpy.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
