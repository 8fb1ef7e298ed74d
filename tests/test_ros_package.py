"""The blip_captioner ament_python package: colcon build and install layout, package.xml, launch file logic.

colcon-core, colcon-ros and colcon-python-setup-py build it without a ROS install. The launch file is
loaded with small stand-ins for launch / launch_ros / ament_index_python, so its argument handling is
checked here; tests/test_launch_ros.py launches it for real where ROS 2 is installed.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "ros2_ws" / "src"
PACKAGE = SRC / "blip_captioner"
LAUNCH_FILE = ROOT / "launch" / "blip_captioner.launch.py"
FAKE_RCLPY = Path(__file__).resolve().parent / "fake_rclpy"
EXEC_DEPENDS = {"rclpy", "sensor_msgs", "std_msgs", "diagnostic_msgs", "launch", "launch_ros"}


def _colcon() -> str:
    beside = Path(sys.executable).parent / "colcon"
    found = str(beside) if beside.exists() else shutil.which("colcon")
    if not found:
        pytest.skip("colcon is not installed (pip install colcon-core colcon-ros colcon-python-setup-py)")
    return found


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """colcon build of ros2_ws/src into a temporary build/install/log base; the install prefix."""
    tmp = tmp_path_factory.mktemp("colcon")
    command = [_colcon(), "--log-base", str(tmp / "log"), "build", "--base-paths", str(SRC),
               "--build-base", str(tmp / "build"), "--install-base", str(tmp / "install")]
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    done = subprocess.run(command, cwd=tmp, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "Finished <<< blip_captioner" in done.stdout
    return tmp / "install" / "blip_captioner"


def test_launch_and_config_are_links_to_the_top_level_folders():
    for name in ("launch", "config"):
        link = PACKAGE / name
        assert link.is_symlink() and os.readlink(link) == f"../../../{name}"
        assert link.resolve() == (ROOT / name).resolve()


def test_colcon_installs_the_package(installed):
    share = installed / "share" / "blip_captioner"
    assert (share / "package.xml").read_bytes() == (PACKAGE / "package.xml").read_bytes()
    assert (share / "launch" / "blip_captioner.launch.py").read_bytes() == LAUNCH_FILE.read_bytes()
    assert (share / "config" / "captioner.yaml").read_bytes() == (ROOT / "config" / "captioner.yaml").read_bytes()
    assert sorted(p.name for p in (share / "config").iterdir()) == ["captioner.yaml"]
    assert (installed / "share" / "ament_index" / "resource_index" / "packages" / "blip_captioner").is_file()
    script = installed / "lib" / "blip_captioner" / "blip_captioner"
    assert script.is_file() and os.access(script, os.X_OK)
    assert "'console_scripts', 'blip_captioner'" in script.read_text()
    modules = list((installed / "lib").glob("python3*/site-packages/blip_captioner"))
    assert len(modules) == 1
    assert sorted(p.name for p in modules[0].glob("*.py")) == ["__init__.py", "node.py", "params.py"]


@pytest.mark.slow
def test_installed_executable_exits_non_zero_when_the_model_cannot_load(installed, tmp_path):
    """The console script with the fake rclpy: a missing model is a fatal log line and exit status 1."""
    (site,) = (installed / "lib").glob("python3*/site-packages")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(FAKE_RCLPY), str(site), str(ROOT)]),
               HF_HUB_OFFLINE="1", PYTHONDONTWRITEBYTECODE="1")
    missing = tmp_path / "no_model_here"
    done = subprocess.run([str(installed / "lib" / "blip_captioner" / "blip_captioner"), "--ros-args", "-p",
                           f"model:={missing}"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr[-3000:]
    assert f"[FATAL] [blip_captioner]: blip_captioner cannot start: cannot load BLIP model '{missing}'" \
        in done.stderr


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
    assert [arg.args[0] for arg in declared] == ["params_file", "image_topic", "compressed", "adapter", "device"]
    assert declared[0].kwargs["default_value"] == \
        "/opt/ws/install/blip_captioner/share/blip_captioner/config/captioner.yaml"
    assert all(arg.kwargs["default_value"] == "" for arg in declared[1:])
    assert all(arg.kwargs["description"] for arg in declared)


def test_launch_without_arguments_uses_only_the_yaml(launch_file):
    node = _launch(launch_file)
    assert {k: node.kwargs[k] for k in ("package", "executable", "name")} == {
        "package": "blip_captioner", "executable": "blip_captioner", "name": "blip_captioner"}
    assert node.kwargs["parameters"] == [
        "/opt/ws/install/blip_captioner/share/blip_captioner/config/captioner.yaml", {}]
    config = yaml.safe_load((ROOT / "config" / "captioner.yaml").read_text())
    assert list(config) == [node.kwargs["name"]]  # the YAML's top key is the node's name


def test_launch_arguments_override_only_when_given(launch_file):
    node = _launch(launch_file, image_topic="/camera/color/image_raw", adapter="/path/x.safetensors")
    assert node.kwargs["parameters"][1] == {"image_topic": "/camera/color/image_raw",
                                            "adapter": "/path/x.safetensors"}
    node = _launch(launch_file, params_file="/my/params.yaml", compressed="True", device="cuda:1")
    assert node.kwargs["parameters"] == ["/my/params.yaml", {"compressed": True, "device": "cuda:1"}]
    assert _launch(launch_file, compressed="false").kwargs["parameters"][1] == {"compressed": False}
    with pytest.raises(ValueError, match="compressed:='maybe' must be true or false"):
        _launch(launch_file, compressed="maybe")
