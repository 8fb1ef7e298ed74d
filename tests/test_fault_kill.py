"""Killed training: SIGKILL at random moments and inside file writes, then --resume; SIGINT saves and stops.

Every kill is checked for what a user could find afterwards: every file under its final name loads,
temporary files are dot-prefixed and never taken for a checkpoint, and --resume ends with an adapter
equal byte for byte to the one of an uninterrupted run.
"""

from __future__ import annotations

import functools
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from faults import TEMP_NAME, WarmCli, cli_env, log_losses, same_adapter, temp_files

from blip_lora_core.lora.adapter_io import read_adapter
from blip_lora_core.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from blip_lora_core.train.config import load_config

SETTINGS = dict(batch_size=2, grad_accum=1, epochs=2, lr=1e-2, warmup_steps=1, precision="fp32", num_workers=0,
                progress=False, lora=dict(r=4, alpha=8, dropout=0.1), seed=3, augment={"colour_jitter": 0.3},
                checkpoint_every=1)
STEPS = 12  # 12 images, batch 2, 2 epochs
SLOW_WRITE = 0.15  # seconds before each atomic rename in the trials that kill inside a write


@pytest.fixture(scope="module")
def run_setup(tiny_model_dir, tmp_path_factory):
    """Data, a config file, the warm launcher, and the uninterrupted reference run."""
    from blip_lora_training.synth import write_dataset

    root = tmp_path_factory.mktemp("kill")
    data = write_dataset(root / "data", 12, seed=0, size=(64, 64))
    config = root / "train.yaml"
    config.write_text(yaml.safe_dump({"model": str(tiny_model_dir), "train_file": str(data), **SETTINGS}))
    cli = WarmCli(cli_env(OMP_NUM_THREADS="1"))  # one thread: 3x faster on 2 busy cores
    assert cli.run(_train(config, root / "reference"), root / "reference-log") == 0, _log(root / "reference-log")
    yield cli, config, root, root / "reference" / "last.safetensors"
    cli.close()


def _train(config: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--config", str(config), "--out", str(out), *extra]


def _log(prefix: Path) -> str:
    return "".join(Path(f"{prefix}{s}").read_text() for s in (".out", ".err") if Path(f"{prefix}{s}").exists())


@pytest.mark.slow
def test_sigkill_at_random_moments_and_inside_writes_then_resume_equals_uninterrupted(run_setup):
    cli, config, root, reference = run_setup
    rng = random.Random(6)
    # a random moment: a random point of the step after log row k (k <= STEPS - 3, so that at least two steps
    # and the final writes remain and the kill always lands in a running process)
    trials = [("random", (rng.randint(1, STEPS - 3), rng.random())) for _ in range(6)]
    trials += [("write", rf"\.step_{rng.randint(1, STEPS - 1):08d}\.safetensors\..*"),
               ("write", rf"\.step_{rng.randint(1, STEPS - 1):08d}\.safetensors\..*"),
               ("write", r"\.last\.safetensors\..*"), ("write", r"\.lora_r4_.*")]
    landed_in_write = 0
    for number, (kind, when) in enumerate(trials):
        out, log = root / f"trial{number}", root / f"trial{number}-log"
        pid = cli.start(_train(config, out), log, slow_write=SLOW_WRITE if kind == "write" else 0.0)
        if kind == "random":
            row, fraction = when
            alive = functools.partial(_running, pid)
            _wait_for_rows(out / "train_log.csv", row - 1, alive)
            step_began = time.monotonic()
            _wait_for_rows(out / "train_log.csv", row, alive)
            time.sleep(fraction * (time.monotonic() - step_began))  # into the next step, by a random fraction
        else:
            _wait_for_temp_file(out, when, pid)
        os.kill(pid, signal.SIGKILL)
        assert cli.wait(pid) == -signal.SIGKILL, f"trial {number}: the run was not killed\n{_log(log)}"
        if kind == "random":
            assert not (out / "last.safetensors").exists(), f"trial {number}: the kill landed after the training"
        temps = _check_what_a_kill_leaves(out)
        if kind == "write":
            assert any(re_full(when, p.name) for p in temps), (when, temps)
            landed_in_write += 1
        assert cli.run(_train(config, out, "--resume"), log) == 0, _log(log)
        named = list(out.glob("lora_*.safetensors"))
        assert named and all(same_adapter(p, reference) for p in [out / "last.safetensors", *named]), \
            f"trial {number} ({kind} {when})"
        assert log_losses(out / "train_log.csv") == log_losses(reference.with_name("train_log.csv"))
    assert landed_in_write == 4


def re_full(pattern: str, name: str) -> bool:
    import re

    return re.fullmatch(pattern, name) is not None


def _wait_for_temp_file(out: Path, pattern: str, pid: int, timeout: float = 60.0) -> None:
    """Poll until a temporary file whose name matches pattern exists under out (the run is inside a write)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if out.is_dir() and any(re_full(pattern, p.name) for p in temp_files(out)):
            return
        time.sleep(0.002)
    os.kill(pid, signal.SIGKILL)
    raise AssertionError(f"no temporary file {pattern} appeared in {out}")


def _check_what_a_kill_leaves(out: Path) -> list[Path]:
    """Every file under its final name is whole; temp files are dot-prefixed and ignored. Returns the temps."""
    if not out.exists():
        return []
    checkpoints = out / "checkpoints"
    for path in out.rglob("*.safetensors"):
        assert not path.name.startswith("."), path
        if path.parent == checkpoints:
            load_checkpoint(path)
        else:
            read_adapter(path)
    if (out / "config.yaml").exists():
        load_config(out / "config.yaml")
    temps = temp_files(out)
    for path in out.rglob("*"):
        assert not path.name.startswith(".") or path in temps, path
    steps = sorted(checkpoints.glob("step_*.safetensors")) if checkpoints.is_dir() else []
    newest = latest_checkpoint(checkpoints)
    assert (newest.path if newest else None) == (steps[-1] if steps else None)
    return temps


def test_latest_checkpoint_ignores_partial_temporary_files(tmp_path):
    """A newer checkpoint half written to its temporary name (a kill mid-write) is never picked up."""
    import torch

    param = torch.nn.Parameter(torch.ones(3, 2))
    optimizer = torch.optim.AdamW([param])
    param.grad = torch.ones(3, 2)
    optimizer.step()
    folder = tmp_path / "checkpoints"
    good = save_checkpoint(folder, 4, {"w": param}, optimizer, {})
    data = good.read_bytes()
    for cut in (0, 8, len(data) // 2, len(data) - 1):
        (folder / f".step_00000009.safetensors.k{cut}x.tmp").write_bytes(data[:cut])
    (folder / ".step_00000010.safetensors.whole.tmp").write_bytes(data)  # whole, but never renamed
    assert all(TEMP_NAME.fullmatch(p.name) for p in folder.iterdir() if p != good)
    newest = latest_checkpoint(folder)
    assert newest.path == good and newest.step == 4


@pytest.mark.slow
def test_sigint_saves_a_checkpoint_at_the_last_finished_step_and_exits_130(run_setup, tmp_path):
    """Ctrl-C in a real `python -m blip_lora_training.cli train` (checkpoint_every 0, the CLI default)."""
    cli, config, root, reference = run_setup
    settings = yaml.safe_load(config.read_text())
    settings["checkpoint_every"] = 0
    no_checkpoints = tmp_path / "no_checkpoints.yaml"
    no_checkpoints.write_text(yaml.safe_dump(settings))
    out = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "blip_lora_training.cli", *_train(no_checkpoints, out)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=cli_env(OMP_NUM_THREADS="1"))
    try:
        _wait_for_rows(out / "train_log.csv", 3, lambda: process.poll() is None)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    rows = (out / "train_log.csv").read_text().splitlines()[1:]
    last_step = int(rows[-1].split(",")[0])
    assert 3 <= last_step < STEPS
    assert f"blip-lora train: interrupted: stopped after step {last_step}; resume with --resume" in stderr
    saved = latest_checkpoint(out / "checkpoints")
    assert saved is not None and saved.step == last_step
    assert not temp_files(out)
    assert cli.run(_train(no_checkpoints, out, "--resume"), tmp_path / "resume") == 0, _log(tmp_path / "resume")
    assert same_adapter(out / "last.safetensors", reference)
    assert log_losses(out / "train_log.csv") == log_losses(reference.with_name("train_log.csv"))


def _running(pid: int) -> bool:
    """Whether the launcher's child pid is still running (not a zombie waiting for its exit code)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _wait_for_rows(csv_path: Path, rows: int, alive, timeout: float = 120.0) -> None:
    """Poll until the training log has `rows` rows; alive() says whether the run still runs."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if csv_path.exists() and len(csv_path.read_text().splitlines()) > rows:
            return
        assert alive(), f"the run ended before {csv_path} had {rows} rows"
        time.sleep(0.002)
    raise AssertionError(f"{csv_path} did not reach {rows} rows")


def test_ctrl_c_during_the_last_step_finishes_and_writes_the_adapter(tiny_model_dir, tmp_path):
    """Nothing is left to resume after the last step: the run ends normally instead of losing the step."""
    import threading

    import blip_lora_core.train.loop as train_module
    from blip_lora_training.synth import write_dataset

    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers need the main thread")
    data = write_dataset(tmp_path / "data", 4, seed=0, size=(64, 64))
    config = load_config(None, {**SETTINGS, "model": str(tiny_model_dir), "train_file": str(data),
                                "output_dir": str(tmp_path / "run"), "epochs": 1, "checkpoint_every": 0})
    original, calls = train_module.token_loss_sum, {"n": 0}

    def interrupted_at_the_last_step(*args):
        calls["n"] += 1
        if calls["n"] == 2:
            signal.raise_signal(signal.SIGINT)
        return original(*args)

    train_module.token_loss_sum = interrupted_at_the_last_step
    try:
        result = train_module.train(config)
    finally:
        train_module.token_loss_sum = original
    assert result.steps == 2 and result.adapter.is_file()
    assert not (tmp_path / "run" / "checkpoints").exists()
