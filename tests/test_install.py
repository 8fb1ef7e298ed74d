"""The base install (no extras) is enough for the ROS 2 node's modules and `blip-lora caption`.

A fresh venv gets torch (the pinned CPU build, as the Makefile installs it) and then `pip install <repo>`
without extras; it must not have pulled in the training or bag extras, and every command that needs an
extra must say which one.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import venv
from pathlib import Path

import pytest
import torch

from blip_lora_core.lora.adapter_io import save_adapter
from blip_lora_core.lora.hooks import LoraConfig, inject_lora, lora_layers

REPO = Path(__file__).resolve().parents[1]
NODE_PACKAGE = REPO / "ros2_ws" / "src" / "blip_captioner"
TORCH_SPEC = f"torch=={torch.__version__.split('+')[0]}"  # the torch of the test venv, never a newer one
EXTRA_ONLY = ("pycocoevalcap", "matplotlib", "rosbags")

CHECK_IMPORTS = """
import importlib.util, json, sys
sys.path.insert(0, sys.argv[1])
import blip_captioner.params, blip_lora_core.runtime.image_msgs, blip_lora_core.runtime.pipeline
import blip_lora_core.runtime.diagnostics, blip_lora_core.models.captioning
print(json.dumps({name: importlib.util.find_spec(name) is not None for name in sys.argv[2:]}))
"""


@pytest.fixture(scope="module")
def base_venv(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("base-venv")
    venv.create(folder, with_pip=True)
    python = folder / "bin" / "python"
    quiet = ["-q", "--disable-pip-version-check", "--no-warn-script-location"]
    subprocess.run([python, "-m", "pip", "install", *quiet, TORCH_SPEC], check=True, timeout=900)
    source = tmp_path_factory.mktemp("source")  # a clean copy: pip's build/ folder stays out of the repo
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    for name in ("blip_lora_core", "training"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([python, "-m", "pip", "install", *quiet, str(source)], check=True, timeout=900)
    return folder


@pytest.mark.slow
def test_the_base_install_runs_the_node_modules_and_a_caption(base_venv, tiny_model_dir, seed_blocks, tmp_path):
    python, cli = base_venv / "bin" / "python", base_venv / "bin" / "blip-lora"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    found = subprocess.run([python, "-c", CHECK_IMPORTS, str(NODE_PACKAGE), *EXTRA_ONLY], env=env, cwd=tmp_path,
                           capture_output=True, text=True, check=True)
    assert json.loads(found.stdout) == {name: False for name in EXTRA_ONLY}

    from blip_lora_core.models.captioning import Captioner
    from blip_lora_core.models.loading import load_blip

    bundle = load_blip(str(tiny_model_dir), device="cpu")
    inject_lora(bundle.model, LoraConfig(r=4, alpha=32, dropout=0.0))
    with torch.no_grad():
        for module in lora_layers(bundle.model).values():
            module.lora_B.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
    adapter = save_adapter(bundle.model, tmp_path / "adapter.safetensors", config=LoraConfig(r=4, alpha=32))
    image = seed_blocks / "image_train" / "blue_on_green_0001.jpg"
    run = subprocess.run([cli, "caption", str(image), "--model", str(tiny_model_dir), "--adapter", str(adapter),
                          "--max-new-tokens", "6", "--no-progress"], env=env, cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    captioner = Captioner.from_pretrained(str(tiny_model_dir), adapter=str(adapter), max_new_tokens=6)
    expected = captioner.caption_files([image])
    assert json.loads(run.stdout) == {"image": str(image), "caption": expected[0]}
    assert "Loading weights" not in run.stderr  # --no-progress silences transformers' bar too

    for command, extra in ((["eval", str(seed_blocks / "annotations.jsonl")], "train"),
                           (["train", "--train", str(seed_blocks / "annotations.jsonl")], "train"),
                           (["bag", "extract", str(tmp_path), "--out", str(tmp_path / "x")], "bags")):
        argv = [cli, *command, "--model", str(tiny_model_dir)] if command[0] == "eval" else [cli, *command]
        run = subprocess.run(argv,
                             env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert run.returncode == 2 and run.stderr.count("\n") == 1, (command, run.stderr)
        assert f"needs the [{extra}] extra" in run.stderr and f"pip install 'blip-lora[{extra}]'" in run.stderr


# what the README's "Deploy without torch" installs on a robot: the package without its dependencies, then
# the ONNX runtime's own (never torch or transformers)
ROBOT_PACKAGES = ("numpy", "pillow", "opencv-python-headless<5", "pyyaml", "tokenizers", "onnxruntime")


@pytest.mark.slow
@pytest.mark.xdist_group("onnx_tiny")  # beside the other users of the exported tiny model
def test_a_robot_install_without_torch_captions_with_an_onnx_export(tmp_path_factory, onnx_export, trained):
    folder = tmp_path_factory.mktemp("robot-venv")
    venv.create(folder, with_pip=True)
    python, cli = folder / "bin" / "python", folder / "bin" / "blip-lora"
    quiet = ["-q", "--disable-pip-version-check", "--no-warn-script-location"]
    source = tmp_path_factory.mktemp("robot-source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    for name in ("blip_lora_core", "training"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([python, "-m", "pip", "install", *quiet, "--no-deps", str(source)], check=True, timeout=900)
    subprocess.run([python, "-m", "pip", "install", *quiet, *ROBOT_PACKAGES], check=True, timeout=900)
    env = {**os.environ, "PYTHONPATH": ""}
    found = subprocess.run([python, "-c", "import importlib.util as u; print(u.find_spec('torch'), "
                            "u.find_spec('transformers'))"], env=env, capture_output=True, text=True, check=True)
    assert found.stdout.split() == ["None", "None"]
    images = sorted(str(path) for path in trained.base.parent.glob("*.png"))[:4]
    run = subprocess.run([cli, "caption", *images, "--model", str(onnx_export), "--max-new-tokens", "12"], env=env,
                         capture_output=True, text=True, timeout=300, cwd=folder)
    assert run.returncode == 0, run.stderr
    from blip_lora_core.models.captioning import Captioner

    expected = Captioner.from_pretrained(str(trained.base), adapter=str(trained.adapter), device="cpu",
                                         max_new_tokens=12).caption_files(images)
    assert [json.loads(line)["caption"] for line in run.stdout.splitlines()] == expected
    node = subprocess.run([python, "-c", f"import sys; sys.path.insert(0, {str(NODE_PACKAGE)!r}); "
                           "import blip_captioner.params"], env=env, capture_output=True, text=True, timeout=120)
    assert node.returncode == 0, node.stderr  # the node's parameter and captioner glue loads without torch
