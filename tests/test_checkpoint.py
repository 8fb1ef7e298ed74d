"""Training checkpoints: what goes in comes back out, in order."""

from __future__ import annotations

import torch

from blip_lora_core.train import checkpoint
from blip_lora_core.train.checkpoint import load_checkpoint, save_checkpoint


def test_per_gpu_rng_states_come_back_in_gpu_order_with_ten_or_more_gpus(tmp_path, monkeypatch):
    """12 GPUs: state i must go back to GPU i (sorted as text, 10 and 11 would land between 1 and 2)."""
    states = [torch.full((16,), i, dtype=torch.uint8) for i in range(12)]
    real = checkpoint.rng_state
    monkeypatch.setattr(checkpoint, "rng_state", lambda: {**real(), "cuda": [s.clone() for s in states]})
    param = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.SGD([param], lr=0.1)
    path = save_checkpoint(tmp_path, 7, {"p": param}, optimizer, {})
    loaded = load_checkpoint(path)
    assert [int(s[0]) for s in loaded.rng["cuda"]] == list(range(12))
    assert loaded.step == 7 and torch.equal(loaded.params["p"], torch.ones(3))
