"""peft interop: the real peft library loads our export and gives the same outputs; we import peft's."""

from __future__ import annotations

import json
import re

import peft
import pytest
import torch
from safetensors.torch import load_file, save_file

from blip_lora_core import (
    AdapterError,
    LoraConfig,
    export_peft,
    import_peft,
    inject_lora,
    load_adapter,
    read_adapter,
    save_adapter,
)
from blip_lora_core.lora.hooks import find_targets, lora_layers, lora_state_dict, remove_lora
from blip_lora_core.lora.peft_interop import read_peft
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


def test_export_writes_peft_s_config_in_full(tiny_bundle, tmp_path):
    path = _adapter(tiny_bundle, tmp_path, LoraConfig(r=4, alpha=8, dropout=0.1, targets=CONFIG.targets))
    layers = list(lora_layers(tiny_bundle.model))
    folder = export_peft(path, tmp_path / "peft")
    text = (folder / "adapter_config.json").read_text()
    expected = {"peft_type": "LORA", "task_type": None, "base_model_name_or_path": "tiny", "revision": None, "r": 4,
                "lora_alpha": 8, "lora_dropout": 0.1, "use_rslora": False, "target_modules": layers, "bias": "none",
                "fan_in_fan_out": False, "init_lora_weights": True, "modules_to_save": None, "inference_mode": True}
    assert json.loads(text) == expected and text == json.dumps(expected, indent=2)  # peft's own layout
    assert type(json.loads(text)["lora_alpha"]) is int  # 8, as peft writes it, not 8.0
    odd = save_adapter(tiny_bundle.model, tmp_path / "b.safetensors", config=LoraConfig(r=4, alpha=2.5,
                       targets=CONFIG.targets), base_model="", base_revision="abc123")
    config = json.loads((export_peft(odd, tmp_path / "odd") / "adapter_config.json").read_text())
    assert (config["lora_alpha"], config["base_model_name_or_path"], config["revision"]) == (2.5, None, "abc123")


def _peft_folder(tiny_bundle, tmp_path, change_config=None, change_tensors=None):
    """Our export of a seeded adapter, with its config or tensors changed."""
    folder = export_peft(_adapter(tiny_bundle, tmp_path), tmp_path / "peft")
    remove_lora(tiny_bundle.model)
    config = json.loads((folder / "adapter_config.json").read_text())
    if change_config:
        change_config(config)
    (folder / "adapter_config.json").write_text(json.dumps(config))
    if change_tensors:
        tensors = load_file(folder / "adapter_model.safetensors")
        change_tensors(tensors)
        save_file(tensors, folder / "adapter_model.safetensors")
    return folder


def test_import_reads_every_setting_of_the_peft_config(tiny_bundle, tiny_model_dir, tmp_path):
    def settings(config):
        config.update(lora_dropout=0.2, use_rslora=True, base_model_name_or_path="org/blip", revision="abc123")

    folder = _peft_folder(tiny_bundle, tmp_path, settings)
    info, _ = read_adapter(import_peft(folder, tiny_bundle.model, tmp_path / "imported.safetensors"))
    layers = json.loads((folder / "adapter_config.json").read_text())["target_modules"]
    assert (info.config.r, info.config.alpha, info.config.dropout, info.config.rslora) == (4, 8.0, 0.2, True)
    assert (info.base_model, info.base_revision, info.extra) == ("org/blip", "abc123", {"imported_from": "peft"})
    assert sorted(info.layers) == sorted(layers) and len(layers) == 16
    assert sorted(info.config.targets) == sorted(name.replace(".", r"\.") for name in layers)  # each its layer
    assert find_targets(tiny_bundle.model, info.config.targets) == layers
    assert not lora_layers(tiny_bundle.model)  # the model lent its shapes and is given back without LoRA

    def defaults(config):
        for key in ("lora_dropout", "use_rslora", "base_model_name_or_path", "revision"):
            config.pop(key)

    info, _ = read_peft(_peft_folder(tiny_bundle, tmp_path / "plain", defaults))
    assert (info.config.dropout, info.config.rslora, info.base_model, info.base_revision) == (0.0, False, "", "")


@pytest.mark.parametrize("change, words", [
    (lambda c: c.update(bias="all"), "peft option bias='all' is not supported"),
    (lambda c: c.update(modules_to_save=["classifier"]), "peft option modules_to_save=['classifier']"),
    (lambda c: c.update(layers_to_transform=[0]), "peft option layers_to_transform=[0]"),
    (lambda c: c.update(peft_type="IA3"), "not a peft LoRA adapter (peft_type 'IA3')"),
    (lambda c: c.clear(), "not a peft LoRA adapter (peft_type None)"),
    (lambda c: c.pop("r"), "invalid LoRA settings"),
])
def test_peft_settings_blip_lora_cannot_honour_are_refused(tiny_bundle, tmp_path, change, words):
    folder = _peft_folder(tiny_bundle, tmp_path, change)
    with pytest.raises(AdapterError, match=re.escape(words)):
        read_peft(folder)


def test_neutral_values_of_the_unsupported_options_are_fine(tiny_bundle, tmp_path):
    folder = _peft_folder(tiny_bundle, tmp_path, lambda c: c.update(bias="none", modules_to_save=[],
                                                                     layers_to_transform=None, use_dora=False))
    assert read_peft(folder)[0].config.r == 4


def test_a_config_that_is_not_a_json_object_is_refused(tiny_bundle, tmp_path):
    folder = _peft_folder(tiny_bundle, tmp_path)
    (folder / "adapter_config.json").write_text('["LORA"]')
    with pytest.raises(AdapterError, match=r"adapter_config.json: not a peft LoRA adapter \(peft_type None\)"):
        read_peft(folder)


@pytest.mark.parametrize("key", ["vision_model.encoder.layers.0.mlp.fc1.lora_A.weight",
                                 "base_model.model.vision_model.encoder.layers.0.mlp.fc1.lora_embedding_A"])
def test_tensors_other_than_lora_a_and_b_under_peft_s_prefix_are_refused(tiny_bundle, tmp_path, key):
    folder = _peft_folder(tiny_bundle, tmp_path, change_tensors=lambda t: t.update({key: torch.zeros(4, 64)}))
    with pytest.raises(AdapterError, match=f"unsupported peft tensor '{re.escape(key)}'"):
        read_peft(folder)


def test_import_checks_the_tensors_against_the_model_first(tiny_bundle, tmp_path):
    layer = "base_model.model.vision_model.encoder.layers.0.mlp.fc1"

    def wrong_shape(tensors):
        tensors[f"{layer}.lora_A.weight"] = torch.zeros(4, 65)

    folder = _peft_folder(tiny_bundle, tmp_path / "shape", change_tensors=wrong_shape)
    with pytest.raises(AdapterError, match=r"peft layer vision_model.encoder.layers.0.mlp.fc1: .*\(4, 65\)"):
        import_peft(folder, tiny_bundle.model, tmp_path / "x.safetensors")
    folder = _peft_folder(tiny_bundle, tmp_path / "half", change_tensors=lambda t: t.pop(f"{layer}.lora_B.weight"))
    with pytest.raises(AdapterError, match=r"layer vision_model.encoder.layers.0.mlp.fc1: the adapter lacks lora_B"):
        import_peft(folder, tiny_bundle.model, tmp_path / "x.safetensors")
    assert not lora_layers(tiny_bundle.model) and not (tmp_path / "x.safetensors").exists()
    folder = _peft_folder(tiny_bundle, tmp_path / "ok")
    inject_lora(tiny_bundle.model, CONFIG)
    with pytest.raises(AdapterError, match="import_peft needs a model without LoRA layers"):
        import_peft(folder, tiny_bundle.model, tmp_path / "x.safetensors")


def test_a_peft_folder_without_tensors_reads_as_an_adapter_of_no_layers(tiny_bundle, tmp_path):
    """Its placeholder target pattern adapts no layer; import_peft says so, naming the folder."""
    folder = _peft_folder(tiny_bundle, tmp_path, change_tensors=lambda t: t.clear())
    info, tensors = read_peft(folder)
    assert (info.layers, tensors, info.config.r, info.config.alpha, info.config.targets) == ([], {}, 4, 8.0, ("",))
    assert find_targets(tiny_bundle.model, info.config.targets) == []
    with pytest.raises(AdapterError, match=re.escape(f"{folder}: the peft adapter holds no LoRA tensors")):
        import_peft(folder, tiny_bundle.model, tmp_path / "x.safetensors")
    assert not lora_layers(tiny_bundle.model) and not (tmp_path / "x.safetensors").exists()


def test_the_peft_config_is_read_as_utf_8_whatever_the_locale(tiny_bundle, tmp_path, monkeypatch):
    """A machine whose locale encoding is latin-1 still reads a UTF-8 config's non-ASCII text right."""
    import io

    folder = _peft_folder(tiny_bundle, tmp_path)
    config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = "örg/blïp-große"
    (folder / "adapter_config.json").write_bytes(json.dumps(config, ensure_ascii=False).encode("utf-8"))
    default = io.text_encoding
    monkeypatch.setattr(io, "text_encoding", lambda encoding, stacklevel=2: encoding or "latin-1")
    assert io.text_encoding(None) == "latin-1" and default(None) in ("locale", "utf-8")
    assert read_peft(folder)[0].base_model == "örg/blïp-große"
