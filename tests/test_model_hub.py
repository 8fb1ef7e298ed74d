"""Loading a model by hub id without a network: one line at once, or the cached copy; never a minute of retries.

The hub endpoint is a local port: one bound without listening refuses connections (no network), one that
listens accepts them (a hub that answers). The Hugging Face cache is a temporary folder.
"""

from __future__ import annotations

import logging
import shutil
import socket
from collections.abc import Iterator

import pytest
import torch
from huggingface_hub import constants

from blip_lora_core.errors import BlipLoraError
from blip_lora_core.models.hub import model_source
from blip_lora_core.models.loading import load_blip

REPO = "someone/blip-captions"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture()
def closed_port() -> Iterator[int]:
    """A local port that refuses connections (bound, not listening) as long as the test runs."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.fixture()
def online_mode(monkeypatch, tmp_path):
    """Not in offline mode (the suite sets HF_HUB_OFFLINE), no proxy, and an empty cache."""
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "hub"


def test_no_network_and_no_cached_copy_is_one_error_at_once(online_mode, monkeypatch, closed_port):
    endpoint = f"http://127.0.0.1:{closed_port}"
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    with pytest.raises(BlipLoraError) as raised:
        load_blip(REPO, device="cpu")
    assert str(raised.value) == (f"cannot load BLIP model {REPO!r}: it is not in the Hugging Face cache on this "
                                 f"machine and {endpoint} cannot be reached ([Errno 111] Connection refused); use a "
                                 f"local model folder, or connect once to download it")


def test_no_network_loads_the_cached_copy(online_mode, monkeypatch, closed_port, tiny_model_dir, caplog):
    snapshot = online_mode / f"models--{REPO.replace('/', '--')}" / "snapshots" / COMMIT
    shutil.copytree(tiny_model_dir, snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text(COMMIT)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{closed_port}")
    with caplog.at_level(logging.WARNING):
        bundle = load_blip(REPO, device="cpu")
    assert f"cannot be reached ([Errno 111] Connection refused): loading the cached copy of {REPO}" in caplog.text
    reference = load_blip(str(tiny_model_dir), device="cpu")
    assert bundle.name == REPO
    for (name, got), (_, expected) in zip(bundle.model.state_dict().items(), reference.model.state_dict().items(),
                                          strict=True):
        assert torch.equal(got, expected), name


def test_a_hub_that_answers_is_left_to_transformers(online_mode, monkeypatch):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        assert model_source(REPO) == REPO


def test_offline_mode_and_local_folders_are_not_probed(monkeypatch, tiny_model_dir, closed_port):
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{closed_port}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert model_source(REPO) == REPO  # transformers reads the cache itself, at once
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    assert model_source(str(tiny_model_dir)) == str(tiny_model_dir)
