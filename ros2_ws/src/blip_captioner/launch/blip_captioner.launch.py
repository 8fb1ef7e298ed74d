"""Launch the blip_captioner node with its YAML parameters; launch arguments override them only when given.

    ros2 launch blip_captioner blip_captioner.launch.py image_topic:=/camera/color/image_raw \\
        adapter:=/path/to/adapter.safetensors
    ros2 launch blip_captioner blip_captioner.launch.py params_file:=/path/to/my_captioner.yaml compressed:=true
    ros2 launch blip_captioner blip_captioner.launch.py namespace:=cam2      # /cam2/blip_captioner, /cam2/caption
    ros2 launch blip_captioner blip_captioner.launch.py use_sim_time:=true   # replaying a bag with --clock
    ros2 launch blip_captioner blip_captioner.launch.py autostart:=false     # then: ros2 lifecycle set ...
    ros2 launch blip_captioner blip_captioner.launch.py cyclonedds_uri:=none # Cyclone DDS's built-in defaults

An argument left empty (the default) keeps the value from params_file, so the YAML stays the one place where
defaults live. image_topic and caption_topic remap the node's relative topics ``image`` and ``caption``
(the stamped and annotation topics are sub-names of caption and follow it). When the node dies at start-up,
the launch ends with a non-zero exit status.

Cyclone DDS configuration of the node: CYCLONEDDS_URI from the environment when it is set, else the package's
config/cyclonedds.xml (a 64 MiB socket receive buffer requested: HD frames from best-effort and reliable
cameras arrive; see the README's QoS paragraph); the cyclonedds_uri argument overrides both.
"""

from __future__ import annotations

import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, OpaqueFunction, RegisterEventHandler
from launch.event_handlers import OnProcessExit
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchDescription

PACKAGE = "blip_captioner"
# launch argument -> what it sets: a parameter of the node (converted to the parameter's type)
PARAMETERS = {
    "model": (str, "BLIP base model: hub id or local folder"),
    "adapter": (str, "LoRA adapter file"),
    "device": (str, "torch device: cuda, cuda:1 or cpu"),
    "dtype": (str, "fp32, fp16 or bf16"),
    "prompt": (str, "text every caption starts with"),
    "max_rate_hz": (float, "captions a second at most (0: as fast as the model goes)"),
    "compressed": (bool, "true: subscribe to sensor_msgs/CompressedImage on <image_topic>/compressed"),
    "foxglove_annotations": (bool, "true: publish foxglove_msgs/ImageAnnotations on <caption_topic>/annotations"),
    "use_sim_time": (bool, "true: ROS time from /clock (ros2 bag play BAG --clock)"),
}
# launch argument -> the node's relative topic it remaps
REMAPPINGS = {"image_topic": ("image", "camera topic, e.g. /camera/color/image_raw (default: image in the "
                                        "node's namespace)"),
              "caption_topic": ("caption", "caption topic; <caption_topic>/stamped carries the Caption messages "
                                           "(default: caption in the node's namespace)")}
CYCLONEDDS_FILE = "cyclonedds.xml"  # in the package's config/
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def _convert(name: str, kind: type, text: str) -> str | bool | float:
    if kind is bool:
        if text.lower() not in _TRUE + _FALSE:
            raise ValueError(f"launch argument {name}:={text!r} must be true or false")
        return text.lower() in _TRUE
    if kind is float:
        try:
            return float(text)
        except ValueError as error:
            raise ValueError(f"launch argument {name}:={text!r} must be a number") from error
    return text


def parameter_overrides(arguments: dict[str, str]) -> dict[str, str | bool | float]:
    """Launch argument strings -> node parameters; an empty (not given) argument overrides nothing."""
    return {name: _convert(name, kind, arguments[name].strip())
            for name, (kind, _) in PARAMETERS.items() if arguments.get(name, "").strip()}


def remappings(arguments: dict[str, str]) -> list[tuple[str, str]]:
    """image_topic / caption_topic -> remappings of the node's relative topics ``image`` / ``caption``."""
    return [(topic, arguments[name].strip()) for name, (topic, _) in REMAPPINGS.items()
            if arguments.get(name, "").strip()]


def cyclonedds_uri(argument: str, environment: dict[str, str], shipped: str) -> str:
    """The node's CYCLONEDDS_URI: the argument ('none': Cyclone's built-in defaults), else the environment's,
    else the package's file."""
    argument = argument.strip()
    if argument:
        return "" if argument.lower() == "none" else argument
    return environment.get("CYCLONEDDS_URI") or f"file://{shipped}"


def _fail_on_a_dead_node(event, context) -> None:
    """A node that exits with an error while nobody asked the launch to stop ends it with exit status 1."""
    if event.returncode and not context.is_shutdown:
        raise RuntimeError(f"{event.action.name} exited with code {event.returncode} (see its log above)")


def _node(context, *args, **kwargs) -> list:
    given = {name: LaunchConfiguration(name).perform(context) for name in [*PARAMETERS, *REMAPPINGS, "autostart"]}
    parameters = {**parameter_overrides(given), "autostart": _convert("autostart", bool, given["autostart"])}
    shipped = os.path.join(get_package_share_directory(PACKAGE), "config", CYCLONEDDS_FILE)
    dds = cyclonedds_uri(LaunchConfiguration("cyclonedds_uri").perform(context), dict(os.environ), shipped)
    node = Node(package=PACKAGE, executable=PACKAGE, name=PACKAGE,
                namespace=LaunchConfiguration("namespace").perform(context), output="screen", emulate_tty=True,
                parameters=[LaunchConfiguration("params_file").perform(context), parameters],
                remappings=remappings(given), additional_env={"CYCLONEDDS_URI": dds})
    return [node, RegisterEventHandler(OnProcessExit(target_action=node, on_exit=_fail_on_a_dead_node))]


def generate_launch_description() -> LaunchDescription:
    default_params = os.path.join(get_package_share_directory(PACKAGE), "config", "captioner.yaml")
    arguments = [DeclareLaunchArgument("params_file", default_value=default_params,
                                       description="YAML file with the node's parameters (keyed /**)"),
                 DeclareLaunchArgument("namespace", default_value="", description="namespace of the node and "
                                       "its relative topics (image, caption)"),
                 DeclareLaunchArgument("autostart", default_value="true", description="true: configure and "
                                       "activate at once; false: wait for ros2 lifecycle set"),
                 DeclareLaunchArgument("cyclonedds_uri", default_value="", description="Cyclone DDS "
                                       "configuration of the node (empty: $CYCLONEDDS_URI, else the package's "
                                       f"config/{CYCLONEDDS_FILE}; none: Cyclone's defaults)")]
    arguments += [DeclareLaunchArgument(name, default_value="", description=f"{text} (empty: from params_file)")
                  for name, (_, text) in PARAMETERS.items()]
    arguments += [DeclareLaunchArgument(name, default_value="", description=text)
                  for name, (_, text) in REMAPPINGS.items()]
    return LaunchDescription(arguments + [OpaqueFunction(function=_node)])
