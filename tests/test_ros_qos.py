"""Large frames reach the launched node with its default QoS and Cyclone configuration, from a reliable and from
a best-effort camera: each frame is published exactly once and the test waits for its caption (a lost frame
never gets one). Delivery rates per resolution and setting: `python -m bench.qos_delivery`."""

from __future__ import annotations

import pytest

from bench.ros2_stack import probe
from tests.ros_env import launch, write_params

pytestmark = [pytest.mark.ros, pytest.mark.slow, pytest.mark.xdist_group("ros_qos")]

WIDTH, HEIGHT = 1920, 1080
FRAMES_PER_CAMERA = 3


def _frame(index: int, reliable: bool, **fields) -> dict:
    return dict(kind="image", encoding="rgb8", width=WIDTH, height=HEIGHT, step=WIDTH * 3, fill=index, sec=100 + index,
                nanosec=0, frame_id=f"hd{index}", reliable=reliable, **fields)


@pytest.mark.parametrize("reliable", [True, False], ids=["reliable_camera", "best_effort_camera"])
def test_1080p_frames_sent_once_are_all_captioned(ros_env, tiny_model_dir, tmp_path, reliable):
    params = write_params(tmp_path / "params.yaml", model=str(tiny_model_dir), device="cpu", max_rate_hz=0.0,
                          max_new_tokens=8)
    node = launch(ros_env, tmp_path, f"params_file:={params}", "namespace:=qos")  # default QoS, default Cyclone
    try:
        node.wait_for("[qos.blip_captioner]: captioning")
        # the first frame is published until it is captioned (both sides of discovery done), the rest once each
        frames = [_frame(0, reliable)] + [_frame(i, reliable, once=True) for i in range(1, FRAMES_PER_CAMERA + 1)]
        report = probe(ros_env, dict(topic="/qos/image", caption_topic="/qos/caption", frames=frames,
                                     frame_timeout_s=60.0), tmp_path, timeout=400)
        assert [f["frame_id"] for f in report["frames"]] == [f"hd{i}" for i in range(FRAMES_PER_CAMERA + 1)]
    finally:
        assert node.stop() == 0
    assert "Traceback" not in node.output()
