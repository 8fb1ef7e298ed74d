"""A 30 Hz 640x480 camera over real DDS into the launched node for 20 s: captions stay fresh, memory flat.

The same run as `python -m bench.node_pipeline --real-dds` (its second, real-DDS row).
"""

from __future__ import annotations

import numpy as np
import pytest

from bench.node_pipeline import run_real_dds

pytestmark = [pytest.mark.ros, pytest.mark.slow, pytest.mark.ros_once, pytest.mark.xdist_group("ros_stream")]
FPS, SECONDS = 30.0, 20.0


def test_thirty_hz_stream_over_dds_keeps_captions_fresh_and_memory_flat(ros_env, tiny_model_dir, tmp_path):
    result = run_real_dds(str(tiny_model_dir), SECONDS, FPS, tmp_path, env=ros_env, max_new_tokens=8)
    p95 = float(np.percentile(result.ages, 95))
    print(f"\nreal DDS: sent {result.frames}, received {result.received}, captions {result.captions}, "
          f"dropped {result.dropped}, inference {result.inference_s * 1000:.1f} ms, age p95 {p95 * 1000:.1f} ms "
          f"({p95 / result.inference_s:.2f}x), RSS drift {result.rss_drift_mib():+.1f} MiB")
    assert result.frames >= 0.9 * FPS * SECONDS and result.received >= 0.9 * result.frames
    assert result.errors == 0 and result.captions >= SECONDS  # at least one caption a second
    # every frame the node received was captioned or dropped as stale (newest wins); none queued up
    assert result.dropped + result.captions >= result.received - 2
    assert p95 <= 2 * (result.inference_s + 1 / FPS) + 0.1, (p95, result.inference_s)
    assert abs(result.rss_drift_mib()) < 40, result.rss
