"""pytest side of bench/ros2_stack.py: the session's ROS 2 environment, or a skip that says how to get one."""

from __future__ import annotations

import pytest

from bench import ros2_stack


@pytest.fixture(scope="session")
def ros_env(tmp_path_factory) -> dict[str, str]:
    """Environment for ROS subprocesses: ROS 2 sourced, ros2_ws built on top, one DDS domain per worker."""
    try:
        return ros2_stack.environment(tmp_path_factory.mktemp("ros2_ws"))
    except ros2_stack.Ros2Unavailable as missing:
        pytest.skip(str(missing))
