"""The training loop: schedule, accumulation, resume, NaN stop, configuration, DDP."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from blip_lora_core import ConfigError, TrainingError, read_adapter
from blip_lora_core.train.config import load_config
from blip_lora_core.train.loop import train
from blip_lora_core.train.schedule import lr_factor

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory) -> Path:
    from blip_lora_training.synth import write_dataset

    return write_dataset(tmp_path_factory.mktemp("synth") / "data", 12, seed=0, size=(64, 64))


def _adapter_tensors(path):
    return read_adapter(path)[1]


# -- schedule ------------------------------------------------------------------------------------

def test_schedule_warms_up_linearly_then_reaches_the_floor_at_the_last_step():
    factors = [lr_factor(s, 10, 3, 0.1) for s in range(10)]
    assert factors[:3] == [1 / 3, 2 / 3, 1.0]
    assert factors[-1] == pytest.approx(0.1, abs=1e-12)
    assert all(a >= b for a, b in zip(factors[2:], factors[3:], strict=False))
    assert factors[6] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 3 / 6)))
    assert lr_factor(0, 1, 5, 0.0) == 0.0
    assert lr_factor(9, 10, 3) == pytest.approx(0.0, abs=1e-12)  # the floor is 0 by default
    with pytest.raises(ValueError):
        lr_factor(10, 10, 3)


# -- configuration -------------------------------------------------------------------------------

def test_yaml_defaults_match_the_original_project():
    config = load_config(REPO / "config" / "train.yaml")
    assert (config.batch_size, config.grad_accum, config.lr, config.lora.r, config.lora.alpha, config.lora.dropout,
            config.warmup_steps, config.precision) == (2, 4, 1e-4, 16, 32.0, 0.05, 100, "fp16")
    assert config.model == "Salesforce/blip-image-captioning-large"


def test_unknown_key_and_wrong_type_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: 0.1\nbatchsize: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown setting\(s\): batchsize \(known: .*batch_size, "):
        load_config(bad)
    bad.write_text("epochs: three\n")
    with pytest.raises(ConfigError, match="bad.yaml: epochs must be an integer, got str 'three'"):
        load_config(bad)
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(bad)
    with pytest.raises(ConfigError, match="precision must be one of fp32, fp16, bf16, got 'fp8'"):
        load_config(None, {"precision": "fp8"})


def test_lora_and_augment_settings_are_their_own_configs_and_round_trip(tmp_path):
    from blip_lora_core import LoraConfig
    from blip_lora_core.train.augment import AugmentConfig

    overrides = {"lora.r": 4, "lora.targets": [r".*\.fc1"], "augment.hflip": True}
    config = load_config(REPO / "config" / "train.yaml", overrides)
    assert isinstance(config.lora, LoraConfig) and isinstance(config.augment, AugmentConfig)
    assert (config.lora.r, config.lora.alpha, config.lora.targets) == (4, 32.0, (r".*\.fc1",))
    assert config.augment.hflip and config.augment.white_balance == 0.25  # the file's other augment values stay
    saved = tmp_path / "config.yaml"
    saved.write_text(config.to_yaml())
    assert load_config(saved) == config
    assert load_config(None).lora == LoraConfig()  # one set of LoRA defaults
    known = r"\(known: alpha, dropout, r, rslora, targets\)"
    with pytest.raises(ConfigError, match=r"unknown lora setting\(s\): rank " + known):
        load_config(None, {"lora.rank": 4})


# -- the loop ------------------------------------------------------------------------------------

def test_lora_training_lowers_the_loss_and_writes_everything(tiny_model_dir, synth_data, tmp_path, train_config):
    targets = [r"vision_model\..*", r"text_decoder\..*\.(query|value)"]
    result = train(train_config(synth_data, tmp_path / "run", epochs=3, val_file=str(synth_data),
                           lora=dict(r=4, alpha=32, dropout=0.0, targets=targets), lr=2e-2))
    losses = [row["loss"] for row in result.history]
    assert len(losses) == 3 * 6 and sum(losses[-4:]) < 0.95 * sum(losses[:4])
    names = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"config.yaml", "train_log.csv", "eval_log.csv", "loss_curve.png", "last.safetensors",
            "best.safetensors"} <= names
    assert result.adapter.name.startswith("lora_r4_a32_bs2_ep3_lr0.02_")
    assert result.adapter.read_bytes() == (tmp_path / "run" / "best.safetensors").read_bytes()
    assert set(result.best) >= {"exact_match", "bleu4", "cider", "step"}
    saved = load_config(tmp_path / "run" / "config.yaml")
    assert saved.train_file == str(synth_data) and saved.lora.r == 4 and list(saved.lora.targets) == targets
    info, _ = read_adapter(result.adapter)
    assert info.base_model == str(tiny_model_dir) and info.config.r == 4


def test_each_step_runs_at_its_own_scheduled_rate(train_config, synth_data, tmp_path, monkeypatch):
    """The optimizer steps at lr * lr_factor(step) (warm-up, then cosine to the floor), and the log says so."""
    applied = []
    real_step = torch.optim.AdamW.step

    def recording_step(self, *args, **kwargs):
        applied.append([group["lr"] for group in self.param_groups])
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)
    result = train(train_config(synth_data, tmp_path / "lr", max_steps=5, warmup_steps=2, lr=1e-2,
                                 min_lr_ratio=0.1))
    expected = [1e-2 * factor for factor in (0.5, 1.0, 1.0, 0.1 + 0.9 * 0.5, 0.1)]  # cos(pi / 2) = 0 at step 3
    assert expected == pytest.approx([1e-2 * lr_factor(step, 5, 2, 0.1) for step in range(5)], rel=1e-12)
    assert [rates[0] for rates in applied] == pytest.approx(expected, rel=1e-12)
    assert all(len(set(rates)) == 1 for rates in applied)  # every parameter group
    assert [row["lr"] for row in result.history] == pytest.approx(expected, rel=1e-12)


def test_accumulating_4_x_batch_1_equals_batch_4(train_config, synth_data, tmp_path):
    one = train(train_config(synth_data, tmp_path / "a", batch_size=4, grad_accum=1, max_steps=2))
    acc = train(train_config(synth_data, tmp_path / "b", batch_size=1, grad_accum=4, max_steps=2))
    a, b = _adapter_tensors(one.adapter), _adapter_tensors(acc.adapter)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    assert [r["loss"] for r in one.history] == pytest.approx([r["loss"] for r in acc.history], rel=1e-5)
    assert any(not torch.equal(a[k], torch.zeros_like(a[k])) for k in a if k.endswith("lora_B"))


def test_resume_ends_with_the_same_adapter(train_config, synth_data, tmp_path):
    settings = dict(epochs=3, checkpoint_every=4, lora=dict(r=4, alpha=8, dropout=0.1), augment={"colour_jitter": 0.3})
    full = train(train_config(synth_data, tmp_path / "full", **settings))
    from blip_lora_core.train.checkpoint import latest_checkpoint

    partial = train_config(synth_data, tmp_path / "part", **settings)
    _run_until(partial, 9)  # killed after step 9: the newest checkpoint is step 8's
    assert latest_checkpoint(tmp_path / "part" / "checkpoints").step == 8
    resumed = train(partial, resume=True)
    a, b = _adapter_tensors(full.adapter), _adapter_tensors(resumed.adapter)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in full.history[8:]]


def _run_until(config, stop_after: int) -> None:
    """Run training and interrupt it (as SIGKILL would) once optimizer step stop_after has finished."""
    import blip_lora_core.train.loop as train_module

    original = train_module._log_row

    def counting(run, step, *args, **kwargs):
        row = original(run, step, *args, **kwargs)
        if step == stop_after:
            raise SystemExit("killed")
        return row

    train_module._log_row = counting
    try:
        with pytest.raises(SystemExit):
            train(config)
    finally:
        train_module._log_row = original


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_checkpoint(train_config, synth_data, tmp_path):
    config = train_config(synth_data, tmp_path / "nan", epochs=3, checkpoint_every=2)
    import blip_lora_core.train.loop as train_module

    original, calls = train_module.token_loss_sum, {"n": 0}

    def poisoned(*args):
        calls["n"] += 1
        value = original(*args)
        return value * float("nan") if calls["n"] == 5 else value

    train_module.token_loss_sum = poisoned
    try:
        with pytest.raises(TrainingError, match=r"loss is nan at step 5 .*step_00000004\.safetensors"):
            train(config)
    finally:
        train_module.token_loss_sum = original
    from blip_lora_core.train.checkpoint import load_checkpoint

    assert load_checkpoint(tmp_path / "nan" / "checkpoints" / "step_00000004.safetensors").step == 4


def test_fp16_on_cpu_falls_back_and_bf16_trains(train_config, synth_data, tmp_path):
    # bf16: frozen linears stored in bf16, LoRA in fp32, validation (greedy captions) under autocast too
    result = train(train_config(synth_data, tmp_path / "bf16", precision="bf16", max_steps=3,
                           val_fraction=0.25, eval_every=3))
    assert all(math.isfinite(r["loss"]) for r in result.history)
    assert (tmp_path / "bf16" / "eval_log.csv").read_text().count("\n") == 2
    tensors = _adapter_tensors(result.adapter)
    assert tensors and all(t.dtype == torch.float32 for t in tensors.values())
    assert any(t.abs().sum() > 0 for name, t in tensors.items() if "lora_B" in name)
    fp16 = train(train_config(synth_data, tmp_path / "fp16", precision="fp16", max_steps=1))
    assert load_config(tmp_path / "fp16" / "config.yaml").precision == "fp32"
    assert fp16.steps == 1


def test_prompt_is_trained_and_stripped(tiny_model_dir, train_config, synth_data, tmp_path, monkeypatch):
    """Training batches are [DEC] prompt caption [SEP] with [DEC] and the prompt masked; validation captions
    are generated after the prompt and returned without it; the adapter remembers the prompt."""
    from transformers import AutoTokenizer

    import blip_lora_core.train.loop as train_module
    from blip_lora_core.models.images import load_image
    from blip_lora_core.models.labels import IGNORE_INDEX

    batches, predictions = [], []
    real_loss, real_predict = train_module.token_loss_sum, train_module.predict

    def recording_loss(model, batch, *args):
        batches.append({k: v.clone() for k, v in batch.items() if k != "pixel_values"})
        return real_loss(model, batch, *args)

    def checked_predict(bundle, samples, *, prompt, max_new_tokens, batch_size):
        got = real_predict(bundle, samples, prompt=prompt, max_new_tokens=max_new_tokens, batch_size=batch_size)
        # independently: generate() after [DEC] prompt [SEP], then decode what follows the prompt
        tok, text = bundle.tokenizer, bundle.model.config.text_config
        ids = tok(prompt, add_special_tokens=False).input_ids
        pixels = bundle.preprocess.batch([load_image(s.image) for s in samples])
        start = torch.tensor([[text.bos_token_id, *ids, text.sep_token_id]] * len(samples))
        bundle.model.eval()
        with torch.inference_mode():
            out = bundle.model.generate(pixel_values=pixels, input_ids=start, max_new_tokens=max_new_tokens)
        bundle.model.train()
        predictions.append((prompt, got, [tok.decode(row[1 + len(ids):], skip_special_tokens=True) for row in out]))
        return got

    monkeypatch.setattr(train_module, "token_loss_sum", recording_loss)
    monkeypatch.setattr(train_module, "predict", checked_predict)
    result = train(train_config(synth_data, tmp_path / "p", prompt="a picture of", max_steps=2, val_fraction=0.25))
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    prompt_ids = tokenizer("a picture of", add_special_tokens=False).input_ids
    assert len(batches) == 2
    for batch in batches:
        head = 1 + len(prompt_ids)
        assert (batch["input_ids"][:, 1:head] == torch.tensor(prompt_ids)).all()
        assert (batch["labels"][:, :head] == IGNORE_INDEX).all() and (batch["labels"][:, head] != IGNORE_INDEX).all()
    assert len(predictions) == 1
    prompt, got, expected = predictions[0]
    assert prompt == "a picture of" and len(got) == 3 and got == expected
    info, _ = read_adapter(result.adapter)
    assert info.extra["prompt"] == "a picture of"


def test_unreviewed_rows_warn(train_config, synth_data, tmp_path, caplog):
    rows = [json.loads(line) for line in synth_data.read_text().splitlines()]
    rows[0]["reviewed"] = False
    data = synth_data.parent / "unreviewed.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with caplog.at_level("WARNING"):
        train(train_config(data, tmp_path / "u", max_steps=1))
    assert "1 of 12 training rows are marked unreviewed" in caplog.text


@pytest.mark.slow
def test_ddp_two_processes_on_gloo_equal_one_process_with_twice_the_batch(synth_data, tmp_path, train_config):
    single = train(train_config(synth_data, tmp_path / "single", batch_size=2, max_steps=3))
    ddp = train_config(synth_data, tmp_path / "ddp", batch_size=1, max_steps=3, device="cpu")  # per process
    script = tmp_path / "ddp_train.py"
    script.write_text(
        "import sys\nfrom blip_lora_core.train.loop import train\nfrom blip_lora_core.train.config import load_config\n"
        f"train(load_config(None, {ddp.to_dict()!r}))\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                    "29517", str(script)], check=True, env=env, timeout=240, capture_output=True)
    adapters = list((tmp_path / "ddp").glob("lora_*.safetensors"))
    a, b = _adapter_tensors(single.adapter), _adapter_tensors(adapters[0])
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6)


def test_grouped_references_include_phrasings_from_the_training_rows(monkeypatch, tmp_path):
    import blip_lora_core.train.loop as train_module
    from blip_lora_core.train.data import Sample

    rows = [Sample(tmp_path / f"none_{i:04d}.jpg", text, None, tmp_path, i + 1)
            for i, text in enumerate(["Nothing is placed in the scene", "No cube is visible in the image"])]
    monkeypatch.setattr(train_module, "predict", lambda *a, **k: ["Nothing is placed in the scene"])
    config = load_config(None, {"group_references": True})
    assert train_module.evaluate(None, rows[1:], config)["exact_match"] == 0.0
    assert train_module.evaluate(None, rows[1:], config, pool=rows)["exact_match"] == 1.0
