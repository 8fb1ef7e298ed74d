"""Launch the blip_captioner node with its YAML parameters; launch arguments override them only when given.

    ros2 launch blip_captioner blip_captioner.launch.py
    ros2 launch blip_captioner blip_captioner.launch.py image_topic:=/camera/color/image_raw \\
        adapter:=/path/to/adapter.safetensors
    ros2 launch blip_captioner blip_captioner.launch.py params_file:=/path/to/my_captioner.yaml compressed:=true
    ros2 launch blip_captioner blip_captioner.launch.py namespace:=robot1   # /robot1/blip_captioner

An argument left empty (the default) keeps the value from params_file, so the YAML stays the one place
where defaults live.
"""

from __future__ import annotations

import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchDescription

PACKAGE = "blip_captioner"
OVERRIDES = {
    "image_topic": "camera topic (sensor_msgs/Image, or CompressedImage with compressed:=true)",
    "compressed": "true: image_topic carries sensor_msgs/CompressedImage",
    "adapter": "LoRA adapter file",
    "device": "torch device: cuda, cuda:1 or cpu",
}
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def _as_bool(name: str, text: str) -> bool:
    if text.lower() in _TRUE + _FALSE:
        return text.lower() in _TRUE
    raise ValueError(f"launch argument {name}:={text!r} must be true or false")


def parameter_overrides(arguments: dict[str, str]) -> dict[str, str | bool]:
    """Launch argument strings -> node parameters; an empty (not given) argument overrides nothing."""
    overrides: dict[str, str | bool] = {}
    for name in OVERRIDES:
        text = arguments.get(name, "").strip()
        if text:
            overrides[name] = _as_bool(name, text) if name == "compressed" else text
    return overrides


def _node(context, *args, **kwargs) -> list:
    arguments = {name: LaunchConfiguration(name).perform(context) for name in OVERRIDES}
    params_file = LaunchConfiguration("params_file").perform(context)
    namespace = LaunchConfiguration("namespace").perform(context)
    return [Node(package=PACKAGE, executable=PACKAGE, name=PACKAGE, namespace=namespace, output="screen",
                 emulate_tty=True, parameters=[params_file, parameter_overrides(arguments)])]


def generate_launch_description() -> LaunchDescription:
    default_params = os.path.join(get_package_share_directory(PACKAGE), "config", "captioner.yaml")
    arguments = [DeclareLaunchArgument("params_file", default_value=default_params,
                                       description="YAML file with the node's parameters (keyed /**)"),
                 DeclareLaunchArgument("namespace", default_value="", description="namespace of the node")]
    arguments += [DeclareLaunchArgument(name, default_value="", description=f"{text} (empty: from params_file)")
                  for name, text in OVERRIDES.items()]
    return LaunchDescription(arguments + [OpaqueFunction(function=_node)])
