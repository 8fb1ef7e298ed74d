"""The blip_captioner ament_python package: colcon build and install layout, package.xml, launch file logic.

colcon-core, colcon-ros and colcon-python-setup-py build it without a ROS install. The launch file is
loaded with small stand-ins for launch / launch_ros / ament_index_python, so its argument handling is
checked here; tests/test_ros_node.py and test_ros_start.py launch it on a real ROS 2.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest
import yaml

from bench.ros2_stack import colcon_build

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "ros2_ws" / "src"
PACKAGE = SRC / "blip_captioner"
LAUNCH_FILE = PACKAGE / "launch" / "blip_captioner.launch.py"
CONFIG_FILE = PACKAGE / "config" / "captioner.yaml"
EXEC_DEPENDS = {"rclpy", "sensor_msgs", "std_msgs", "diagnostic_msgs", "launch", "launch_ros"}


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """colcon build of ros2_ws/src into a temporary build/install/log base; the package's install prefix."""
    return colcon_build(SRC, tmp_path_factory.mktemp("colcon"), dict(os.environ)) / "blip_captioner"


def test_top_level_launch_and_config_link_into_the_package():
    """The package holds the real files; the repository's launch/ and config/captioner.yaml point at them."""
    assert (ROOT / "launch").is_symlink() and (ROOT / "launch").resolve() == (PACKAGE / "launch").resolve()
    yaml_link = ROOT / "config" / "captioner.yaml"
    assert yaml_link.is_symlink() and yaml_link.resolve() == CONFIG_FILE.resolve()
    for path in (PACKAGE / "launch", LAUNCH_FILE, PACKAGE / "config", CONFIG_FILE):
        assert not path.is_symlink(), path


def _check_install(installed: Path, package: Path) -> None:
    share = installed / "share" / "blip_captioner"
    for relative in ("package.xml", "launch/blip_captioner.launch.py", "config/captioner.yaml"):
        path = share / relative
        assert path.is_file() and not path.is_symlink(), path
        assert path.read_bytes() == (package / relative).read_bytes() and path.stat().st_size > 500, path
    assert sorted(p.name for p in (share / "config").iterdir()) == ["captioner.yaml"]
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


# -- the launch file, with stand-ins for launch, launch_ros and ament_index_python ------------------------


class _Recorded:
    """Remembers its constructor arguments."""

    def __init__(self, *args, **kwargs) -> None:
        self.args, self.kwargs = args, kwargs


class _LaunchConfiguration(_Recorded):
    def perform(self, context) -> str:
        return context.launch_configurations[self.args[0]]


def _stub_modules(share: str) -> dict[str, ModuleType]:
    def module(name: str, **attrs) -> ModuleType:
        mod = ModuleType(name)
        mod.__dict__.update(attrs)
        return mod

    return {
        "launch": module("launch", LaunchDescription=_Recorded),
        "launch.actions": module("launch.actions", DeclareLaunchArgument=_Recorded, OpaqueFunction=_Recorded),
        "launch.substitutions": module("launch.substitutions", LaunchConfiguration=_LaunchConfiguration),
        "launch_ros": module("launch_ros"),
        "launch_ros.actions": module("launch_ros.actions", Node=_Recorded),
        "ament_index_python": module("ament_index_python"),
        "ament_index_python.packages": module("ament_index_python.packages",
                                              get_package_share_directory=lambda name: f"{share}/{name}"),
    }


@pytest.fixture()
def launch_file(monkeypatch):
    for name, mod in _stub_modules("/opt/ws/install/blip_captioner/share").items():
        monkeypatch.setitem(sys.modules, name, mod)
    spec = importlib.util.spec_from_file_location("blip_captioner_launch", LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _launch(module, **given: str) -> _Recorded:
    """Run generate_launch_description like `ros2 launch` with name:=value arguments; the Node action."""
    description = module.generate_launch_description()
    *declared, opaque = description.args[0]
    values = {arg.args[0]: arg.kwargs["default_value"] for arg in declared}
    assert set(given) <= set(values), f"undeclared launch arguments {set(given) - set(values)}"
    context = SimpleNamespace(launch_configurations={**values, **given})
    (node,) = opaque.kwargs["function"](context)
    return node


def test_launch_declares_its_arguments(launch_file):
    declared = launch_file.generate_launch_description().args[0][:-1]
    assert [arg.args[0] for arg in declared] == ["params_file", "namespace", "image_topic", "compressed", "adapter",
                                                 "device"]
    assert declared[0].kwargs["default_value"] == \
        "/opt/ws/install/blip_captioner/share/blip_captioner/config/captioner.yaml"
    assert all(arg.kwargs["default_value"] == "" for arg in declared[1:])
    assert all(arg.kwargs["description"] for arg in declared)


def test_launch_without_arguments_uses_only_the_yaml(launch_file):
    node = _launch(launch_file)
    assert {k: node.kwargs[k] for k in ("package", "executable", "name", "namespace")} == {
        "package": "blip_captioner", "executable": "blip_captioner", "name": "blip_captioner", "namespace": ""}
    assert node.kwargs["parameters"] == [
        "/opt/ws/install/blip_captioner/share/blip_captioner/config/captioner.yaml", {}]
    config = yaml.safe_load(CONFIG_FILE.read_text())
    assert list(config) == ["/**"]  # applies under any node name and namespace
    assert _launch(launch_file, namespace="robot1").kwargs["namespace"] == "robot1"


def test_launch_arguments_override_only_when_given(launch_file):
    node = _launch(launch_file, image_topic="/camera/color/image_raw", adapter="/path/x.safetensors")
    assert node.kwargs["parameters"][1] == {"image_topic": "/camera/color/image_raw",
                                            "adapter": "/path/x.safetensors"}
    node = _launch(launch_file, params_file="/my/params.yaml", compressed="True", device="cuda:1")
    assert node.kwargs["parameters"] == ["/my/params.yaml", {"compressed": True, "device": "cuda:1"}]
    assert _launch(launch_file, compressed="false").kwargs["parameters"][1] == {"compressed": False}
    with pytest.raises(ValueError, match="compressed:='maybe' must be true or false"):
        _launch(launch_file, compressed="maybe")


def test_without_any_ros_2_the_node_tests_say_how_to_run_them(monkeypatch, tmp_path):
    from bench import ros2_stack

    monkeypatch.delenv("AMENT_PREFIX_PATH", raising=False)
    monkeypatch.setitem(ros2_stack.TARBALLS, "humble", tmp_path / "absent.tar.gz")
    with pytest.raises(ros2_stack.Ros2UnavailableError) as info:
        ros2_stack.base_environment()
    assert "source /opt/ros/humble/setup.bash" in str(info.value) and "make test" in str(info.value)
