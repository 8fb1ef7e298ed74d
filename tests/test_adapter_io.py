"""Adapter files: bit-exact round trips and one clear error for each mismatch."""

from __future__ import annotations

import json
import pickle
import re
import struct
from datetime import datetime

import pytest
import torch
from safetensors.torch import save_file

from blip_lora_core import AdapterError, LoraConfig, inject_lora, load_adapter, merge_lora, read_adapter, save_adapter
from blip_lora_core.lora.adapter_io import adapter_filename
from blip_lora_core.lora.hooks import lora_layers, lora_state_dict, remove_lora
from blip_lora_core.models.loading import load_blip

CONFIG = LoraConfig(r=4, alpha=8, dropout=0.05)


def _trained(bundle, seed=1, config=CONFIG):
    inject_lora(bundle.model, config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in lora_layers(bundle.model).values():
            module.lora_A.copy_(torch.randn(module.lora_A.shape, generator=gen))
            module.lora_B.copy_(torch.randn(module.lora_B.shape, generator=gen))
    return bundle.model


def test_filename_carries_hyperparameters_and_timestamp():
    name = adapter_filename(LoraConfig(r=16, alpha=32), batch_size=2, epochs=4, lr=1e-4,
                            when=datetime(2025, 6, 7, 16, 15, 36))
    assert name == "lora_r16_a32_bs2_ep4_lr0.0001_20250607_161536.safetensors"


def test_round_trip_is_bit_exact_and_metadata_complete(tiny_bundle, tiny_model_dir, tmp_path):
    model = _trained(tiny_bundle)
    path = save_adapter(model, tmp_path / "a.safetensors", config=CONFIG, base_model="tiny", base_revision="abc",
                        extra={"epochs": 2})
    fresh = load_blip(str(tiny_model_dir)).model
    info = load_adapter(fresh, path)
    saved, loaded = lora_state_dict(model), lora_state_dict(fresh)
    assert saved.keys() == loaded.keys()
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)
    assert info.config == CONFIG and info.base_model == "tiny" and info.base_revision == "abc"
    assert info.layers == list(lora_layers(model)) and info.extra == {"epochs": 2}
    assert len(info.fingerprint) == 16
    assert not any(p.requires_grad for n, p in fresh.named_parameters() if ".lora_" not in n)


def test_saving_a_merged_model_saves_the_same_adapter(tiny_bundle, tiny_model_dir, tmp_path):
    model = _trained(tiny_bundle)
    unmerged = save_adapter(model, tmp_path / "u.safetensors", config=CONFIG).read_bytes()
    merge_lora(model)
    merged_path = save_adapter(model, tmp_path / "m.safetensors", config=CONFIG)
    _, a = read_adapter(tmp_path / "u.safetensors")
    _, b = read_adapter(merged_path)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)
    assert len(unmerged) == merged_path.stat().st_size
    load_adapter(load_blip(str(tiny_model_dir)).model, merged_path)  # base probe still matches


def test_loading_into_a_merged_model_keeps_it_merged(tiny_bundle, tiny_model_dir, tmp_path, pixels):
    path = save_adapter(_trained(tiny_bundle), tmp_path / "a.safetensors", config=CONFIG)
    other = load_blip(str(tiny_model_dir)).model.eval()
    _trained(type(tiny_bundle)(other, None, None, ""), seed=7)
    merge_lora(other)
    load_adapter(other, path)
    reference = load_blip(str(tiny_model_dir)).model.eval()
    load_adapter(reference, path)
    ids = torch.tensor([[reference.config.text_config.bos_token_id, 5, 6]] * 2)
    with torch.no_grad():
        torch.testing.assert_close(other(pixel_values=pixels, input_ids=ids).logits,
                                   reference(pixel_values=pixels, input_ids=ids).logits, rtol=1e-4, atol=1e-4)


def test_no_temporary_files_are_left(tiny_bundle, tmp_path):
    save_adapter(_trained(tiny_bundle), tmp_path / "a.safetensors", config=CONFIG)
    assert [p.name for p in tmp_path.iterdir()] == ["a.safetensors"]


def test_wrong_base_model_names_layer_and_shapes(tiny_bundle, tmp_path):
    path = save_adapter(_trained(tiny_bundle), tmp_path / "a.safetensors", config=CONFIG, base_model="tiny")
    from blip_lora_core.models.loading import TinySize, build_tiny_blip
    wider = load_blip(str(build_tiny_blip(tmp_path / "wide", ["one cube"], size=TinySize(hidden=32)))).model
    with pytest.raises(AdapterError, match=r"layer vision_model\.encoder\.layers\.0\.self_attn\.qkv: .*\(96, 32\)"):
        load_adapter(wider, path)
    assert not lora_layers(wider)


def test_same_shapes_but_other_weights_is_refused(tiny_bundle, tmp_path):
    path = save_adapter(_trained(tiny_bundle), tmp_path / "a.safetensors", config=CONFIG)
    from blip_lora_core.models.loading import build_tiny_blip
    from tests.conftest import CAPTIONS
    other = load_blip(str(build_tiny_blip(tmp_path / "other", CAPTIONS, seed=5))).model
    with pytest.raises(AdapterError, match="weights differ from the base"):
        load_adapter(other, path)
    assert not lora_layers(other)
    load_adapter(other, path, check_base=False)
    assert len(lora_layers(other)) == 8


def test_rank_mismatch_with_an_injected_model(tiny_bundle, tiny_model_dir, tmp_path):
    path = save_adapter(_trained(tiny_bundle), tmp_path / "a.safetensors", config=CONFIG)
    model = load_blip(str(tiny_model_dir)).model
    inject_lora(model, LoraConfig(r=8))
    with pytest.raises(AdapterError, match=r"rank 8 \(lora_A \(8, 64\)\), the adapter rank 4"):
        load_adapter(model, path)


def test_missing_layer_in_the_model(tiny_bundle, tiny_model_dir, tmp_path):
    path = save_adapter(_trained(tiny_bundle), tmp_path / "a.safetensors", config=CONFIG)
    model = load_blip(str(tiny_model_dir)).model
    del model.vision_model.encoder.layers[1]
    with pytest.raises(AdapterError, match=r"layer vision_model\.encoder\.layers\.1\.self_attn\.qkv .*no such layer"):
        load_adapter(model, path)
    assert not lora_layers(model)


def test_model_with_other_lora_layers(tiny_bundle, tiny_model_dir, tmp_path):
    path = save_adapter(_trained(tiny_bundle), tmp_path / "a.safetensors", config=CONFIG)
    model = load_blip(str(tiny_model_dir)).model
    inject_lora(model, LoraConfig(r=4, targets=(r".*\.fc1",)))
    with pytest.raises(AdapterError, match="LoRA layers differ"):
        load_adapter(model, path)


def _rewrite(path, out, mutate_tensors=None, mutate_meta=None):
    from safetensors import safe_open
    with safe_open(str(path), "pt") as handle:
        meta, tensors = handle.metadata(), {k: handle.get_tensor(k) for k in handle.keys()}
    if mutate_tensors:
        mutate_tensors(tensors)
    if mutate_meta:
        mutate_meta(meta)
    save_file(tensors, str(out), metadata=meta)
    return out


def test_metadata_that_lies_about_the_rank(tiny_bundle, tmp_path):
    path = save_adapter(_trained(tiny_bundle), tmp_path / "a.safetensors", config=CONFIG)
    bad = _rewrite(path, tmp_path / "b.safetensors", mutate_meta=lambda m: m.update(r="8"))
    with pytest.raises(AdapterError, match="do not have rank r=8"):
        read_adapter(bad)


@pytest.mark.parametrize("side, shape", [("A", (5, 64)), ("A", (3, 64)), ("B", (192, 5)), ("B", (192, 3)),
                                         ("A", (4, 64, 1)), ("B", (192,))])
def test_each_tensor_must_have_the_files_rank(tiny_bundle, tmp_path, side, shape):
    """lora_A (r, in) and lora_B (out, r) are checked one by one: one tensor of another rank is refused."""
    path = save_adapter(_trained(tiny_bundle), tmp_path / "a.safetensors", config=CONFIG)
    layer = "vision_model.encoder.layers.1.self_attn.qkv"  # (192, 64)

    def reshape(tensors):
        tensors[f"{layer}.lora_{side}"] = torch.ones(shape)

    bad = _rewrite(path, tmp_path / "b.safetensors", mutate_tensors=reshape)
    with pytest.raises(AdapterError, match=rf"b.safetensors: layer {layer}: .*{re.escape(str(shape))}.*rank r=4"):
        read_adapter(bad)


@pytest.mark.parametrize("shape", [(8, 7), (8, 9), (7, 8), (9, 8), (64,), (8, 8, 1)])
def test_base_probe_must_have_one_row_of_8_values_per_layer(tiny_bundle, tmp_path, shape):
    path = save_adapter(_trained(tiny_bundle), tmp_path / "a.safetensors", config=CONFIG)
    assert read_adapter(path)[1]["base_probe"].shape == (8, 8)  # 8 adapted layers
    bad = _rewrite(path, tmp_path / "p.safetensors", mutate_tensors=lambda t: t.update(base_probe=torch.ones(shape)))
    with pytest.raises(AdapterError, match=rf"p.safetensors: base_probe has shape {re.escape(str(shape))}, "
                                           r"expected \(8, 8\)"):
        read_adapter(bad)


def test_missing_tensor_and_nan_tensor(tiny_bundle, tmp_path):
    path = save_adapter(_trained(tiny_bundle), tmp_path / "a.safetensors", config=CONFIG)
    first = "vision_model.encoder.layers.0.self_attn.qkv"
    missing = _rewrite(path, tmp_path / "m.safetensors", mutate_tensors=lambda t: t.pop(f"{first}.lora_B"))
    with pytest.raises(AdapterError, match="missing"):
        read_adapter(missing)
    nan = _rewrite(path, tmp_path / "n.safetensors", mutate_tensors=lambda t: t[f"{first}.lora_B"].fill_(float("nan")))
    with pytest.raises(AdapterError, match=f"layer {first}: .*NaN"):
        read_adapter(nan)


def test_not_an_adapter(tmp_path):
    plain = tmp_path / "plain.safetensors"
    save_file({"x": torch.zeros(2)}, str(plain))
    with pytest.raises(AdapterError, match="not a blip-lora adapter"):
        read_adapter(plain)
    with pytest.raises(AdapterError, match="no such adapter file"):
        read_adapter(tmp_path / "missing.safetensors")


def test_pickle_file_is_refused_without_unpickling(tmp_path):
    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('unpickled!')",))
    path = tmp_path / "evil.safetensors"
    path.write_bytes(pickle.dumps({"x": Boom()}))
    with pytest.raises(AdapterError, match="not a readable safetensors"):
        read_adapter(path)
    torch_file = tmp_path / "adapter.bin"
    torch.save({"x": torch.zeros(2)}, torch_file)
    with pytest.raises(AdapterError, match=str(torch_file.name)):
        read_adapter(torch_file)


@pytest.mark.parametrize("cut", [0, 7, 100, -10])
def test_truncated_file(tiny_bundle, tmp_path, cut):
    data = save_adapter(_trained(tiny_bundle), tmp_path / "a.safetensors", config=CONFIG).read_bytes()
    bad = tmp_path / "t.safetensors"
    bad.write_bytes(data[:cut] if cut >= 0 else data[:cut])
    with pytest.raises(AdapterError, match="t.safetensors"):
        read_adapter(bad)


def test_header_that_lies_about_shapes(tiny_bundle, tmp_path):
    data = save_adapter(_trained(tiny_bundle), tmp_path / "a.safetensors", config=CONFIG).read_bytes()
    size = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + size])
    key = next(k for k in header if k.endswith("lora_A"))
    header[key]["shape"] = [header[key]["shape"][0] * 2, header[key]["shape"][1]]
    text = json.dumps(header).encode()
    bad = tmp_path / "lie.safetensors"
    bad.write_bytes(struct.pack("<Q", len(text)) + text + data[8 + size:])
    with pytest.raises(AdapterError, match="lie.safetensors"):
        read_adapter(bad)


def test_remove_after_load_restores_the_model(tiny_bundle, tiny_model_dir, tmp_path):
    path = save_adapter(_trained(tiny_bundle), tmp_path / "a.safetensors", config=CONFIG)
    model = load_blip(str(tiny_model_dir)).model
    keys = list(model.state_dict())
    load_adapter(model, path)
    remove_lora(model)
    assert list(model.state_dict()) == keys


def test_a_header_length_starting_with_byte_0x80_is_not_taken_for_a_pickle(tiny_bundle, tiny_model_dir, tmp_path):
    """safetensors starts with the header length (little-endian u64): 0x...80 is a valid first byte."""
    model = _trained(tiny_bundle)
    for pad in range(300):
        path = save_adapter(model, tmp_path / "a.safetensors", config=CONFIG, extra={"pad": "x" * pad})
        if path.read_bytes()[:1] == b"\x80":
            break
    assert path.read_bytes()[:1] == b"\x80"
    load_adapter(load_blip(str(tiny_model_dir)).model, path)


def test_a_file_from_a_newer_format_version_is_refused_by_name(tiny_bundle, tmp_path):
    path = save_adapter(_trained(tiny_bundle), tmp_path / "a.safetensors", config=CONFIG)
    newer = _rewrite(path, tmp_path / "newer.safetensors", mutate_meta=lambda m: m.update(format_version="2"))
    with pytest.raises(AdapterError, match=r"newer\.safetensors: adapter format version 2 is newer than the "
                                           r"version 1 this blip-lora reads: upgrade blip-lora"):
        read_adapter(newer)
    odd = _rewrite(path, tmp_path / "odd.safetensors", mutate_meta=lambda m: m.update(format_version="x"))
    with pytest.raises(AdapterError, match="format_version 'x'"):
        read_adapter(odd)
    assert read_adapter(path)[0].layers  # the version this code writes reads back


def test_the_file_format_stays_readable_by_earlier_versions(tiny_bundle, tmp_path):
    """The metadata's names and values, the probe's positions (first to last weight, evenly) and the
    fingerprint's recipe are a file format: files written before must keep loading."""
    import hashlib

    from faults import split_safetensors

    model = _trained(tiny_bundle)
    path = save_adapter(model, tmp_path / "a.safetensors", config=CONFIG, base_model="tiny", base_revision="v1",
                        extra={"epochs": 2})
    header, _ = split_safetensors(path.read_bytes())
    layers = list(lora_layers(model))
    shapes = {name: tuple(dict(model.named_modules())[name].weight.shape) for name in layers}
    recipe = "\n".join(f"{name}:{out}x{inp}" for name, (out, inp) in shapes.items())
    assert header["__metadata__"] == {
        "format": "blip-lora-adapter", "format_version": "1", "r": "4", "alpha": "8.0", "dropout": "0.05",
        "scaling": "alpha/r", "targets": json.dumps(list(CONFIG.targets)), "layers": json.dumps(layers),
        "base_model": "tiny", "base_revision": "v1", "fingerprint": hashlib.sha256(recipe.encode()).hexdigest()[:16],
        "extra": '{"epochs": 2}'}
    probe = read_adapter(path)[1]["base_probe"]
    for row, name in enumerate(layers):
        weight = dict(model.named_modules())[name].weight.detach().reshape(-1)
        positions = [i * (weight.numel() - 1) // 7 for i in range(8)]  # 8 evenly spaced, first and last included
        assert torch.equal(probe[row], weight[positions].float()), name


def test_adapter_info_says_nothing_it_was_not_told():
    from blip_lora_core.lora.adapter_io import AdapterInfo

    info = AdapterInfo(CONFIG, ["vision_model.x"])
    assert (info.base_model, info.base_revision, info.fingerprint, info.extra) == ("", "", "", {})


def test_the_base_check_tolerates_half_precision_copies_but_not_other_weights(tiny_bundle, tiny_model_dir, tmp_path):
    """A copy of the base rounded to bf16 (relative error 2**-8) loads; weights 5 % larger do not."""
    path = save_adapter(_trained(tiny_bundle), tmp_path / "a.safetensors", config=CONFIG)
    rounded = load_blip(str(tiny_model_dir)).model
    with torch.no_grad():
        for param in rounded.parameters():
            param.copy_(param.to(torch.bfloat16).float())
    load_adapter(rounded, path)
    layer = "vision_model.encoder.layers.1.mlp.fc2"
    for scale, shift in ((1.05, 0.0), (1.0, 0.025)):
        other = load_blip(str(tiny_model_dir)).model
        weight = dict(other.named_modules())[layer].weight
        with torch.no_grad():  # 5 % larger, or shifted by 2.5 % of the largest weight
            weight.mul_(scale).add_(shift * weight.abs().max())
        with pytest.raises(AdapterError, match=f"weights differ from the base .*first at layer {re.escape(layer)}"):
            load_adapter(other, path)


def _metadata(path) -> dict[str, str]:
    from faults import split_safetensors

    return split_safetensors(path.read_bytes())[0]["__metadata__"]


def test_unset_base_model_revision_and_extra_are_written_empty(tiny_bundle, tmp_path):
    model = _trained(tiny_bundle)
    for kwargs in ({}, {"base_model": None, "base_revision": None, "extra": None}):
        path = save_adapter(model, tmp_path / "a.safetensors", config=CONFIG, **kwargs)
        meta = _metadata(path)
        assert (meta["base_model"], meta["base_revision"], meta["extra"]) == ("", "", "{}"), kwargs
        info = read_adapter(path)[0]
        assert (info.base_model, info.base_revision, info.extra) == ("", "", {})


def test_extra_is_written_with_sorted_keys_and_other_values_as_text(tiny_bundle, tmp_path):
    from pathlib import Path

    extra = {"when": datetime(2025, 6, 7, 16, 15, 36), "data": Path("/data/blocks"), "epochs": 2}
    path = save_adapter(_trained(tiny_bundle), tmp_path / "a.safetensors", config=CONFIG, extra=extra)
    assert _metadata(path)["extra"] == '{"data": "/data/blocks", "epochs": 2, "when": "2025-06-07 16:15:36"}'
    assert read_adapter(path)[0].extra == {"data": "/data/blocks", "epochs": 2, "when": "2025-06-07 16:15:36"}


def test_saving_a_model_without_lora_is_refused(tiny_bundle, tmp_path):
    with pytest.raises(AdapterError, match="the model has no LoRA layers to save"):
        save_adapter(tiny_bundle.model, tmp_path / "a.safetensors", config=CONFIG)
    assert not (tmp_path / "a.safetensors").exists()


def test_every_setting_other_than_the_defaults_reads_back(tiny_bundle, tmp_path):
    """rank-stabilised scaling, a dropout and targets that are not LoraConfig's defaults."""
    config = LoraConfig(r=2, alpha=3, dropout=0.125, rslora=True, targets=(r"vision_model\.encoder\.layers\.1\..*",))
    assert (config.dropout, config.targets, config.rslora) != (LoraConfig().dropout, LoraConfig().targets, False)
    path = save_adapter(_trained(tiny_bundle, config=config), tmp_path / "a.safetensors", config=config)
    assert _metadata(path)["scaling"] == "alpha/sqrt(r)"
    info = read_adapter(path)[0]
    assert info.config == config and info.config.scaling == 3 / 2 ** 0.5


def test_tied_lora_parameters_are_saved_as_copies(tiny_bundle, tiny_model_dir, tmp_path):
    """Two layers sharing one lora_A (tied by hand) still save: the file gets a copy of each."""
    model = _trained(tiny_bundle)
    first, second = (model.vision_model.encoder.layers[i].self_attn.qkv for i in (0, 1))
    second.lora_A = first.lora_A
    path = save_adapter(model, tmp_path / "a.safetensors", config=CONFIG)
    tensors = read_adapter(path)[1]
    prefix = "vision_model.encoder.layers.{}.self_attn.qkv.lora_A"
    assert torch.equal(tensors[prefix.format(0)], first.lora_A) and torch.equal(tensors[prefix.format(1)], first.lora_A)


@pytest.mark.parametrize("key, value, words", [
    ("targets", '"qkv"', r"targets '\"qkv\"', scaling 'alpha/r'"),
    ("targets", '{"qkv": 1}', r"targets '\{\"qkv\": 1\}', scaling 'alpha/r'"),
    ("scaling", "alpha", r"scaling 'alpha'\)"),
    ("scaling", "alpha/sqrt(r) ", r"scaling 'alpha/sqrt\(r\) '\)"),
    ("layers", '"vision_model.encoder.layers.0.self_attn.qkv"', "'layers' must be a non-empty list of layer names"),
    ("layers", "[]", "'layers' must be a non-empty list of layer names"),
    ("layers", "[1, 2]", "'layers' must be a non-empty list of layer names"),
])
def test_metadata_of_the_wrong_kind_is_refused_by_name(tiny_bundle, tmp_path, key, value, words):
    path = save_adapter(_trained(tiny_bundle), tmp_path / "a.safetensors", config=CONFIG)
    bad = _rewrite(path, tmp_path / "bad.safetensors", mutate_meta=lambda m: m.update({key: value}))
    with pytest.raises(AdapterError, match=rf"bad\.safetensors: .*{words}"):
        read_adapter(bad)


def test_optional_metadata_may_be_missing_and_extra_must_be_an_object(tiny_bundle, tiny_model_dir, tmp_path):
    """Files without base model, revision, fingerprint or extra (hand-made or older) read and load."""
    model = _trained(tiny_bundle)
    path = save_adapter(model, tmp_path / "a.safetensors", config=CONFIG, base_model="tiny", base_revision="v1",
                        extra={"epochs": 2})

    def strip(meta):
        for key in ("base_model", "base_revision", "fingerprint", "extra"):
            del meta[key]

    bare = _rewrite(path, tmp_path / "bare.safetensors", mutate_meta=strip)
    info = read_adapter(bare)[0]
    assert (info.base_model, info.base_revision, info.fingerprint, info.extra) == ("", "", "", {})
    fresh = load_blip(str(tiny_model_dir)).model
    load_adapter(fresh, bare)
    saved, loaded = lora_state_dict(model), lora_state_dict(fresh)
    assert saved.keys() == loaded.keys() and all(torch.equal(saved[k], loaded[k]) for k in saved)
    listed = _rewrite(path, tmp_path / "list.safetensors", mutate_meta=lambda m: m.update(extra="[1, 2]"))
    assert read_adapter(listed)[0].extra == {}


def test_a_tensor_the_metadata_does_not_name_is_refused(tiny_bundle, tmp_path):
    path = save_adapter(_trained(tiny_bundle), tmp_path / "a.safetensors", config=CONFIG)
    bad = _rewrite(path, tmp_path / "x.safetensors", mutate_tensors=lambda t: t.update(stowaway=torch.ones(2)))
    with pytest.raises(AdapterError, match=r"x\.safetensors: .*missing \[\], unexpected \['stowaway'\]"):
        read_adapter(bad)


@pytest.mark.parametrize("side", ["A", "B"])
def test_each_tensor_must_be_floating_point_and_finite(tiny_bundle, tmp_path, side):
    path = save_adapter(_trained(tiny_bundle), tmp_path / "a.safetensors", config=CONFIG)
    key = f"vision_model.encoder.layers.1.mlp.fc1.lora_{side}"
    whole = _rewrite(path, tmp_path / "i.safetensors", mutate_tensors=lambda t: t.update({key: t[key].long()}))
    with pytest.raises(AdapterError, match=r"i\.safetensors: layer .*fc1: adapter tensors must be floating point"):
        read_adapter(whole)
    for value in (float("nan"), float("inf")):
        bad = _rewrite(path, tmp_path / "f.safetensors", mutate_tensors=lambda t, v=value: t[key].view(-1)[3].fill_(v))
        with pytest.raises(AdapterError, match=r"f\.safetensors: layer .*fc1: adapter tensors hold NaN or infinite"):
            read_adapter(bad)


def test_an_unreadable_file_is_called_a_pickle_only_when_it_looks_like_one(tiny_bundle, tmp_path):
    data = save_adapter(_trained(tiny_bundle), tmp_path / "a.safetensors", config=CONFIG).read_bytes()
    for name, content in (("cut.safetensors", data[:-10]), ("text.safetensors", b"PK\x03 not a zip"),
                          ("zero.safetensors", b"\x00" * 64)):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(AdapterError, match="not a readable safetensors adapter file") as caught:
            read_adapter(tmp_path / name)
        assert "pickle" not in str(caught.value), name
    (tmp_path / "p.safetensors").write_bytes(pickle.dumps({"x": 1}, protocol=2))
    torch.save({"x": torch.zeros(2)}, tmp_path / "t.safetensors")
    for name in ("p.safetensors", "t.safetensors"):
        with pytest.raises(AdapterError, match="it is a pickle or torch.save file; blip-lora never unpickles"):
            read_adapter(tmp_path / name)


def _scale_layer(model, layer: str, scale: float, shift: float = 0.0) -> None:
    weight = dict(model.named_modules())[layer].weight
    with torch.no_grad():
        weight.mul_(scale).add_(shift * weight.abs().max())


def test_the_base_check_measures_each_layer_against_its_own_weights(tiny_bundle, tiny_model_dir, tmp_path):
    """A layer with 1000x smaller weights than the others is still checked at its own scale."""
    layer = "vision_model.encoder.layers.1.mlp.fc2"
    model = _trained(tiny_bundle)
    _scale_layer(model, layer, 1e-3)
    path = save_adapter(model, tmp_path / "a.safetensors", config=CONFIG)
    same = load_blip(str(tiny_model_dir)).model
    _scale_layer(same, layer, 1e-3)
    load_adapter(same, path)
    shifted = load_blip(str(tiny_model_dir)).model
    _scale_layer(shifted, layer, 1e-3, shift=0.025)  # 2.5 % of this layer's largest weight
    with pytest.raises(AdapterError, match=f"weights differ from the base .*first at layer {re.escape(layer)}"):
        load_adapter(shifted, path)


def test_a_layer_whose_base_weights_are_zero_matches_exactly(tiny_bundle, tiny_model_dir, tmp_path):
    """Zero weights give a zero tolerance: the same zeros still match."""
    layer = "vision_model.encoder.layers.0.mlp.fc1"
    model = _trained(tiny_bundle)
    _scale_layer(model, layer, 0.0)
    path = save_adapter(model, tmp_path / "a.safetensors", config=CONFIG)
    assert not read_adapter(path)[1]["base_probe"][2].any()  # layer 0's fc1 is the third adapted layer
    same = load_blip(str(tiny_model_dir)).model
    _scale_layer(same, layer, 0.0)
    load_adapter(same, path)
    assert len(lora_layers(same)) == 8
