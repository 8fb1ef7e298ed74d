"""Captioner: prompt stripping, batching equals one by one, adapters swap without reloading the base."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from blip_lora_core import LoraConfig, inject_lora, save_adapter
from blip_lora_core.lora.hooks import is_merged, lora_layers, remove_lora
from blip_lora_core.models.captioning import Captioner


def _images(n=3):
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)) for _ in range(n)]


ADAPTER = LoraConfig(r=4, alpha=64, targets=(r"vision_model\..*", r"text_decoder\..*\.(query|value)"))


def _adapter(bundle, path, seed):
    inject_lora(bundle.model, ADAPTER)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in lora_layers(bundle.model).values():  # A too: inject_lora draws it from the global RNG
            module.lora_A.copy_(torch.randn(module.lora_A.shape, generator=gen) * 0.1)
            module.lora_B.copy_(torch.randn(module.lora_B.shape, generator=gen))
    save_adapter(bundle.model, path, config=ADAPTER)
    remove_lora(bundle.model)
    return path


def test_batched_captions_equal_one_by_one(tiny_bundle):
    captioner = Captioner(tiny_bundle, max_new_tokens=6, batch_size=2)
    images = _images(3)
    assert captioner.caption(images) == [captioner.caption([im])[0] for im in images]


def test_prompt_is_stripped_and_conditions_generation(tiny_bundle):
    captioner = Captioner(tiny_bundle, max_new_tokens=5)
    tok = tiny_bundle.tokenizer
    captioner.prompt = "a picture of"
    image = _images(1)
    with torch.inference_mode():
        ids = torch.tensor([[tiny_bundle.model.config.text_config.bos_token_id]
                            + tok("a picture of", add_special_tokens=False).input_ids + [tok.sep_token_id]])
        raw = tiny_bundle.model.generate(pixel_values=tiny_bundle.preprocess.batch(image), input_ids=ids,
                                         max_new_tokens=5)
    full = tok.decode(raw[0], skip_special_tokens=True)
    assert full.startswith("a picture of")
    assert captioner.caption(image) == [full[len("a picture of"):].strip()]


def test_numpy_and_pil_inputs_agree(tiny_bundle):
    captioner = Captioner(tiny_bundle, max_new_tokens=5)
    image = _images(1)[0]
    assert captioner.caption([np.asarray(image)]) == captioner.caption([image])


def test_adapter_swaps_without_drift(tiny_bundle, tmp_path):
    first = _adapter(tiny_bundle, tmp_path / "a.safetensors", 1)
    second = _adapter(tiny_bundle, tmp_path / "b.safetensors", 2)
    base = {n: p.clone() for n, p in tiny_bundle.model.state_dict().items()}
    captioner = Captioner(tiny_bundle, max_new_tokens=6)
    images = _images(2)
    zero_shot = captioner.caption(images)
    captioner.set_adapter(first, merge=True)
    assert is_merged(captioner.model)
    with_first = captioner.caption(images)
    assert with_first != zero_shot
    captioner.set_adapter(first, merge=False)
    assert captioner.caption(images) == with_first
    for _ in range(3):
        captioner.set_adapter(second)
        captioner.set_adapter(first)
    captioner.set_adapter(None)
    assert captioner.caption(images) == zero_shot
    after = tiny_bundle.model.state_dict()
    assert after.keys() == base.keys() and all(torch.equal(after[k], base[k]) for k in base)
