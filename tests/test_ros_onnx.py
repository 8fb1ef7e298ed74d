"""The blip_captioner node on a real ROS 2 with an ONNX export as its `model`: ONNX Runtime captions the frames
exactly as the torch path would, the start-up line and /diagnostics name the provider, the prompt changes at
run time and another adapter is refused (it is merged into the export)."""

from __future__ import annotations

import pytest
from ros_env import MAX_NEW_TOKENS, launch, ros2, write_params
from test_ros_node import frames_of, photos  # noqa: F401 - photos is a fixture, used by name

from bench.ros2_stack import probe

pytestmark = [pytest.mark.ros, pytest.mark.slow, pytest.mark.xdist_group("ros_onnx")]
TOPIC = "/onnx_cam/image_raw"
NODE = "/blip_captioner"
DECODER = "onnxruntime CPU, cpu, fp32, quantize none"


@pytest.fixture(scope="module")
def exported(tiny_model_dir, adapters, tmp_path_factory):
    """The tiny BLIP with adapter a merged, exported to ONNX."""
    from blip_lora_core.export.onnx_export import export_onnx

    out = tmp_path_factory.mktemp("ros_onnx") / "export"
    export_onnx(str(tiny_model_dir), out, adapter=adapters["a"])
    return out


def test_the_node_captions_with_an_onnx_export(ros_env, exported, adapters, reference, photos, tmp_path):  # noqa: F811
    params = write_params(tmp_path / "params.yaml", model=str(exported), adapter=adapters["a"], max_rate_hz=0.0,
                          max_new_tokens=MAX_NEW_TOKENS)
    node = launch(ros_env, tmp_path, f"params_file:={params}", "device:=cpu", f"image_topic:={TOPIC}")
    try:
        node.wait_for("[blip_captioner]: captioning")
        assert DECODER in node.output()  # the start-up line names the runtime and its provider
        frames, seen = frames_of(photos, start=600, stamp_now=True)
        report = probe(ros_env, dict(topic=TOPIC, frames=frames, diagnostics_s=1.5), tmp_path)
        expected = reference(seen, adapters["a"])
        assert expected != reference(seen)  # the adapter's captions: it is merged into the export
        assert [frame["text"] for frame in report["frames"]] == expected
        ours = [d for d in report["diagnostics"] if d["name"] == f"{NODE}: captioning"]
        assert ours and ours[-1]["values"]["decoder"] == DECODER

        refused = ros2(ros_env, "param", "set", NODE, "adapter", adapters["b"])
        assert refused.startswith(f"Setting parameter failed: adapter '{adapters['b']}' not loaded, kept "
                                  f"'{adapters['a']}'") and "adapters cannot change at run time" in refused
        assert ros2(ros_env, "param", "set", NODE, "prompt", "a picture of") == "Set parameter successful"
        frames, seen = frames_of(photos[:2], start=610)
        report = probe(ros_env, dict(topic=TOPIC, frames=frames), tmp_path)
        assert [frame["text"] for frame in report["frames"]] == reference(seen, adapters["a"], prompt="a picture of")
        assert node.running and "Traceback" not in node.output()
    finally:
        assert node.stop() == 0
