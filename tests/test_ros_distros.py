"""The ROS tier on each distribution: how tests/ros_env.py hands a test one case per ROS 2 distribution, and what
bench/ros2_stack.py's environment of each distribution is (its own tree, loopback discovery without warnings,
message field types checked on Jazzy as on Humble, no other sourced distribution leaking in)."""

from __future__ import annotations

import os

import pytest
from ros_env import selected_distros

from bench import ros2_stack

pytest_plugins = ["pytester"]

SAMPLE = """
import pytest

pytestmark = pytest.mark.xdist_group("launched")


@pytest.fixture(scope="module")
def launched(ros_env):
    return ros_env


def test_through_a_fixture(launched):
    pass


def test_distro_only(ros_distro):
    pass


def test_without_ros():
    pass
"""


def _collected(pytester: pytest.Pytester, *args: str) -> dict[str, pytest.Item]:
    """SAMPLE's tests that a run with ``args`` selects, by name."""
    pytester.makepyfile(test_sample=SAMPLE)
    items, recorder = pytester.inline_genitems("-p", "ros_env", *args)
    deselected = {item.nodeid for call in recorder.getcalls("pytest_deselected") for item in call.items}
    return {item.name: item for item in items if item.nodeid not in deselected}


def test_a_test_that_uses_ros_env_runs_once_per_distribution_and_is_marked_with_it(pytester):
    items = _collected(pytester)
    assert sorted(items) == ["test_distro_only[humble]", "test_distro_only[jazzy]", "test_through_a_fixture[humble]",
                             "test_through_a_fixture[jazzy]", "test_without_ros"]
    for distro in ros2_stack.DISTROS:
        item = items[f"test_through_a_fixture[{distro}]"]
        assert item.callspec.params["ros_distro"] == distro and item.get_closest_marker(distro)
        other = next(name for name in ros2_stack.DISTROS if name != distro)
        assert item.get_closest_marker(other) is None
        # pytest-xdist joins a test's xdist_group names: one group per distribution
        assert sorted(mark.args[0] for mark in item.iter_markers("xdist_group")) == sorted([distro, "launched"])
    assert [mark.args for mark in items["test_without_ros"].iter_markers("xdist_group")] == [("launched",)]


def test_ros_distro_or_a_mark_picks_one_tree(pytester):
    assert sorted(_collected(pytester, "--ros-distro", "humble")) == [
        "test_distro_only[humble]", "test_through_a_fixture[humble]", "test_without_ros"]
    assert sorted(_collected(pytester, "-m", "jazzy")) == ["test_distro_only[jazzy]", "test_through_a_fixture[jazzy]"]


def test_both_distributions_are_selected_by_default(pytestconfig):
    assert selected_distros(pytestconfig) == list(ros2_stack.DISTROS) == ["humble", "jazzy"]


def test_each_distribution_and_worker_has_a_dds_domain_of_its_own(monkeypatch):
    monkeypatch.setenv("BLIP_LORA_DOMAIN_BASE", "5")
    domains = set()
    for worker in ("gw0", "gw1"):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
        domains |= {ros2_stack.domain_id(distro) for distro in ros2_stack.DISTROS}
    assert len(domains) == 4 and all(0 <= domain <= 101 for domain in domains)


INIT = """
import os, rclpy
rclpy.init()
node = rclpy.create_node("distro_check")
print(os.environ["ROS_DISTRO"], rclpy.__file__, sep="\\n")
node.destroy_node()
rclpy.shutdown()
"""


@pytest.mark.ros
def test_the_environment_is_its_own_tree_with_loopback_discovery_and_no_warnings(ros_env, ros_distro):
    done = ros2_stack.run(ros_env, "python3", "-c", INIT)
    assert done.returncode == 0, done.stderr
    distro, rclpy_file = done.stdout.split()
    assert distro == ros_distro
    assert os.path.realpath(rclpy_file).startswith(str(ros2_stack.tree(ros_distro).resolve()))
    assert {name: ros_env.get(name) for name in ("ROS_LOCALHOST_ONLY", "ROS_AUTOMATIC_DISCOVERY_RANGE")} == {
        "humble": {"ROS_LOCALHOST_ONLY": "1", "ROS_AUTOMATIC_DISCOVERY_RANGE": None},
        "jazzy": {"ROS_LOCALHOST_ONLY": None, "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}}[ros_distro]
    # Jazzy's rcl warns at every init when given the deprecated ROS_LOCALHOST_ONLY
    assert "WARN" not in done.stderr, done.stderr


WRONG_FIELDS = """
from diagnostic_msgs.msg import DiagnosticStatus
from std_msgs.msg import String
for make in (lambda: DiagnosticStatus(level=2), lambda: String(data=1), lambda: String(bogus="x")):
    try:
        make()
        print("accepted")
    except AssertionError:
        print("AssertionError")
"""


@pytest.mark.ros
def test_a_wrong_message_field_type_fails_on_every_distribution(ros_env):
    """The node once died on Humble from an int in DiagnosticStatus.level (a byte); Jazzy checks only when
    ROS_PYTHON_CHECK_FIELDS=1, which the environment sets, so the same mistake fails there too."""
    done = ros2_stack.run(ros_env, "python3", "-c", WRONG_FIELDS)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["AssertionError"] * 3


@pytest.mark.ros
def test_another_sourced_distribution_does_not_leak_in(ros_distro, monkeypatch):
    other = next(name for name in ros2_stack.DISTROS if name != ros_distro)
    if not all(ros2_stack.TARBALLS[name].is_file() for name in ros2_stack.DISTROS):
        pytest.skip("needs both shared ROS 2 trees")
    sourced = ros2_stack.base_environment(other)
    sourced.update(ros2_stack.LOCALHOST[other])
    for name, value in sourced.items():
        monkeypatch.setenv(name, value)
    env = ros2_stack.base_environment(ros_distro)
    assert env["ROS_DISTRO"] == ros_distro
    leaked = {name: value for name, value in env.items() if f"ros2-{other}-sdk" in value}
    assert not leaked
    assert not (set(ros2_stack.LOCALHOST[other]) - set(ros2_stack.LOCALHOST[ros_distro])) & set(env)


@pytest.mark.ros
def test_the_node_imports_without_a_warning_on_every_distribution(ros_env):
    """Jazzy warns at the import of rclpy.qos_event (renamed rclpy.event_handler); Humble has only qos_event."""
    done = ros2_stack.run(ros_env, "python3", "-c", "import blip_captioner.node", timeout=120)
    assert done.returncode == 0 and done.stderr == "", done.stderr
