"""Models: the tiny BLIP is a real save_pretrained folder; tokenizer round trips; preprocessing matches HF."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import BlipForConditionalGeneration

from blip_lora_core import BlipLoraError, ConfigError
from blip_lora_core._compat import TRANSFORMERS_MAJOR
from blip_lora_core.models.loading import BOS_TOKEN, blip_large_config, load_blip, resolve_dtype
from blip_lora_core.models.preprocess import ImagePreprocessor
from tests.conftest import CAPTIONS


def test_tiny_folder_loads_like_a_real_model(tiny_model_dir):
    files = {p.name for p in tiny_model_dir.iterdir()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "tokenizer_config.json"} <= files
    model = BlipForConditionalGeneration.from_pretrained(tiny_model_dir)
    text = model.config.text_config
    bundle = load_blip(str(tiny_model_dir))
    assert text.bos_token_id == bundle.tokenizer.convert_tokens_to_ids(BOS_TOKEN)
    assert text.sep_token_id == bundle.tokenizer.sep_token_id and text.pad_token_id == bundle.tokenizer.pad_token_id
    assert sum(p.numel() for p in model.parameters()) < 1_000_000


@pytest.mark.parametrize("caption", CAPTIONS)
def test_captions_survive_a_tokenizer_round_trip(tiny_bundle, caption):
    tokenizer = tiny_bundle.tokenizer
    ids = tokenizer(caption, add_special_tokens=False).input_ids
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids) == caption.lower()


def test_unknown_words_map_to_unk(tiny_bundle):
    ids = tiny_bundle.tokenizer("zebra cube", add_special_tokens=False).input_ids
    assert ids[0] == tiny_bundle.tokenizer.unk_token_id and ids[1] != tiny_bundle.tokenizer.unk_token_id


def test_generate_runs_from_the_folder(tiny_bundle, pixels):
    out = tiny_bundle.model.generate(pixel_values=pixels, max_new_tokens=4)
    assert out.shape[0] == 2 and (out[:, 0] == tiny_bundle.model.config.text_config.bos_token_id).all()


def test_load_failure_names_the_model(tmp_path):
    with pytest.raises(BlipLoraError, match="no_model_here"):
        load_blip(str(tmp_path / "no_model_here"))


def test_dtype_resolution():
    assert resolve_dtype(None, "cpu") == torch.float32
    assert resolve_dtype(None, "cuda") == torch.float16
    assert resolve_dtype("bf16", "cpu") == torch.bfloat16
    with pytest.raises(ConfigError, match="fp8"):
        resolve_dtype("fp8", "cpu")


def test_blip_large_config_matches_the_published_architecture():
    config = blip_large_config()
    assert config.vision_config.hidden_size == 1024 and config.vision_config.num_hidden_layers == 24
    assert config.text_config.vocab_size == 30524 and config.text_config.bos_token_id == 30522
    assert config.text_config.encoder_hidden_size == 1024


def _pil_image_processor():
    """transformers' PIL-based BLIP image processor: BlipImageProcessorPil from 5.x, BlipImageProcessor before
    (5.x's BlipImageProcessor is the torchvision one)."""
    if TRANSFORMERS_MAJOR >= 5:
        from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

        return BlipImageProcessorPil
    from transformers.models.blip.image_processing_blip import BlipImageProcessor

    return BlipImageProcessor


def test_preprocessing_matches_transformers_pil_processor(tiny_model_dir):
    config = json.loads((tiny_model_dir / "preprocessor_config.json").read_text())
    ours = ImagePreprocessor.from_dict(config)
    theirs = _pil_image_processor()(size={"height": ours.height, "width": ours.width})
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8))
    expected = torch.as_tensor(np.asarray(theirs(images=[image], return_tensors="np")["pixel_values"]))
    torch.testing.assert_close(ours.batch([image]), expected.float(), rtol=1e-5, atol=1e-5)
    assert ImagePreprocessor.from_pretrained(str(tiny_model_dir)) == ours
