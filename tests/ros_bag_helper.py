"""A camera and a replay watcher for the rosbag2 replay tests, in a ROS 2 process: `python ros_bag_helper.py SPEC.json`.

SPEC {"mode": "camera", "topic", "frames": [rgb8 frames from ros_frames.image_frame], "period_s", "subscribers"}:
wait until ``subscribers`` recorders are matched, publish each frame (reliable) stamped with the current time,
``period_s`` apart, wait until every recorder acknowledged them; prints {"stamps": [[sec, nanosec], ...]}.

SPEC {"mode": "replay", "topic", "node_status", "received", "unsettled", "player"}: wait until the paused
``ros2 bag play ... -p`` publishes ``topic`` and ``node_status``'s node subscribes to it, resume the player, then
listen to /diagnostics until that node reports at least ``received`` frames with at most ``unsettled`` of them
neither captioned nor dropped nor failed (a frame held by the rate limit of a stopped clock); prints that status.

SPEC {"mode": "diagnostics", "node_status", "contains"}: the first /diagnostics status of the node whose message
contains ``contains``; prints it.
"""

from __future__ import annotations

import array
import base64
import json
import sys
import time

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.duration import Duration
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rosbag2_interfaces.srv import Resume
from sensor_msgs.msg import Image

TIMEOUT_S = 90.0
SETTLED = ("captions_made", "frames_replaced", "frames_rate_limited", "decode_errors", "inference_errors")


def _spin_until(node, predicate, what: str, timeout: float = TIMEOUT_S):
    end = time.monotonic() + timeout
    while not (result := predicate()):
        if time.monotonic() > end:
            raise SystemExit(f"{what}: not within {timeout} s")
        rclpy.spin_once(node, timeout_sec=0.05)
    return result


def camera(node, spec: dict) -> dict:
    publisher = node.create_publisher(Image, spec["topic"], QoSProfile(depth=len(spec["frames"]),
                                                                      reliability=ReliabilityPolicy.RELIABLE))
    _spin_until(node, lambda: publisher.get_subscription_count() >= spec["subscribers"], "recorders")
    stamps, start = [], time.monotonic()
    for index, frame in enumerate(spec["frames"]):
        _spin_until(node, lambda i=index: time.monotonic() - start >= i * spec["period_s"], "period")
        msg = Image(height=frame["height"], width=frame["width"], encoding=frame["encoding"], step=frame["step"],
                    is_bigendian=0, data=array.array("B", base64.b64decode(frame["data_b64"])))
        msg.header.stamp, msg.header.frame_id = node.get_clock().now().to_msg(), "replay_cam"
        publisher.publish(msg)
        stamps.append([msg.header.stamp.sec, msg.header.stamp.nanosec])
    if not publisher.wait_for_all_acked(Duration(seconds=TIMEOUT_S)):
        raise SystemExit("the recorders did not acknowledge every frame")
    return {"stamps": stamps}


def _node_status(node, spec: dict, accept) -> dict:
    found: list[dict] = []

    def on_diagnostics(msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name == spec["node_status"]:
                report = dict(level=status.level[0], message=status.message,
                              values={kv.key: kv.value for kv in status.values})
                if accept(report):
                    found.append(report)

    node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 50)
    return _spin_until(node, lambda: found and found[0], f"a diagnostics status of {spec['node_status']}")


def replay(node, spec: dict) -> dict:
    def ready() -> bool:
        infos = node.get_publishers_info_by_topic(spec["topic"])
        subscribed = node.get_subscriptions_info_by_topic(spec["topic"])
        return any(info.node_name == spec["player"] for info in infos) and bool(subscribed)

    _spin_until(node, ready, f"{spec['player']} publishing {spec['topic']} to the node")
    client = node.create_client(Resume, f"/{spec['player']}/resume")
    _spin_until(node, lambda: client.service_is_ready(), "the player's resume service")
    future = client.call_async(Resume.Request())
    _spin_until(node, future.done, "resume")

    def settled(report: dict) -> bool:
        values = {key: int(value) for key, value in report["values"].items() if key in (*SETTLED, "frames_received")}
        if len(values) < len(SETTLED) + 1 or values["frames_received"] < spec["received"]:
            return False
        return values["frames_received"] - sum(values[key] for key in SETTLED) <= spec["unsettled"]

    return _node_status(node, spec, settled)


def diagnostics(node, spec: dict) -> dict:
    return _node_status(node, spec, lambda report: spec["contains"] in report["message"])


def main() -> None:
    with open(sys.argv[1]) as file:
        spec = json.load(file)
    rclpy.init()
    node = rclpy.create_node(f"bag_helper_{spec['mode']}")
    try:
        report = {"camera": camera, "replay": replay, "diagnostics": diagnostics}[spec["mode"]](node, spec)
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    print(json.dumps(report))


if __name__ == "__main__":
    main()
