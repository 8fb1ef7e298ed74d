"""The node's parameters (no rclpy here): one table, the captioning and pipeline ones declared by the core's
settings (CaptionSettings, PipelineSettings: help, default, range, choices), and checks.

Topics are not parameters: the node subscribes to ``image`` and publishes ``caption`` (relative names, so a
namespace and ``--ros-args -r image:=/cam/image_raw`` move them); QoS is set through the standard
``qos_overrides.<topic>.subscription.*`` parameters.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from blip_lora_core.errors import ConfigError
from blip_lora_core.models.caption_settings import CaptionSettings
from blip_lora_core.models.loading import BLIP_LARGE
from blip_lora_core.runtime.pipeline import PipelineSettings
from blip_lora_core.settings import setting_info


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
_UNSET_WORDS = {"adapter": NONE, "prompt": NONE, "device": AUTO, "dtype": AUTO, "quantize": NONE}
UNSET = {name: (word, "") for name, word in _UNSET_WORDS.items()}
CAPTION_FIELDS: dict[str, str] = {}  # parameter name -> CaptionSettings field, filled by _declared


def _declared(cls: type, field: str, name: str | None = None, *, runtime: bool = False,
              default: bool | int | float | str | None = None) -> ParamSpec:
    """A parameter declared by a setting of the core (blip_lora_core.settings): its help, range, choices and
    default (an unset default becomes the parameter's word for unset; ``default`` replaces the core's)."""
    info, name = setting_info(cls, field), name or field
    word = _UNSET_WORDS.get(name)
    if cls is CaptionSettings:
        CAPTION_FIELDS[name] = field
    value = info.default if default is None else default
    low, high = (None if bound is None else info.kind(bound) for bound in (info.low, info.high))  # ROS: typed
    return ParamSpec(name, word if value is None else value,
                     f"{info.help}; {word} or empty means unset" if word else info.help, runtime,
                     low, high, (word, *info.choices) if word and info.choices else info.choices)


PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec("model", BLIP_LARGE, "BLIP base model: a hub id or a local folder"),
    ParamSpec("adapter", NONE, "LoRA adapter file; none (or empty): the base model alone", runtime=True),
    _declared(CaptionSettings, "prompt", runtime=True),
    _declared(CaptionSettings, "device"),
    _declared(CaptionSettings, "dtype"),
    _declared(CaptionSettings, "quantize"),
    _declared(CaptionSettings, "merge", "merge_adapter", runtime=True),
    _declared(CaptionSettings, "max_new_tokens", runtime=True),
    _declared(CaptionSettings, "num_beams", runtime=True),
    _declared(PipelineSettings, "max_rate_hz", runtime=True, default=2.0),  # a robot: 2 captions a second
    _declared(PipelineSettings, "publish_on_change_only", runtime=True),
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
LIVE_NAMES = {"adapter": "adapter", **{name: field for name, field in CAPTION_FIELDS.items() if name in RUNTIME}}


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
    return CaptionSettings(**{field: core_value(name, values[name]) for name, field in CAPTION_FIELDS.items()},
                           batch_size=1)


def live_changes(changes: Mapping[str, Any]) -> dict[str, Any]:
    """Parameter changes -> the LiveCaptioner settings among them."""
    return {LIVE_NAMES[name]: core_value(name, value) for name, value in changes.items() if name in LIVE_NAMES}
