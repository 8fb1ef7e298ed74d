"""The blip_captioner ament_python package: colcon build and install layout, package.xml, launch file logic.

colcon-core, colcon-ros and colcon-python-setup-py build it without a ROS install. The launch file's
arguments are checked on the real launch of the ROS 2 tree (here and in tests/test_ros_node.py,
test_ros_start.py).
"""

from __future__ import annotations

import os
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from bench.ros2_stack import colcon_build

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "ros2_ws" / "src"
PACKAGE = SRC / "blip_captioner"
LAUNCH_FILE = PACKAGE / "launch" / "blip_captioner.launch.py"
CONFIG_FILE = PACKAGE / "config" / "captioner.yaml"
EXEC_DEPENDS = {"rclpy", "sensor_msgs", "std_msgs", "diagnostic_msgs", "launch", "launch_ros", "blip_captioner_msgs",
                "foxglove_msgs"}


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """colcon build of ros2_ws/src into a temporary build/install/log base; the package's install prefix."""
    folder = tmp_path_factory.mktemp("colcon")
    shutil.copytree(PACKAGE, folder / "src" / "blip_captioner", symlinks=True)  # no ROS needed for this one
    return colcon_build(folder / "src", folder, dict(os.environ)) / "blip_captioner"


def test_top_level_launch_and_config_link_into_the_package():
    """The package holds the real files; the repository's launch/ and config/captioner.yaml point at them."""
    assert (ROOT / "launch").is_symlink() and (ROOT / "launch").resolve() == (PACKAGE / "launch").resolve()
    yaml_link = ROOT / "config" / "captioner.yaml"
    assert yaml_link.is_symlink() and yaml_link.resolve() == CONFIG_FILE.resolve()
    for path in (PACKAGE / "launch", LAUNCH_FILE, PACKAGE / "config", CONFIG_FILE):
        assert not path.is_symlink(), path


def _check_install(installed: Path, package: Path) -> None:
    share = installed / "share" / "blip_captioner"
    for relative in ("package.xml", "launch/blip_captioner.launch.py", "config/captioner.yaml",
                     "config/cyclonedds.xml"):
        path = share / relative
        assert path.is_file() and not path.is_symlink(), path
        assert path.read_bytes() == (package / relative).read_bytes() and path.stat().st_size > 500, path
    assert sorted(p.name for p in (share / "config").iterdir()) == ["captioner.yaml", "cyclonedds.xml"]
    assert (installed / "share" / "ament_index" / "resource_index" / "packages" / "blip_captioner").is_file()
    script = installed / "lib" / "blip_captioner" / "blip_captioner"
    assert script.is_file() and os.access(script, os.X_OK)
    assert script.read_text().splitlines()[0] == "#!/usr/bin/env python3"
    assert "'console_scripts', 'blip_captioner'" in script.read_text()
    modules = list((installed / "lib").glob("python3*/site-packages/blip_captioner"))
    assert len(modules) == 1
    assert sorted(p.name for p in modules[0].glob("*.py")) == ["__init__.py", "node.py", "params.py"]


def test_colcon_installs_the_package(installed):
    _check_install(installed, PACKAGE)


def test_a_copied_package_builds_and_installs_its_launch_file_and_yaml(tmp_path):
    """cp -r of the package alone (Docker COPY, bloom): launch/ and config/ come along as real files."""
    src = tmp_path / "src"
    shutil.copytree(PACKAGE, src / "blip_captioner", symlinks=True)
    installed = colcon_build(src, tmp_path, dict(os.environ)) / "blip_captioner"
    _check_install(installed, src / "blip_captioner")


def test_package_xml():
    root = ET.parse(PACKAGE / "package.xml").getroot()
    assert root.tag == "package" and root.get("format") == "3"
    assert root.findtext("name") == "blip_captioner"
    assert root.findtext("export/build_type") == "ament_python"
    assert root.find("buildtool_depend") is None  # "ament_python" is a build type, not a rosdep key
    assert EXEC_DEPENDS <= {element.text for element in root.findall("exec_depend")}
    assert root.findtext("license") == "MIT"


# -- the launch file, on the real launch of the ROS 2 tree ---------------------------------------------------


@pytest.mark.ros
def test_launch_arguments_on_the_real_launch(ros_env, tmp_path):
    """compressed:=maybe ends the launch with an error; device:=cuda:1 reaches the (unconfigured) node."""
    from ros_env import launch, ros2, wait_until

    bad = launch(ros_env, tmp_path, "compressed:=maybe", log="bad.log")
    assert bad.process.wait(60) != 0 and "compressed:='maybe' must be true or false" in bad.output()
    node = launch(ros_env, tmp_path, "device:=cuda:1", "autostart:=false", "namespace:=args", "max_rate_hz:=3",
                  "prompt:=a picture of")
    try:
        wait_until(lambda: ros2(ros_env, "lifecycle", "get", "/args/blip_captioner") == "unconfigured [1]",
                   "the node up")
        assert ros2(ros_env, "param", "get", "/args/blip_captioner", "device") == "String value is: cuda:1"
        assert ros2(ros_env, "param", "get", "/args/blip_captioner", "max_rate_hz") == "Double value is: 3.0"
        assert ros2(ros_env, "param", "get", "/args/blip_captioner", "prompt") == "String value is: a picture of"
    finally:
        assert node.stop() == 0


def test_without_any_ros_2_the_node_tests_say_how_to_run_them(monkeypatch, tmp_path):
    from bench import ros2_stack

    monkeypatch.delenv("AMENT_PREFIX_PATH", raising=False)
    monkeypatch.setitem(ros2_stack.TARBALLS, "humble", tmp_path / "absent.tar.gz")
    with pytest.raises(ros2_stack.Ros2UnavailableError) as info:
        ros2_stack.base_environment()
    assert "source /opt/ros/humble/setup.bash" in str(info.value) and "make test" in str(info.value)
