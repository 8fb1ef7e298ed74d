"""Shared fixtures: a tiny BLIP built locally (no network), seeded."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
# make test runs two pytest workers on two cores: one torch thread each, or OpenMP threads stall each other
torch.set_num_threads(1)

# the real-ROS fixtures (ros_env, adapters, reference) live in tests/ros_env.py, the ONNX exports in
# tests/onnx_fixtures.py, the Label Studio server in tests/label_studio_server.py; tests/skip_policy.py lists
# every skip and fails a CI run on one not on its reviewed list
pytest_plugins = ["ros_env", "onnx_fixtures", "label_studio_server", "skip_policy"]

SEED_BLOCKS = Path(__file__).resolve().parents[2] / "shared" / "data" / "seed_blocks"
CAPTIONS = [
    "One blue cube", "One green cube", "One red cube", "One wood cube",
    "A blue cube on top of a green cube", "A green cube on top of a blue cube",
    "No cube is visible in the image", "a picture of",
]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A randomly initialised tiny BLIP saved with save_pretrained (built once per test process)."""
    from blip_lora_core.models.loading import build_tiny_blip

    return build_tiny_blip(tmp_path_factory.mktemp("tiny_blip"), CAPTIONS, seed=0)


@pytest.fixture()
def tiny_bundle(tiny_model_dir):
    """A fresh copy of the tiny model, tokenizer and preprocessing, loaded from its folder on the CPU."""
    from blip_lora_core.models.loading import load_blip

    return load_blip(str(tiny_model_dir), device="cpu")


@pytest.fixture(scope="session")
def to_tensor():
    """The image transform of tests that need no model: PIL image -> (3, 16, 16) float tensor in [0, 1]."""
    import numpy as np

    def image_tensor(image) -> torch.Tensor:
        return torch.from_numpy(np.asarray(image.resize((16, 16)), dtype=np.float32) / 255.0).permute(2, 0, 1)

    return image_tensor


@pytest.fixture(scope="session")
def train_config(tiny_model_dir):
    """train_config(data, out, **overrides) -> a TrainConfig for a few seconds of training of the tiny model
    on CPU: fp32, batch 2, LoRA r 4 alpha 8 without dropout, no augmentation, no workers, no progress bar."""
    import dataclasses

    from blip_lora_core.train.augment import AugmentConfig
    from blip_lora_core.train.config import load_config

    def make(data, out, **overrides):
        values = dict(model=str(tiny_model_dir), train_file=str(data), output_dir=str(out), batch_size=2,
                      grad_accum=1, epochs=1, lr=1e-2, warmup_steps=1, precision="fp32", num_workers=0,
                      progress=False, lora=dict(r=4, alpha=8, dropout=0.0), seed=3, max_new_tokens=5,
                      augment=dataclasses.asdict(AugmentConfig.off()))
        return load_config(None, {**values, **overrides})

    return make


@pytest.fixture()
def pixels() -> torch.Tensor:
    """(2, 3, 64, 64) seeded random pixel values for the tiny model."""
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


@pytest.fixture()
def seed_blocks() -> Path:
    if not (SEED_BLOCKS / "annotations.jsonl").is_file():
        pytest.skip(f"seed_blocks dataset not found at {SEED_BLOCKS}")
    return SEED_BLOCKS
