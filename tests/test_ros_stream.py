"""A 30 Hz 640x480 camera over real DDS into the launched node: captions arrive with their frames' stamps and
nothing fails. Latency and memory bounds are benchmarks: `python -m bench.node_pipeline --real-dds`."""

from __future__ import annotations

import pytest

from bench.node_pipeline import run_real_dds

pytestmark = [pytest.mark.ros, pytest.mark.slow, pytest.mark.xdist_group("ros_stream")]


def test_a_thirty_hz_stream_over_dds_is_captioned(ros_env, tiny_model_dir, tmp_path):
    result = run_real_dds(str(tiny_model_dir), 4.0, 30.0, tmp_path, env=ros_env, max_new_tokens=8)
    assert result.captions >= 1 and result.received >= 1 and result.errors == 0
    # every frame the node received was captioned or replaced by a newer one (newest wins); none queued up
    assert result.dropped + result.captions >= result.received - 2
    assert result.stamps_matched, "a caption whose stamp is no sent frame's"
