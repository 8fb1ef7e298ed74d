"""A tiny BLIP with a LoRA adapter trained by ``train()`` (captions of different lengths, with and without a
prompt), and its ONNX exports: built once per test process (pytest plugin, registered in conftest.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

PROMPT = "a picture of"
# plain-colour scenes a tiny vision encoder tells apart, with captions of 3 to 7 words
SCENES = {"One red cube": (200, 40, 40), "One green cube": (40, 180, 60), "A blue cube on top of a green cube":
          (40, 60, 200), "No cube is visible in the image": (128, 128, 128)}


@dataclass(frozen=True)
class Trained:
    base: Path
    adapter: Path
    images: list[np.ndarray]  # one new image per scene and a noise image: (64, 64, 3) uint8
    data: Path  # the training JSONL (also a dataset for eval)


def scene_image(rgb: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    return np.clip(np.array(rgb)[None, None] + rng.normal(0, 25, (64, 64, 3)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> Trained:
    """The tiny base LoRA-trained (vision encoder and text decoder, 20 epochs) on 24 scene images, half of them
    with the prompt: its captions end at different steps."""
    from blip_lora_core.models.loading import build_tiny_blip
    from blip_lora_core.train.config import load_config
    from blip_lora_core.train.loop import train
    from tests.conftest import CAPTIONS

    root = tmp_path_factory.mktemp("onnx_trained")
    rng = np.random.default_rng(0)
    lines = []
    for text, rgb in SCENES.items():
        for i in range(6):
            name = f"{text.split()[1].lower()}_{i}.png"
            Image.fromarray(scene_image(rgb, rng)).save(root / name)
            lines.append({"image": name, "text": text, **({"prompt": PROMPT} if i % 2 else {})})
    data = root / "train.jsonl"
    data.write_text("".join(json.dumps(line) + "\n" for line in lines))
    base = build_tiny_blip(root / "base", CAPTIONS, seed=0)
    config = load_config(None, dict(
        model=str(base), train_file=str(data), output_dir=str(root / "run"), batch_size=8, grad_accum=1, epochs=20,
        lr=1e-2, warmup_steps=2, precision="fp32", num_workers=0, progress=False, seed=0, max_new_tokens=12,
        lora=dict(r=8, alpha=16, dropout=0.0, targets=[r"vision_model\..*", r"text_decoder\.bert\..*"])))
    adapter = train(config).adapter
    images = [scene_image(rgb, rng) for rgb in SCENES.values()] + [rng.integers(0, 256, (64, 64, 3), np.uint8)]
    return Trained(base, Path(adapter), images, data)


@pytest.fixture(scope="session")
def onnx_export(trained, tmp_path_factory) -> Path:
    """The fp32 ONNX export of the trained base with its adapter merged."""
    from blip_lora_core.export.onnx_export import export_onnx

    out = tmp_path_factory.mktemp("onnx_export") / "fp32"
    export_onnx(str(trained.base), out, adapter=str(trained.adapter))
    return out


@pytest.fixture(scope="session")
def onnx_int8_export(trained, tmp_path_factory) -> Path:
    from blip_lora_core.export.onnx_export import export_onnx

    out = tmp_path_factory.mktemp("onnx_export") / "int8"
    export_onnx(str(trained.base), out, adapter=str(trained.adapter), quantize="int8")
    return out
