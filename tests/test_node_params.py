"""blip_captioner.params without ROS, and the live captioner it feeds (the tiny BLIP, not a stand-in)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from blip_lora_core.errors import ConfigError
from blip_lora_core.runtime.live import LiveCaptioner, adapter_hash

PACKAGE = Path(__file__).resolve().parents[1] / "ros2_ws" / "src" / "blip_captioner"


@pytest.fixture(scope="module")
def params():
    sys.path.insert(0, str(PACKAGE))
    try:
        from blip_captioner import params as module
    finally:
        sys.path.remove(str(PACKAGE))
    return module


def test_yaml_holds_every_parameter_with_the_node_defaults_and_no_empty_string(params):
    config = yaml.safe_load((PACKAGE / "config" / "captioner.yaml").read_text())
    values = config["/**"]["ros__parameters"]
    assert values == {spec.name: spec.default for spec in params.PARAMS}
    assert all(type(values[spec.name]) is type(spec.default) for spec in params.PARAMS)
    assert "" not in values.values()  # Humble's ros2 param load cannot read '' back from a dump
    assert params.FLOATS == {"max_rate_hz"}


def test_unset_words_become_the_cores_defaults(params):
    settings = params.caption_settings({spec.name: spec.default for spec in params.PARAMS})
    assert (settings.prompt, settings.device, settings.dtype, settings.quantize) == (None, None, None, None)
    assert params.live_changes({"adapter": "none", "merge_adapter": False, "max_rate_hz": 1.0}) == \
        {"adapter": "", "merge": False}
    with pytest.raises(ConfigError, match="dtype must be one of 'auto', 'fp32', 'float32', 'fp16', 'float16', 'bf16', "
                                          "'bfloat16', got 'fp8'"):
        params.checked({"dtype": "fp8"})


def test_captioning_and_pipeline_parameters_are_declared_by_the_core_settings(params):
    """help, range, choices and default of each such parameter come from the core's setting (one source);
    only the unset words and the node's rate are the node's own."""
    from blip_lora_core.models.caption_settings import CaptionSettings
    from blip_lora_core.runtime.pipeline import PipelineSettings
    from blip_lora_core.settings import setting_info

    declared = {**{name: setting_info(CaptionSettings, field) for name, field in params.CAPTION_FIELDS.items()},
                **{name: setting_info(PipelineSettings, name) for name in ("max_rate_hz", "publish_on_change_only")}}
    assert set(declared) == {"prompt", "device", "dtype", "quantize", "merge_adapter", "max_new_tokens", "num_beams",
                             "max_rate_hz", "publish_on_change_only"}
    for name, info in declared.items():
        spec, word = params.SPECS[name], params.UNSET.get(name, (None,))[0]
        assert spec.description.startswith(info.help) and (spec.low, spec.high) == (info.low, info.high), name
        assert spec.choices == ((word, *info.choices) if word and info.choices else info.choices), name
        assert spec.default == (2.0 if name == "max_rate_hz" else word if info.default is None else info.default)
    assert (params.SPECS["num_beams"].high, params.SPECS["max_new_tokens"].high) == (16, 512)


@pytest.fixture()
def live(tiny_model_dir):
    from blip_lora_core.models.caption_settings import CaptionSettings

    refusals = []
    captioner = LiveCaptioner.load(str(tiny_model_dir), CaptionSettings(device="cpu", max_new_tokens=8),
                                   refused=lambda kept, reason: refusals.append((kept, reason)))
    captioner.refusals = refusals
    return captioner


def test_changes_are_checked_at_once_and_applied_by_the_worker(live, tiny_model_dir):
    # the tiny model has 40 text positions: one for the start token, the prompt takes more
    assert live.check({"max_new_tokens": 40}) == \
        "max_new_tokens 40 is more than the model's text positions leave after the start token: at most 39"
    assert live.check({"max_new_tokens": 39}) is None
    limit = live.captioner.max_new_tokens_limit("a picture of")
    assert 0 < limit < 39 and live.check({"max_new_tokens": 39, "prompt": "a picture of"}).endswith(f"at most {limit}")
    assert "num_beams must be an integer in [1, 16]" in live.check({"num_beams": 0})
    live.queue({"prompt": "a picture of", "max_new_tokens": 5})
    assert live.captioner.prompt is None and live.pending  # nothing applied by the checking thread
    assert live.check({"max_new_tokens": 39}) is not None  # checked against the queued prompt
    image = np.full((32, 32, 3), 90, np.uint8)
    result = live.caption(image)
    assert (live.captioner.prompt, live.captioner.max_new_tokens, live.pending) == ("a picture of", 5, False)
    assert result.text == live.captioner.caption([image])[0] and 0 < result.confidence <= 1


def test_a_failed_swap_keeps_the_adapter_and_says_so(live, tmp_path, adapters):
    live.queue({"adapter": adapters["a"]})
    live.apply_pending()
    assert (live.adapter.path, live.adapter.name) == (adapters["a"], "a")
    assert live.adapter.hash == adapter_hash(adapters["a"])
    missing = str(tmp_path / "missing.safetensors")
    assert live.check({"adapter": missing}).startswith(f"adapter '{missing}' not loaded, kept '{adapters['a']}'")
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(Path(adapters["a"]).read_bytes())
    live.queue({"adapter": str(broken)})
    broken.write_bytes(b"not an adapter any more")  # changed between the check and the swap
    live.apply_pending()
    assert live.adapter.path == adapters["a"]
    (kept, reason), = live.refusals
    assert kept == {"adapter": adapters["a"], "merge": True} and reason.startswith(f"adapter '{broken}' not loaded")
