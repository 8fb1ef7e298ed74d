"""A full disk: every save fails with an error naming the file and leaves the previous file whole.

ENOSPC is simulated three ways: the temporary file fills up part way (os.fdopen / open handles that
take a few bytes, then fail), fsync fails (delayed allocation), and the rename fails.
"""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch
from faults import assert_clean_error, failing, full_disk, log_losses, same_adapter, temp_files

from blip_lora_core import BlipLoraError, LoraConfig, inject_lora, read_adapter, save_adapter
from blip_lora_core.atomic import write_jsonl
from blip_lora_core.lora.hooks import lora_layers
from blip_lora_core.train.augment import AugmentConfig
from blip_lora_core.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from blip_lora_core.train.data import read_jsonl
from blip_lora_core.train.loop import train
from blip_lora_training.cli import main

NO_SPACE = os.strerror(28)  # "No space left on device"
MODES = ["empty", "part", "fsync", "replace"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny model trains 3x faster on one thread when the 2 cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture()
def disk_full(monkeypatch):
    """disk_full(mode, name_part): a context in which writes of files whose name holds name_part fail."""

    def make(mode: str, name_part: str):
        if mode in ("empty", "part"):
            return full_disk(monkeypatch, room=0 if mode == "empty" else 64, when=lambda name: name_part in name)
        if mode == "fsync":
            return failing(monkeypatch, os, "fsync", lambda fd: name_part in os.readlink(f"/proc/self/fd/{fd}"))
        return failing(monkeypatch, os, "replace", lambda src, dst: name_part in os.fspath(dst))

    return make


def _randomise(model, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in lora_layers(model).values():
            module.lora_B.copy_(torch.randn(module.lora_B.shape, generator=gen))


@pytest.mark.parametrize("mode", MODES)
def test_save_adapter_on_a_full_disk_keeps_the_previous_adapter(tiny_bundle, tmp_path, disk_full, mode):
    config = LoraConfig(r=4, alpha=8)
    inject_lora(tiny_bundle.model, config)
    path = save_adapter(tiny_bundle.model, tmp_path / "adapter.safetensors", config=config)
    before = path.read_bytes()
    _randomise(tiny_bundle.model, 1)
    with disk_full(mode, "adapter.safetensors"), pytest.raises(BlipLoraError) as error:
        save_adapter(tiny_bundle.model, path, config=config)
    assert str(error.value) == f"could not write {path}: {NO_SPACE}"
    assert path.read_bytes() == before and read_adapter(path)
    assert not temp_files(tmp_path)


def _optimizer_with_state():
    param = torch.nn.Parameter(torch.ones(4, 3))
    optimizer = torch.optim.AdamW([param])
    param.grad = torch.full((4, 3), 0.5)
    optimizer.step()
    return {"w": param}, optimizer


@pytest.mark.parametrize("mode", MODES)
def test_save_checkpoint_on_a_full_disk_keeps_the_previous_checkpoints(tmp_path, disk_full, mode):
    params, optimizer = _optimizer_with_state()
    folder = tmp_path / "checkpoints"
    first = save_checkpoint(folder, 2, params, optimizer, {}, keep=1)
    with disk_full(mode, "step_00000004"), pytest.raises(BlipLoraError) as error:
        save_checkpoint(folder, 4, params, optimizer, {}, keep=1)
    assert str(error.value) == f"could not write {folder / 'step_00000004.safetensors'}: {NO_SPACE}"
    assert sorted(folder.iterdir()) == [first]  # nothing pruned, nothing half written
    assert latest_checkpoint(folder).step == 2 and load_checkpoint(first).step == 2


@pytest.mark.parametrize("mode", MODES)
def test_write_jsonl_on_a_full_disk_keeps_the_previous_file(tmp_path, disk_full, mode):
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    path = tmp_path / "annotations.jsonl"
    write_jsonl(path, [{"image": "a.png", "text": "One red cube"}])
    before = path.read_bytes()
    rows = [{"image": "a.png", "text": f"caption {i} " * 20} for i in range(50)]
    with disk_full(mode, "annotations.jsonl"), pytest.raises(BlipLoraError) as error:
        write_jsonl(path, rows)
    assert str(error.value) == f"could not write {path}: {NO_SPACE}"
    assert path.read_bytes() == before and len(read_jsonl(path)[0]) == 1
    assert not temp_files(tmp_path)


# -- during training -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def disk_data(tmp_path_factory):
    from blip_lora_training.synth import write_dataset

    return write_dataset(tmp_path_factory.mktemp("disk") / "data", 6, seed=0, size=(64, 64))


@pytest.fixture(scope="module")
def uninterrupted(train_config, disk_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("disk_reference")
    # the command line's default augmentation: a resumed run must draw the same crops, colours and blurs
    config = train_config(disk_data, out, epochs=2, lora=dict(r=4, alpha=8, dropout=0.1), seed=5, checkpoint_every=2,
                          augment=dataclasses.asdict(AugmentConfig()))
    return train(config).output_dir / "last.safetensors"


def _argv(model_dir, data, out, *extra):
    return ["train", "--model", str(model_dir), "--train", str(data), "--out", str(out), "--batch-size", "2",
            "--grad-accum", "1", "--epochs", "2", "--lr", "0.01", "--warmup-steps", "1", "--precision", "fp32",
            "--workers", "0", "--no-progress", "--r", "4", "--alpha", "8", "--dropout", "0.1", "--seed", "5",
            "--checkpoint-every", "2", *extra]


@pytest.mark.parametrize("mode", ["part", "replace"])
def test_training_stops_on_a_full_disk_and_resumes_when_space_returns(tiny_model_dir, disk_data, uninterrupted,
                                                                      tmp_path, disk_full, capsys, mode):
    out = tmp_path / "run"
    with disk_full(mode, "step_00000004"):
        code = main(_argv(tiny_model_dir, disk_data, out))
    target = out / "checkpoints" / "step_00000004.safetensors"
    line = assert_clean_error(code, capsys.readouterr().err, str(target), NO_SPACE)
    assert line == f"blip-lora train: error: could not write {target}: {NO_SPACE}"
    assert latest_checkpoint(out / "checkpoints").step == 2 and not temp_files(out)
    assert main(_argv(tiny_model_dir, disk_data, out, "--resume")) == 0
    assert same_adapter(out / "last.safetensors", uninterrupted)


def test_a_full_disk_under_the_training_log_stops_with_its_name_and_resume_works(
        tiny_model_dir, disk_data, uninterrupted, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    appends = {"n": 0}

    def third_append(name: str) -> bool:
        appends["n"] += name.endswith("train_log.csv")
        return name.endswith("train_log.csv") and appends["n"] == 3

    with full_disk(monkeypatch, room=7, when=third_append):
        code = main(_argv(tiny_model_dir, disk_data, out))
    log = out / "train_log.csv"
    assert_clean_error(code, capsys.readouterr().err, str(log), NO_SPACE)
    assert main(_argv(tiny_model_dir, disk_data, out, "--resume")) == 0
    assert same_adapter(out / "last.safetensors", uninterrupted)
    assert log_losses(log) == log_losses(uninterrupted.with_name("train_log.csv"))  # the torn row is gone
    assert (out / "loss_curve.png").is_file()


def test_a_full_disk_under_the_final_adapter_keeps_last_and_names_the_file(tiny_model_dir, disk_data, tmp_path,
                                                                           disk_full, capsys):
    out = tmp_path / "run"
    with disk_full("part", "lora_r4_"):
        code = main(_argv(tiny_model_dir, disk_data, out, "--max-steps", "1"))
    line = assert_clean_error(code, capsys.readouterr().err, str(out / "lora_r4_a8_bs2_"), NO_SPACE)
    assert read_adapter(out / "last.safetensors") and not temp_files(out), line


def test_a_full_disk_under_the_loss_curve_warns_and_keeps_the_finished_adapter(tiny_model_dir, disk_data, tmp_path,
                                                                              monkeypatch, capsys, caplog):
    out = tmp_path / "run"
    with full_disk(monkeypatch, room=100, when=lambda name: "loss_curve" in name), caplog.at_level("WARNING"):
        code = main(_argv(tiny_model_dir, disk_data, out, "--max-steps", "1"))
    assert code == 0, capsys.readouterr().err
    assert f"could not write {out / 'loss_curve.png'}: {NO_SPACE}" in caplog.text
    assert read_adapter(out / "last.safetensors") and list(out.glob("lora_r4_*.safetensors"))
    assert not list(out.glob("loss_curve*"))
