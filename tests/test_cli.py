"""The command line end to end in a temporary folder: synth -> train -> eval -> caption -> export."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from transformers import BlipForConditionalGeneration

from blip_lora_core.models.captioning import Captioner
from blip_lora_core.models.loading import load_blip
from blip_lora_training.cli import main


@pytest.mark.slow
def test_synth_train_eval_caption_export(tiny_model_dir, tmp_path, capsys):
    data = tmp_path / "data"
    assert main(["synth", "--out", str(data), "-n", "10", "--size", "64x64", "--seed", "1"]) == 0
    jsonl = data / "annotations.jsonl"
    run = tmp_path / "run"
    assert main(["train", "--model", str(tiny_model_dir), "--train", str(jsonl), "--val", str(jsonl),
                 "--out", str(run), "--epochs", "1", "--batch-size", "2", "--grad-accum", "2", "--lr", "0.01",
                 "--warmup-steps", "1", "--precision", "fp32", "--workers", "0", "--r", "4", "--alpha", "8",
                 "--max-new-tokens", "5", "--no-progress", "--targets", r"vision_model\..*.fc1"]) == 0
    out = capsys.readouterr().out
    adapter = next(run.glob("lora_r4_a8_bs2_ep1_lr0.01_*.safetensors"))
    assert f"adapter: {adapter}" in out and "best validation: exact match" in out

    gallery, metrics = tmp_path / "gallery.html", tmp_path / "metrics.json"
    assert main(["eval", str(jsonl), "--model", str(tiny_model_dir), "--adapter", str(adapter),
                 "--max-new-tokens", "5", "--gallery", str(gallery), "--out", str(metrics)]) == 0
    report = json.loads(metrics.read_text())
    assert report["metrics"]["count"] == 10 and len(report["predictions"]) == 10
    written = [json.loads(line)["image"] for line in jsonl.read_text().splitlines()]
    assert [p["image"] for p in report["predictions"]] == written  # as the JSONL writes them
    assert gallery.read_text().count("<img") == 10

    captions = tmp_path / "captions.csv"
    assert main(["caption", str(data / "images"), "--model", str(tiny_model_dir), "--adapter", str(adapter),
                 "--max-new-tokens", "5", "--batch-size", "4", "--out", str(captions)]) == 0
    rows = list(csv.DictReader(captions.open()))
    assert len(rows) == 10
    hooked = Captioner.from_pretrained(str(tiny_model_dir), adapter=str(adapter), merge=False,
                                       max_new_tokens=5)
    predictions = {p["image"]: p["prediction"] for p in report["predictions"]}
    for row in rows:
        assert row["caption"] == hooked.caption([__import__("PIL.Image").Image.open(row["image"]).convert("RGB")])[0]
        assert row["caption"] == predictions["images/" + row["image"].split("/")[-1]]

    merged_dir = tmp_path / "merged"
    assert main(["export", "--model", str(tiny_model_dir), "--adapter", str(adapter), "--out", str(merged_dir)]) == 0
    merged = BlipForConditionalGeneration.from_pretrained(merged_dir).eval()
    assert not any("lora" in k for k in merged.state_dict())
    pixels = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    ids = torch.tensor([[merged.config.text_config.bos_token_id, 5, 6]])
    with torch.no_grad():
        torch.testing.assert_close(merged(pixel_values=pixels, input_ids=ids).logits,
                                   hooked.model(pixel_values=pixels, input_ids=ids).logits, rtol=1e-5, atol=1e-5)
    assert load_blip(str(merged_dir)).tokenizer.get_vocab() == load_blip(str(tiny_model_dir)).tokenizer.get_vocab()

    assert main(["export", "--adapter", str(adapter), "--format", "peft", "--out", str(tmp_path / "peft")]) == 0
    assert json.loads((tmp_path / "peft" / "adapter_config.json").read_text())["r"] == 4


def test_zero_shot_caption_to_stdout_and_glob(tiny_model_dir, tmp_path, capsys):
    from PIL import Image

    for name in ("a.png", "b.jpg"):
        Image.new("RGB", (40, 30), (200, 30, 30)).save(tmp_path / name)
    assert main(["caption", str(tmp_path / "*.png"), str(tmp_path / "b.jpg"), "--model", str(tiny_model_dir),
                 "--max-new-tokens", "3"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [row["image"] for row in lines] == [str(tmp_path / "a.png"), str(tmp_path / "b.jpg")]


def test_errors_are_one_line_not_tracebacks(tiny_model_dir, tmp_path, capsys):
    assert main(["caption", str(tmp_path / "nothing*.png"), "--model", str(tiny_model_dir)]) == 2
    assert "no images found" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"image": "x.png", "text": "One red cube"}\nnot json\n')
    assert main(["train", "--model", str(tiny_model_dir), "--train", str(bad), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:1" in err and f"{bad}:2" in err and "Traceback" not in err
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "one.png")
    assert main(["caption", str(tmp_path), "--model", str(tmp_path / "missing_model")]) == 2
    assert "cannot load BLIP model" in capsys.readouterr().err



@pytest.mark.parametrize("flags, settings, path", [
    (["--dtype", "bf16"], dict(dtype="bf16"), "fast static-cache (eager), cpu, bfloat16, quantize none"),
    (["--quantize", "int8"], dict(quantize="int8"), "fast static-cache (eager), cpu, float32, quantize int8"),
    (["--no-fast", "--prompt", "a picture of"], dict(fast=False, prompt="a picture of"),
     "generate (fast path off), cpu, float32, quantize none"),
])
def test_caption_options_reach_the_captioner(tiny_model_dir, tmp_path, flags, settings, path):
    """--dtype/--quantize/--fast/--prompt give the captions of a Captioner built with the same CaptionSettings."""
    from PIL import Image

    from tests.test_captioning import _images

    paths = []
    for index, image in enumerate(_images(3)):
        paths.append(tmp_path / f"{index}.png")
        image.save(paths[-1])
    out = tmp_path / "captions.jsonl"
    assert main(["caption", *map(str, paths), "--model", str(tiny_model_dir), "--device", "cpu",
                 "--max-new-tokens", "6", "--out", str(out), *flags]) == 0
    captioner = Captioner.from_pretrained(str(tiny_model_dir), device="cpu", max_new_tokens=6, **settings)
    expected = captioner.caption([Image.open(p).convert("RGB") for p in paths])
    assert [json.loads(line)["caption"] for line in out.read_text().splitlines()] == expected
    assert captioner.describe() == path


def test_a_missing_command_module_fails_loudly(monkeypatch):
    from blip_lora_training import cli

    monkeypatch.setattr(cli, "COMMAND_MODULES", (*cli.COMMAND_MODULES, "no_such_command"))
    with pytest.raises(ModuleNotFoundError, match="no_such_command"):
        cli.build_parser()


def test_a_command_whose_extra_is_missing_names_the_extra(monkeypatch, capsys, tmp_path):
    import sys

    for name in [m for m in sys.modules if m.startswith(("blip_lora_core.train.metrics", "blip_lora_core.train.gallery",
                                                          "pycocoevalcap"))]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "pycocoevalcap", None)  # import pycocoevalcap -> ModuleNotFoundError
    data = tmp_path / "d.jsonl"
    data.write_text("")
    assert main(["eval", str(data)]) == 2
    err = capsys.readouterr().err
    assert err == ("blip-lora eval: error: this command needs the [train] extra (pycocoevalcap is not installed): "
                   "pip install 'blip-lora[train]'\n")


def test_the_extras_map_is_pyprojects(monkeypatch):
    """The module -> extra map the CLI names in its message is read from the package metadata, which
    pyproject.toml's optional-dependencies write (the test extra is for development, not a command)."""
    tomllib = pytest.importorskip("tomllib")
    from pathlib import Path

    from blip_lora_training.cli import extra_of_module

    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    declared = {requirement.split(">")[0].split("=")[0].split("[")[0].strip().replace("-", "_"): extra
                for extra, requirements in project["optional-dependencies"].items() if extra != "test"
                for requirement in requirements}
    assert extra_of_module() == declared and declared["rosbags"] == "bags"


def test_debug_shows_the_cause_that_the_one_line_message_summarises(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("lr: [1, 2\n")
    assert main(["train", "--config", str(config), "--train", "x.jsonl"]) == 2
    quiet = capsys.readouterr().err
    assert quiet.count("\n") == 1 and "cannot read YAML configuration" in quiet and "Traceback" not in quiet
    assert main(["--debug", "train", "--config", str(config), "--train", "x.jsonl"]) == 2
    loud = capsys.readouterr().err
    assert "yaml.parser.ParserError" in loud and "direct cause of the following exception" in loud
    assert loud.endswith(quiet)
