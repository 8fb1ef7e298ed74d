"""peft interop: the real peft library loads our export and gives the same outputs; we import peft's."""

from __future__ import annotations

import json

import peft
import pytest
import torch

from blip_lora_core import AdapterError, LoraConfig, export_peft, import_peft, inject_lora, load_adapter, save_adapter
from blip_lora_core.lora.hooks import lora_layers, lora_state_dict
from blip_lora_core.models.loading import load_blip

CONFIG = LoraConfig(r=4, alpha=8, targets=(r"vision_model\..*", r"text_decoder\..*\.self\.(query|value)"))


def _adapter(tiny_bundle, tmp_path, config=CONFIG):
    inject_lora(tiny_bundle.model, config)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for module in lora_layers(tiny_bundle.model).values():
            module.lora_B.copy_(torch.randn(module.lora_B.shape, generator=gen) * 0.2)
    return save_adapter(tiny_bundle.model, tmp_path / "a.safetensors", config=config, base_model="tiny")


def _logits(model, pixels):
    ids = torch.tensor([[model.config.text_config.bos_token_id, 5, 6, 7]] * len(pixels))
    with torch.no_grad():
        return model(pixel_values=pixels, input_ids=ids).logits


@pytest.mark.parametrize("rslora", [False, True])
def test_real_peft_loads_our_export_with_equal_outputs(tiny_bundle, tiny_model_dir, tmp_path, pixels, rslora):
    config = LoraConfig(r=4, alpha=8, rslora=rslora, targets=CONFIG.targets)
    path = _adapter(tiny_bundle, tmp_path, config)
    ours = _logits(tiny_bundle.model.eval(), pixels)
    folder = export_peft(path, tmp_path / "peft")
    saved = json.loads((folder / "adapter_config.json").read_text())
    assert saved["peft_type"] == "LORA" and saved["r"] == 4 and saved["lora_alpha"] == 8
    base = load_blip(str(tiny_model_dir)).model.eval()
    without = _logits(base, pixels)
    peft_model = peft.PeftModel.from_pretrained(base, str(folder)).eval()
    theirs = _logits(peft_model, pixels)
    assert not torch.allclose(ours, without, atol=1e-3)
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)
    n_peft = sum(1 for n, _ in peft_model.named_modules() if n.endswith("lora_A.default"))
    assert n_peft == len(lora_layers(tiny_bundle.model)) == 16


def test_import_of_a_peft_adapter_made_by_peft(tiny_model_dir, tmp_path, pixels):
    base = load_blip(str(tiny_model_dir)).model.eval()
    peft_config = peft.LoraConfig(r=4, lora_alpha=16, target_modules=["qkv", "fc2"], init_lora_weights=False)
    peft_model = peft.get_peft_model(base, peft_config)
    theirs = _logits(peft_model, pixels)
    peft_model.save_pretrained(tmp_path / "from_peft")
    model = load_blip(str(tiny_model_dir)).model.eval()
    ours_file = import_peft(tmp_path / "from_peft", model, tmp_path / "imported.safetensors")
    info = load_adapter(model, ours_file)
    assert info.config.r == 4 and info.config.scaling == 4.0 and len(info.layers) == 4
    torch.testing.assert_close(_logits(model, pixels), theirs, rtol=1e-5, atol=1e-5)


def test_round_trip_through_peft_format_is_bit_exact(tiny_bundle, tiny_model_dir, tmp_path):
    path = _adapter(tiny_bundle, tmp_path)
    folder = export_peft(path, tmp_path / "peft")
    model = load_blip(str(tiny_model_dir)).model
    again = import_peft(folder, model, tmp_path / "again.safetensors")
    load_adapter(model, again)
    a, b = lora_state_dict(tiny_bundle.model), lora_state_dict(model)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_unsupported_peft_options_are_refused(tiny_bundle, tiny_model_dir, tmp_path):
    folder = export_peft(_adapter(tiny_bundle, tmp_path), tmp_path / "peft")
    config = json.loads((folder / "adapter_config.json").read_text())
    config["use_dora"] = True
    (folder / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(AdapterError, match="use_dora"):
        import_peft(folder, load_blip(str(tiny_model_dir)).model, tmp_path / "x.safetensors")
