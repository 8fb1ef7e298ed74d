"""rclpy.clock.Clock: ROS time, which is the system time (no use_sim_time here)."""

from __future__ import annotations

import time as _time

from rclpy.time import Time


class Clock:
    def now(self) -> Time:
        return Time(nanoseconds=_time.time_ns())
