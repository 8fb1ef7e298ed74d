"""blip_captioner.params without ROS: the YAML, float parameters given as integers, all-or-nothing changes."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from blip_lora_core.errors import ConfigError
from blip_lora_core.runtime.pipeline import CaptionPipeline

PACKAGE = Path(__file__).resolve().parents[1] / "ros2_ws" / "src" / "blip_captioner"


@pytest.fixture(scope="module")
def params():
    sys.path.insert(0, str(PACKAGE))
    try:
        from blip_captioner import params as module
    finally:
        sys.path.remove(str(PACKAGE))
    return module


class RecordingCaptioner:
    """Stands in for Captioner: remembers the settings LiveCaptioner.apply gives it."""

    def __init__(self) -> None:
        self.prompt, self.max_new_tokens, self.num_beams = None, 30, 1
        self.model = SimpleNamespace(device="cpu")

    def set_adapter(self, path, merge=True) -> None:
        if path and "missing" in path:
            raise OSError(f"{path}: no such file")


def test_yaml_holds_every_parameter_with_the_node_defaults(params):
    config = yaml.safe_load((PACKAGE / "config" / "captioner.yaml").read_text())
    values = config["/**"]["ros__parameters"]
    assert values == {spec.name: spec.default for spec in params.PARAMS}
    assert all(type(values[spec.name]) is type(spec.default) for spec in params.PARAMS)
    assert params.FLOATS == {"max_rate_hz"}


@pytest.mark.parametrize("given, expected", [(2, 2.0), (0, 0.0), (2.5, 2.5), (1000, 1000.0)])
def test_float_parameters_take_integers_as_floats(params, given, expected):
    out = params.checked({"max_rate_hz": given, "num_beams": 3})
    assert out == {"max_rate_hz": expected, "num_beams": 3} and type(out["max_rate_hz"]) is float


@pytest.mark.parametrize("given, message", [
    ("fast", "max_rate_hz must be a number, got 'fast'"), (True, "max_rate_hz must be a number, got True"),
    (None, "max_rate_hz must be a number, got None"), (-1, "max_rate_hz must be from 0.0 to 1000.0, got -1"),
    (1001, "max_rate_hz must be from 0.0 to 1000.0, got 1001")])
def test_bad_float_values_are_refused_naming_the_parameter(params, given, message):
    with pytest.raises(ConfigError) as info:
        params.checked({"max_rate_hz": given, "qos_reliability": "fast"})
    assert str(info.value) == f"qos_reliability must be one of best_effort, reliable, got 'fast'; {message}"


def test_run_time_changes_are_all_or_nothing(params):
    live = params.LiveCaptioner(RecordingCaptioner(), "", True)
    pipeline = CaptionPipeline(lambda image: "", lambda text, stamp: None, max_rate_hz=2.0)
    assert params.apply_changes({"max_rate_hz": "fast", "prompt": "x"}, live, pipeline) == \
        "max_rate_hz must be a number, got 'fast'"
    assert live.captioner.prompt is None and pipeline.max_rate_hz == 2.0
    assert params.apply_changes({"model": "other", "prompt": "x"}, live, pipeline) == \
        "model cannot change while the node runs: restart the node to change it"
    assert params.apply_changes({"max_rate_hz": 0, "prompt": "a picture of", "num_beams": 2}, live, pipeline) is None
    assert (pipeline.max_rate_hz, live.captioner.prompt, live.captioner.num_beams) == (0.0, "a picture of", 2)
    reason = params.apply_changes({"adapter": "/a/missing.safetensors"}, live, pipeline)
    assert reason == "adapter '/a/missing.safetensors' not loaded, kept 'the base model': " \
                     "/a/missing.safetensors: no such file"
    assert live.adapter == ""
