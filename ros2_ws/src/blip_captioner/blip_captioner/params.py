"""The node's parameters (no rclpy here): one table, its defaults from the core's CaptionSettings, and checks.

Topics are not parameters: the node subscribes to ``image`` and publishes ``caption`` (relative names, so a
namespace and ``--ros-args -r image:=/cam/image_raw`` move them); QoS is set through the standard
``qos_overrides.<topic>.subscription.*`` parameters.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from blip_lora_core.errors import ConfigError
from blip_lora_core.models.caption_settings import QUANTIZE_CHOICES, CaptionSettings
from blip_lora_core.models.loading import BLIP_LARGE


@dataclass(frozen=True)
class ParamSpec:
    """One node parameter: runtime=False ones are read-only once the node runs; low/high bound numbers."""

    name: str
    default: bool | int | float | str
    description: str
    runtime: bool = False
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()


# No parameter defaults to '' (Humble's `ros2 param load` cannot read an empty string back from a dump):
# the words below stand for "not set" and become the core's default
NONE, AUTO = "none", "auto"
UNSET = {"adapter": (NONE, ""), "prompt": (NONE, ""), "device": (AUTO, ""), "dtype": (AUTO, ""),
         "quantize": (NONE, "")}
_CAPTION = CaptionSettings()  # the caption defaults, shared with the command line
PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec("model", BLIP_LARGE, "BLIP base model: a hub id or a local folder"),
    ParamSpec("adapter", NONE, "LoRA adapter file; none (or empty): the base model alone", runtime=True),
    ParamSpec("prompt", NONE, "text every caption starts with (e.g. 'a picture of'); none (or empty): no prompt",
              runtime=True),
    ParamSpec("device", AUTO, "torch device (cuda, cuda:1, cpu); auto: cuda when present, else cpu"),
    ParamSpec("dtype", AUTO, "fp32, fp16 or bf16; auto: fp16 on a GPU, fp32 on the CPU",
              choices=(AUTO, "fp32", "fp16", "bf16")),
    ParamSpec("quantize", NONE, "int8: dynamic int8 linear layers (CPU, fp32, merged adapter); none: no",
              choices=(NONE,) + QUANTIZE_CHOICES),
    ParamSpec("merge_adapter", _CAPTION.merge, "merge the adapter into the weights (faster) instead of hooks",
              runtime=True),
    ParamSpec("max_new_tokens", _CAPTION.max_new_tokens, "longest caption, in tokens (at most the model's text "
              "positions minus the start token and the prompt)", runtime=True, low=1, high=512),
    ParamSpec("num_beams", _CAPTION.num_beams, "beam search width; 1: greedy (fast static-cache decoder)",
              runtime=True, low=1, high=16),
    ParamSpec("max_rate_hz", 2.0, "at most this many captions a second of ROS time (sim time in a replay); "
              "0.0: as fast as the model goes", runtime=True, low=0.0, high=1000.0),
    ParamSpec("publish_on_change_only", False, "publish a caption only when it differs from the last one",
              runtime=True),
    ParamSpec("compressed", False, "subscribe to sensor_msgs/CompressedImage on image/compressed (jpeg/png/tiff) "
              "instead of sensor_msgs/Image on image"),
    ParamSpec("foxglove_annotations", False, "also publish foxglove_msgs/ImageAnnotations on caption/annotations "
              "(the caption as text over the image, at its stamp)"),
    ParamSpec("autostart", False, "configure and activate at start (the launch file sets it); false: wait for "
              "ros2 lifecycle set"),
)
SPECS: dict[str, ParamSpec] = {spec.name: spec for spec in PARAMS}
RUNTIME: frozenset[str] = frozenset(spec.name for spec in PARAMS if spec.runtime)
FLOATS: frozenset[str] = frozenset(spec.name for spec in PARAMS if isinstance(spec.default, float))
# parameter name -> LiveCaptioner setting
LIVE_NAMES = {"adapter": "adapter", "merge_adapter": "merge", "prompt": "prompt", "max_new_tokens": "max_new_tokens",
              "num_beams": "num_beams"}


def checked(values: Mapping[str, Any]) -> dict[str, Any]:
    """The values, unchanged; ConfigError naming every value outside its choices (ranges: the descriptors)."""
    problems = [f"{name} must be one of {', '.join(repr(c) for c in SPECS[name].choices)}, got {value!r}"
                for name, value in values.items() if name in SPECS and SPECS[name].choices
                and core_value(name, value) not in ("",) + SPECS[name].choices]
    if problems:
        raise ConfigError("; ".join(problems))
    return dict(values)


def core_value(name: str, value: Any) -> Any:
    """A parameter value as the core takes it: 'none' / 'auto' (and '') -> '' (the core's default)."""
    return "" if name in UNSET and value in UNSET[name] else value


def caption_settings(values: Mapping[str, Any]) -> CaptionSettings:
    """Parameter values -> validated CaptionSettings; batches of one frame."""
    values = {name: core_value(name, value) for name, value in values.items()}
    return CaptionSettings(prompt=values["prompt"], max_new_tokens=values["max_new_tokens"],
                           num_beams=values["num_beams"], device=values["device"], dtype=values["dtype"],
                           merge=values["merge_adapter"], quantize=values["quantize"], batch_size=1)


def live_changes(changes: Mapping[str, Any]) -> dict[str, Any]:
    """Parameter changes -> the LiveCaptioner settings among them."""
    return {LIVE_NAMES[name]: core_value(name, value) for name, value in changes.items() if name in LIVE_NAMES}
