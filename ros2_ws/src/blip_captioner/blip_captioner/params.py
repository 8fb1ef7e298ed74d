"""The node's parameters, and how run-time changes reach the model and the pipeline (no rclpy here)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from blip_lora_core.errors import BlipLoraError, ConfigError
from blip_lora_core.models.caption_settings import BLIP_LARGE, QUANTIZE_CHOICES, CaptionSettings
from blip_lora_core.runtime.captioners import load_captioner
from blip_lora_core.runtime.pipeline import CaptionPipeline


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


_CAPTION = CaptionSettings()  # the caption defaults, shared with the command line
PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec("model", BLIP_LARGE, "BLIP base model: a hub id or a local folder, or an ONNX export folder "
              "(blip-lora export --format onnx: ONNX Runtime, no torch; its adapter is merged in)"),
    ParamSpec("adapter", "", "LoRA adapter file; empty: the base model alone", runtime=True),
    ParamSpec("prompt", "", "text every caption starts with (e.g. 'a picture of'); empty: none", runtime=True),
    ParamSpec("device", "", "torch device (cuda, cuda:1, cpu); empty: cuda when present, else cpu"),
    ParamSpec("dtype", "", "fp32, fp16 or bf16; empty: fp16 on a GPU, fp32 on the CPU"),
    ParamSpec("quantize", "", "int8: dynamic int8 linear layers (CPU, fp32, merged adapter); empty: none",
              choices=("",) + QUANTIZE_CHOICES),
    ParamSpec("merge_adapter", _CAPTION.merge, "merge the adapter into the weights (faster) instead of hooks",
              runtime=True),
    ParamSpec("max_new_tokens", _CAPTION.max_new_tokens, "longest caption, in tokens", runtime=True, low=1, high=512),
    ParamSpec("num_beams", _CAPTION.num_beams, "beam search width; 1: greedy (fast static-cache decoder)",
              runtime=True, low=1, high=16),
    ParamSpec("max_rate_hz", 2.0, "at most this many captions a second; 0: as fast as the model goes",
              runtime=True, low=0.0, high=1000.0),
    ParamSpec("publish_on_change_only", False, "publish a caption only when it differs from the last one",
              runtime=True),
    ParamSpec("image_topic", "/camera/image_raw", "camera topic: sensor_msgs/Image, or CompressedImage "
              "when compressed is true (then usually .../image_raw/compressed)"),
    ParamSpec("compressed", False, "image_topic carries sensor_msgs/CompressedImage (jpeg/png/tiff)"),
    ParamSpec("caption_topic", "/caption", "topic the captions are published on (std_msgs/String)"),
    ParamSpec("qos_reliability", "best_effort", "best_effort receives from best-effort and reliable cameras "
              "alike; reliable receives nothing from a best-effort camera", choices=("best_effort", "reliable")),
    ParamSpec("qos_depth", 1, "subscription history depth; 1 keeps only the newest frame", low=1, high=100),
)
SPECS: dict[str, ParamSpec] = {spec.name: spec for spec in PARAMS}
RUNTIME: frozenset[str] = frozenset(spec.name for spec in PARAMS if spec.runtime)
FLOATS: frozenset[str] = frozenset(spec.name for spec in PARAMS if isinstance(spec.default, float))


def _number_problem(name: str, value: Any) -> str | None:
    """Why ``value`` is not a valid float parameter ``name`` (an int is fine: YAML ``2``, ``param set ... 0``)."""
    spec = SPECS[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{name} must be a number, got {value!r}"
    if spec.low is not None and not spec.low <= value <= spec.high:
        return f"{name} must be from {spec.low} to {spec.high}, got {value!r}"
    return None


def checked(values: Mapping[str, Any]) -> dict[str, Any]:
    """Values with float parameters as float; ConfigError naming every value outside its type, range or choices.

    rclpy declares float parameters with dynamic typing (it refuses an INTEGER for a DOUBLE otherwise, and
    checks no range for an INTEGER), so their type and range are checked here.
    """
    problems = [f"{name} must be one of {', '.join(SPECS[name].choices)}, got {value!r}"
                for name, value in values.items() if SPECS[name].choices and value not in SPECS[name].choices]
    problems += [problem for name, value in values.items() if name in FLOATS
                 for problem in [_number_problem(name, value)] if problem]
    if problems:
        raise ConfigError("; ".join(problems))
    return {name: float(value) if name in FLOATS else value for name, value in values.items()}


def caption_settings(values: Mapping[str, Any]) -> CaptionSettings:
    """Parameter values -> validated CaptionSettings (empty strings mean 'default'); batches of one frame."""
    return CaptionSettings(prompt=values["prompt"], max_new_tokens=values["max_new_tokens"],
                           num_beams=values["num_beams"], device=values["device"], dtype=values["dtype"],
                           merge=values["merge_adapter"], quantize=values["quantize"], batch_size=1)


class LiveCaptioner:
    """One captioner (the torch Captioner or the ONNX Runtime one) shared by the worker thread (``caption``)
    and the parameter callback (``apply``)."""

    def __init__(self, captioner: Any, adapter: str, merge: bool) -> None:
        self.captioner, self.adapter, self.merge = captioner, adapter, merge
        self._lock = threading.Lock()

    @classmethod
    def load(cls, values: Mapping[str, Any], loader: Callable[..., Any] | None = None) -> LiveCaptioner:
        """Load the base model (and adapter) once, or an ONNX export (runtime/captioners.py); BlipLoraError when
        it cannot be loaded."""
        captioner = (loader or load_captioner)(values["model"], caption_settings(values),
                                               adapter=values["adapter"] or None)
        return cls(captioner, values["adapter"], values["merge_adapter"])

    @property
    def device(self) -> str:
        model = getattr(self.captioner, "model", None)  # the torch Captioner's model, or the ONNX captioner's device
        return str(getattr(model, "device", None) or getattr(self.captioner, "device", "unknown"))

    def describe(self) -> str:
        """The decoding path, device, dtype and quantization (Captioner.describe); reads settings only, so it
        does not wait for a caption in progress."""
        return self.captioner.describe()

    def caption(self, image: Any) -> str:
        """(H, W, 3) uint8 RGB -> caption."""
        with self._lock:
            return self.captioner.caption([image])[0]

    def apply(self, changes: Mapping[str, Any]) -> str | None:
        """Apply model-side changes (adapter, merge_adapter, prompt, max_new_tokens, num_beams).

        Returns why they were refused, or None. A failed adapter swap puts the previous adapter back.
        """
        with self._lock:
            if "adapter" in changes or "merge_adapter" in changes:
                reason = self._swap_adapter(changes.get("adapter", self.adapter),
                                            changes.get("merge_adapter", self.merge))
                if reason:
                    return reason
            try:
                for name in ("prompt", "max_new_tokens", "num_beams"):
                    if name in changes:
                        setattr(self.captioner, name, changes[name])
            except BlipLoraError as error:  # CaptionSettings' validation
                return str(error)
        return None

    def _swap_adapter(self, adapter: str, merge: bool) -> str | None:
        try:
            self.captioner.set_adapter(adapter or None, merge=merge)
        except (BlipLoraError, OSError) as error:
            return self._restore(adapter, error)
        self.adapter, self.merge = adapter, merge
        return None

    def _restore(self, failed: str, error: Exception) -> str:
        kept = self.adapter or "the base model"
        try:
            self.captioner.set_adapter(self.adapter or None, merge=self.merge)
        except (BlipLoraError, OSError) as again:
            self.adapter = ""
            return (f"adapter {failed!r} not loaded ({error}); putting {kept!r} back failed too ({again}): "
                    "captioning with the base model alone")
        return f"adapter {failed!r} not loaded, kept {kept!r}: {error}"


def apply_changes(changes: Mapping[str, Any], live: LiveCaptioner, pipeline: CaptionPipeline) -> str | None:
    """Run-time parameter changes -> model and pipeline; the reason they were refused, or None.

    All or nothing: parameters that need a restart refuse the whole set.
    """
    fixed = sorted(name for name in changes if name in SPECS and name not in RUNTIME)
    if fixed:
        return f"{', '.join(fixed)} cannot change while the node runs: restart the node to change it"
    try:
        changes = checked({name: value for name, value in changes.items() if name in SPECS})
    except ConfigError as error:
        return str(error)
    reason = live.apply(changes)
    if reason:
        return reason
    if "max_rate_hz" in changes:
        pipeline.max_rate_hz = changes["max_rate_hz"]
    if "publish_on_change_only" in changes:
        pipeline.publish_on_change_only = changes["publish_on_change_only"]
    return None
