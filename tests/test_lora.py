"""Hook-based LoRA: numbers, not shapes."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from blip_lora_core import (
    AdapterError,
    ConfigError,
    LoraConfig,
    inject_lora,
    is_merged,
    lora_disabled,
    merge_lora,
    remove_lora,
    trainable_parameters,
    unmerge_lora,
)
from blip_lora_core.lora.hooks import find_targets, lora_layers
from blip_lora_core.models.loading import blip_large_config, build_on_meta


def _forward(model, pixels):
    ids = torch.tensor([[model.config.text_config.bos_token_id, 5, 6, 7]]).repeat(len(pixels), 1)
    with torch.no_grad():
        return model(pixel_values=pixels, input_ids=ids).logits


def _randomise_b(model, seed=1):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in lora_layers(model).values():
            module.lora_B.copy_(torch.randn(module.lora_B.shape, generator=gen) * 0.1)


def test_zero_b_gives_the_base_output_exactly(tiny_bundle, pixels):
    model = tiny_bundle.model
    before = _forward(model, pixels)
    inject_lora(model, LoraConfig(r=4, alpha=8))
    assert torch.equal(_forward(model, pixels), before)


def _hooked_linear(dropout: float) -> tuple[nn.Module, nn.Linear, torch.Tensor]:
    """A seeded Linear(6, 5) under "vision_model" with LoRA r 2, alpha 3 (scaling 1.5) and a random B, and an
    input x (4, 3, 6)."""
    torch.manual_seed(0)
    layer = nn.Linear(6, 5)
    holder = nn.Sequential()
    holder.add_module("vision_model", nn.Sequential(layer))
    inject_lora(holder, LoraConfig(r=2, alpha=3.0, dropout=dropout))
    with torch.no_grad():
        layer.lora_B.copy_(torch.randn(5, 2))
    return holder, layer, torch.randn(4, 3, 6)


def test_hook_adds_scaled_low_rank_update_to_the_layer_output():
    holder, layer, x = _hooked_linear(dropout=0.0)
    expected = x @ layer.weight.T + layer.bias + 1.5 * (x @ layer.lora_A.T @ layer.lora_B.T)
    torch.testing.assert_close(holder(x), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("contiguous", [True, False])
def test_hook_with_dropout_matches_the_formula_in_values_and_gradients(contiguous):
    from blip_lora_core.lora.dropout import lora_dropout

    holder, layer, x = _hooked_linear(dropout=0.25)
    if not contiguous:  # the same values in a non-contiguous layout: the hook must not write through a view
        layer.register_forward_hook(lambda m, a, out: out.transpose(0, 1).contiguous().transpose(0, 1),
                                    prepend=True)
    holder.train()
    torch.manual_seed(7)
    got = holder(x)
    got.square().sum().backward()
    got_grads = (layer.lora_A.grad.clone(), layer.lora_B.grad.clone())
    layer.lora_A.grad = layer.lora_B.grad = None
    torch.manual_seed(7)
    zeroed, factor = lora_dropout(x, 0.25)
    assert factor == 1 / (1 - 0.25) and (zeroed == 0).any()
    expected = x @ layer.weight.T + layer.bias + 1.5 * factor * (zeroed @ layer.lora_A.T @ layer.lora_B.T)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    expected.square().sum().backward()
    torch.testing.assert_close(got_grads[0], layer.lora_A.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_grads[1], layer.lora_B.grad, rtol=1e-5, atol=1e-6)


def test_adapter_takes_the_layer_weights_dtype_unless_told():
    layer = nn.Linear(8, 4).to(torch.bfloat16)
    holder = nn.Sequential()
    holder.add_module("vision_model", nn.Sequential(layer))
    inject_lora(holder, LoraConfig(r=2))
    assert layer.lora_A.dtype == layer.lora_B.dtype == torch.bfloat16


def test_fp32_adapter_on_a_bf16_layer_runs_without_autocast():
    torch.manual_seed(0)
    layer = nn.Linear(8, 4).to(torch.bfloat16)
    holder = nn.Sequential()
    holder.add_module("vision_model", nn.Sequential(layer))
    inject_lora(holder, LoraConfig(r=2, alpha=2.0, dropout=0.0), dtype=torch.float32)
    assert layer.lora_A.dtype == layer.lora_B.dtype == torch.float32
    with torch.no_grad():
        layer.lora_B.copy_(torch.randn(4, 2))
    x = torch.randn(3, 8, dtype=torch.bfloat16)
    out = holder(x)
    expected = (x.float() @ layer.weight.float().T + layer.bias.float()
                + (x.float() @ layer.lora_A.T @ layer.lora_B.T))
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected, rtol=0.03, atol=0.03)


def test_rslora_scaling_is_alpha_over_sqrt_r():
    assert LoraConfig(r=16, alpha=32).scaling == 2.0
    assert LoraConfig(r=16, alpha=32, rslora=True).scaling == 8.0


def test_a_is_kaiming_uniform_and_b_is_zero(tiny_bundle):
    torch.manual_seed(0)
    inject_lora(tiny_bundle.model, LoraConfig(r=4))
    for module in lora_layers(tiny_bundle.model).values():
        bound = 1 / math.sqrt(module.in_features)  # kaiming_uniform(a=sqrt(5)) bound
        # 256 or more uniform draws on [-bound, bound]: the largest is within 3 % of the bound
        assert 0.97 * bound < module.lora_A.abs().max() <= bound
        assert torch.count_nonzero(module.lora_B) == 0


def test_default_targets_every_linear_of_the_vision_encoder_only(tiny_bundle):
    model = tiny_bundle.model
    names = inject_lora(model, LoraConfig())
    vision_linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.startswith("vision_model.")]
    assert names == vision_linears and len(names) == 2 * 4
    assert all(type(m) is nn.Linear for m in lora_layers(model).values())


def test_text_decoder_layers_can_be_added_by_pattern(tiny_bundle):
    config = LoraConfig(targets=(r"vision_model\..*", r"text_decoder\..*\.attention\.self\.(query|value)"))
    names = inject_lora(tiny_bundle.model, config)
    text = [n for n in names if n.startswith("text_decoder")]
    assert len(text) == 2 * 2 and all(n.endswith(("query", "value")) for n in text)


def test_only_adapter_parameters_receive_gradients(tiny_bundle, pixels):
    model = tiny_bundle.model
    inject_lora(model, LoraConfig(r=4))
    _randomise_b(model)
    model.train()
    ids = torch.tensor([[model.config.text_config.bos_token_id, 5, 6, 3]] * 2)
    model(pixel_values=pixels, input_ids=ids, labels=ids).loss.backward()
    for name, param in model.named_parameters():
        if ".lora_" in name:
            assert param.requires_grad and param.grad is not None and param.grad.abs().sum() > 0, name
        else:
            assert not param.requires_grad and param.grad is None, name


def test_trainable_parameter_count(tiny_bundle):
    model = tiny_bundle.model
    total_before = trainable_parameters(model).total
    inject_lora(model, LoraConfig(r=4))
    expected = sum(4 * (m.in_features + m.out_features) for m in lora_layers(model).values())
    count = trainable_parameters(model)
    assert count.trainable == expected and count.total == total_before + expected
    assert f"{expected:,}" in str(count)


WITH_TEXT = (r"vision_model\..*", r"text_decoder\..*\.attention\.self\.(query|value)")


@pytest.mark.parametrize("targets, layers", [(LoraConfig().targets, 8), (WITH_TEXT, 12)])
def test_merged_equals_unmerged_and_merging_twice_is_a_no_op(tiny_bundle, pixels, targets, layers):
    model = tiny_bundle.model.eval()
    inject_lora(model, LoraConfig(r=4, alpha=8, targets=targets))
    _randomise_b(model)
    hooked = _forward(model, pixels)
    base = {n: m.weight.clone() for n, m in lora_layers(model).items()}
    assert merge_lora(model) == layers and is_merged(model)
    for name, module in lora_layers(model).items():  # every layer's weight holds its update: W + (alpha/r) B A
        expected = base[name] + 2.0 * module.lora_B @ module.lora_A
        torch.testing.assert_close(module.weight, expected, rtol=1e-5, atol=1e-6, msg=name)
    merged = _forward(model, pixels)
    torch.testing.assert_close(merged, hooked, rtol=1e-5, atol=1e-5)
    weights = {n: m.weight.clone() for n, m in lora_layers(model).items()}
    assert merge_lora(model) == 0
    assert all(torch.equal(weights[n], m.weight) for n, m in lora_layers(model).items())
    torch.testing.assert_close(_forward(model, pixels), merged, rtol=0, atol=0)


def test_unmerge_restores_weights_and_outputs(tiny_bundle, pixels):
    model = tiny_bundle.model.eval()
    base = _forward(model, pixels)
    inject_lora(model, LoraConfig(r=4))
    original = {n: m.weight.clone() for n, m in lora_layers(model).items()}
    _randomise_b(model)
    hooked = _forward(model, pixels)
    merge_lora(model)
    assert unmerge_lora(model) == 8 and not is_merged(model)
    for name, module in lora_layers(model).items():
        torch.testing.assert_close(module.weight, original[name], rtol=0, atol=1e-6)
    torch.testing.assert_close(_forward(model, pixels), hooked, rtol=1e-5, atol=1e-5)
    with lora_disabled(model):
        torch.testing.assert_close(_forward(model, pixels), base, rtol=1e-5, atol=1e-5)


def test_merge_refuses_non_finite_updates(tiny_bundle):
    model = tiny_bundle.model
    inject_lora(model, LoraConfig(r=4))
    layer_name, layer = next(iter(lora_layers(model).items()))
    with torch.no_grad():
        layer.lora_B.fill_(float("inf"))
    before = layer.weight.clone()
    with pytest.raises(AdapterError, match=f"cannot merge layer {layer_name}: its LoRA update is not finite"):
        merge_lora(model)
    assert torch.equal(layer.weight, before)
    with torch.no_grad():  # a finite update (8 * 4 * 5e36 = 1.6e38) that overflows a huge weight (2e38)
        layer.lora_A.fill_(1.0)
        layer.lora_B.fill_(5e36)
        layer.weight.fill_(2e38)
    with pytest.raises(AdapterError, match=f"cannot merge layer {layer_name}: merged weight is not finite"):
        merge_lora(model)
    assert (layer.weight == 2e38).all()


def test_remove_restores_the_original_model_exactly(tiny_bundle, pixels):
    model = tiny_bundle.model.eval()
    keys, base = list(model.state_dict()), _forward(model, pixels)
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    hooks = {n: list(m._forward_hooks.values()) for n, m in model.named_modules()}  # load_blip's own stay
    inject_lora(model, LoraConfig(r=4, dropout=0.1))
    assert set(model.state_dict()) > set(keys)
    _randomise_b(model)
    remove_lora(model)
    assert list(model.state_dict()) == keys
    assert {n: p.requires_grad for n, p in model.named_parameters()} == grads
    assert torch.equal(_forward(model, pixels), base)
    assert {n: list(m._forward_hooks.values()) for n, m in model.named_modules()} == hooks


def test_remove_after_merging_gives_back_the_base_or_keeps_the_update(tiny_bundle, tiny_model_dir, pixels):
    from blip_lora_core.models.loading import load_blip

    for merge_first in (False, True):
        model = load_blip(str(tiny_model_dir)).model.eval()
        attributes, base = set(vars(model)), _forward(model, pixels)
        inject_lora(model, LoraConfig(r=4))
        _randomise_b(model)
        hooked = _forward(model, pixels)
        if merge_first:
            merge_lora(model)
        remove_lora(model, keep_merged=True)  # merges (if not yet) and keeps the update in the weights
        assert not lora_layers(model) and set(vars(model)) == attributes
        torch.testing.assert_close(_forward(model, pixels), hooked, rtol=1e-5, atol=1e-5)
    model = tiny_bundle.model.eval()
    inject_lora(model, LoraConfig(r=4))
    _randomise_b(model)
    merge_lora(model)
    remove_lora(model)  # unmerges first: the base model again
    torch.testing.assert_close(_forward(model, pixels), base, rtol=1e-5, atol=1e-5)
    remove_lora(model)  # a model without LoRA: nothing to do
    assert set(vars(model)) == attributes


def test_dropout_applies_to_the_lora_branch_in_training_only(tiny_bundle, pixels):
    model = tiny_bundle.model
    inject_lora(model, LoraConfig(r=4, dropout=0.5))
    model.eval()
    base = _forward(model, pixels)
    model.train()
    assert torch.equal(_forward(model, pixels), base)  # B = 0: dropout on the branch changes nothing
    _randomise_b(model)
    model.eval()
    first, second = _forward(model, pixels), _forward(model, pixels)
    assert torch.equal(first, second)
    model.train()
    torch.manual_seed(0)
    assert not torch.allclose(_forward(model, pixels), first)


def test_explicit_layer_names_are_exactly_the_layers_adapted(tiny_bundle):
    model = tiny_bundle.model
    names = ["vision_model.encoder.layers.1.mlp.fc2", "text_decoder.bert.encoder.layer.0.attention.self.query"]
    assert inject_lora(model, LoraConfig(r=4), layer_names=names) == names  # the config's targets do not apply
    assert sorted(lora_layers(model)) == sorted(names)


def test_a_named_layer_that_is_not_linear_is_refused(tiny_bundle):
    with pytest.raises(AdapterError, match=r"layer 'vision_model.encoder.layers.0.mlp' is not an nn.Linear .*MLP"):
        inject_lora(tiny_bundle.model, LoraConfig(r=4), layer_names=["vision_model.encoder.layers.0.mlp"])
    assert not lora_layers(tiny_bundle.model)


def test_rank_up_to_the_smallest_dimension_is_allowed():
    holder = nn.Sequential()
    holder.add_module("vision_model", nn.Sequential(nn.Linear(6, 5)))
    assert inject_lora(holder, LoraConfig(r=5)) == ["vision_model.0"]
    remove_lora(holder)
    with pytest.raises(AdapterError, match="r=6 exceeds"):
        inject_lora(holder, LoraConfig(r=6))


def test_inject_twice_and_no_target_are_errors(tiny_bundle):
    with pytest.raises(AdapterError, match="no nn.Linear"):
        inject_lora(tiny_bundle.model, LoraConfig(targets=("nothing_here",)))
    inject_lora(tiny_bundle.model, LoraConfig())
    with pytest.raises(AdapterError, match="already has LoRA"):
        inject_lora(tiny_bundle.model, LoraConfig())


@pytest.mark.parametrize("kwargs", [
    dict(r=0), dict(r=2.5), dict(r=True), dict(r="4"), dict(alpha=-1), dict(alpha=0), dict(alpha=float("inf")),
    dict(alpha="8"), dict(dropout=1.0), dict(dropout=-0.1), dict(dropout="0.1"), dict(rslora=1), dict(rslora="yes"),
    dict(targets=()), dict(targets=("(",)), dict(targets="vision_model.*"), dict(targets=5), dict(targets=[r".*", 1]),
])
def test_config_validation(kwargs):
    with pytest.raises(ConfigError, match=rf"lora\.{next(iter(kwargs))}\b"):
        LoraConfig(**kwargs)


def test_config_defaults_and_smallest_valid_values():
    assert LoraConfig() == LoraConfig(r=16, alpha=32.0, dropout=0.05, rslora=False, targets=(r"vision_model\..*",))
    config = LoraConfig(r=1, alpha=0.5, dropout=0.0, rslora=True, targets=[r".*\.fc1", r".*\.fc2"])
    assert (config.r, config.alpha, config.dropout) == (1, 0.5, 0.0)
    assert config.targets == (r".*\.fc1", r".*\.fc2")  # a list is kept as a tuple: the config stays hashable
    assert hash(config) == hash(LoraConfig(r=1, alpha=0.5, dropout=0.0, rslora=True, targets=config.targets))


def test_blip_large_on_meta_has_96_targets_and_the_published_counts():
    model = build_on_meta(blip_large_config())
    names = find_targets(model, LoraConfig().targets)
    assert len(names) == 96
    suffixes = {n.split("layers.")[1].split(".", 1)[1] for n in names}
    assert suffixes == {"self_attn.qkv", "self_attn.projection", "mlp.fc1", "mlp.fc2"}
    inject_lora(model, LoraConfig(r=8))
    assert trainable_parameters(model).trainable == 3_145_728
    remove_lora(model)
    inject_lora(model, LoraConfig(r=16))
    assert trainable_parameters(model).trainable == 6_291_456


def test_hooks_compile_with_torch_compile(tiny_bundle):
    torch._dynamo.reset()
    holder = nn.Sequential()
    holder.add_module("vision_model", nn.Sequential(nn.Linear(8, 8), nn.GELU(), nn.Linear(8, 4)))
    inject_lora(holder, LoraConfig(r=2, dropout=0.0))
    _randomise_b(holder)
    x = torch.randn(3, 8)
    eager = holder(x)
    compiled = torch.compile(holder, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), eager)


def test_rank_larger_than_a_layer_is_refused_before_allocating(tiny_bundle):
    too_big = r"r=100000000000 exceeds layer vision_model\.encoder\.layers\.0\.self_attn\.qkv"
    with pytest.raises(AdapterError, match=too_big):
        inject_lora(tiny_bundle.model, LoraConfig(r=100_000_000_000))
    assert not lora_layers(tiny_bundle.model)


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_gradient_checkpointing_gives_the_same_lora_gradients(tiny_model_dir, pixels, dropout):
    """Recomputed forwards (with the in-place hook and the CPU dropout mask) must reproduce the gradients."""
    from blip_lora_core.models.loading import load_blip

    grads, calls = [], []
    for checkpointing in (False, True):
        model = load_blip(str(tiny_model_dir), device="cpu").model
        torch.manual_seed(0)
        inject_lora(model, LoraConfig(r=4, alpha=8, dropout=dropout, targets=(r"vision_model\..*", r".*query")))
        _randomise_b(model)
        if checkpointing:
            model.gradient_checkpointing_enable()
        model.train()
        count: list[int] = []
        model.vision_model.encoder.layers[0].self_attn.qkv.register_forward_hook(lambda *_, c=count: c.append(1))
        ids = torch.tensor([[model.config.text_config.bos_token_id, 5, 6, 7]]).repeat(len(pixels), 1)
        torch.manual_seed(1)
        model(pixel_values=pixels, input_ids=ids, labels=ids).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
        calls.append(len(count))
    assert calls == [1, 2]  # the checkpointed layer really ran its forward again during backward
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 0
    assert all(g.abs().sum() > 0 for name, g in grads[0].items() if "vision_model" in name)
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-7, msg=name)


def test_merge_keeping_the_base_restores_it_bit_for_bit_in_bf16(tiny_bundle):
    model = tiny_bundle.model.to(torch.bfloat16)
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    inject_lora(model, LoraConfig(r=4, alpha=8))
    for seed in range(5):  # swap "adapters" many times: subtracting the update in bf16 would drift
        _randomise_b(model, seed)
        merge_lora(model, keep_base=True)
        assert is_merged(model)
        unmerge_lora(model)
    drift_free = {n: p for n, p in model.named_parameters() if "lora_" not in n}
    assert all(torch.equal(drift_free[n], base[n]) for n in base)
    _randomise_b(model, 9)
    merge_lora(model)  # without the kept copy, unmerging subtracts in fp32 and rounds: not exact in bf16
    unmerge_lora(model)
    assert not all(torch.equal(dict(model.named_parameters())[n], base[n]) for n in base)


def test_load_lora_tensors_into_merged_layers_remerges_with_the_new_update(tiny_bundle, pixels):
    from blip_lora_core.lora.hooks import check_lora_fits, load_lora_tensors, lora_state_dict

    model = tiny_bundle.model
    config = LoraConfig(r=4, alpha=8)
    names = inject_lora(model, config)
    _randomise_b(model, 1)
    first = {k: v.clone() for k, v in lora_state_dict(model).items()}
    expected_first = _forward(model, pixels)
    _randomise_b(model, 2)
    second = {k: v.clone() for k, v in lora_state_dict(model).items()}
    expected_second = _forward(model, pixels)
    merge_lora(model, keep_base=True)
    check_lora_fits(model, names, first, config.r)
    load_lora_tensors(model, config, names, first)
    assert is_merged(model)
    torch.testing.assert_close(_forward(model, pixels), expected_first, rtol=1e-5, atol=1e-5)
    load_lora_tensors(model, config, names, second)
    torch.testing.assert_close(_forward(model, pixels), expected_second, rtol=1e-5, atol=1e-5)


def test_check_lora_fits_names_the_layer_and_shapes(tiny_bundle):
    from blip_lora_core.lora.hooks import check_lora_fits

    model = tiny_bundle.model
    name = find_targets(model, LoraConfig().targets)[0]
    out_f, in_f = dict(model.named_modules())[name].weight.shape
    good = {f"{name}.lora_A": torch.zeros(4, in_f), f"{name}.lora_B": torch.zeros(out_f, 4)}
    check_lora_fits(model, [name], good, 4)
    with pytest.raises(AdapterError, match=rf"layer {name}: .*\(4, {in_f + 1}\).*{(out_f, in_f)}"):
        check_lora_fits(model, [name], {**good, f"{name}.lora_A": torch.zeros(4, in_f + 1)}, 4)
    with pytest.raises(AdapterError, match=rf"layer {name}: the adapter lacks lora_B"):
        check_lora_fits(model, [name], {f"{name}.lora_A": good[f"{name}.lora_A"]}, 4)
    with pytest.raises(AdapterError, match="no such layer"):
        check_lora_fits(model, ["vision_model.nowhere"], {"vision_model.nowhere.lora_A": torch.zeros(1),
                                                          "vision_model.nowhere.lora_B": torch.zeros(1)}, 4)


def test_only_the_lora_subpackage_touches_a_layers_lora_state():
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    owner = root / "blip_lora_core" / "lora"
    sources = [p for folder in ("blip_lora_core", "training", "bench", "ros2_ws/src")
               for p in (root / folder).rglob("*.py")]
    assert len(sources) > 40
    offenders = [str(p.relative_to(root)) for p in sources
                 if not p.is_relative_to(owner) and re.search(r"\._lora\b", p.read_text(encoding="utf-8"))]
    assert offenders == []


def _reference_hook(module, args, output):
    """The plain LoRA formula, out + scaling * B(A(drop(x))), out of place: the fast hook is tested against it."""
    from blip_lora_core.lora.dropout import lora_dropout

    state, x = module._lora, args[0]
    if state.merged or not state.enabled:
        return output
    factor = 1.0
    if state.dropout > 0.0 and module.training:
        x, factor = lora_dropout(x, state.dropout)
    return output + state.scaling * factor * nn.functional.linear(nn.functional.linear(x, module.lora_A),
                                                                  module.lora_B)


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_the_fast_in_place_hook_equals_the_reference_hook_on_blip(tiny_bundle, pixels, dropout):
    model = tiny_bundle.model
    inject_lora(model, LoraConfig(r=4, alpha=8, dropout=dropout,
                                  targets=(r"vision_model\..*", r"text_decoder\..*\.(query|value)")))
    _randomise_b(model, 3)
    model.train()
    ids = torch.tensor([[model.config.text_config.bos_token_id, 5, 6, 7, 8]]).repeat(len(pixels), 1)

    def loss_and_grads():
        model.zero_grad(set_to_none=True)
        torch.manual_seed(11)  # the same dropout masks on both sides
        loss = model(pixel_values=pixels, input_ids=ids, labels=ids).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    fast_loss, fast_grads = loss_and_grads()
    for module in lora_layers(model).values():  # swap every fast hook for the reference one
        module._lora.handle.remove()
        module._lora.handle = module.register_forward_hook(_reference_hook)
    reference_loss, reference_grads = loss_and_grads()
    torch.testing.assert_close(fast_loss, reference_loss, rtol=1e-6, atol=1e-6)
    assert fast_grads.keys() == reference_grads.keys() and len(fast_grads) == 2 * len(lora_layers(model))
    for name in fast_grads:
        torch.testing.assert_close(fast_grads[name], reference_grads[name], rtol=1e-5, atol=1e-7, msg=name)


def test_config_to_dict_is_plain_and_from_dict_reads_it_back():
    config = LoraConfig(r=4, alpha=8.0, dropout=0.1, rslora=True, targets=(r".*\.fc1", r".*query"))
    values = config.to_dict()
    assert values == {"r": 4, "alpha": 8.0, "dropout": 0.1, "rslora": True, "targets": [r".*\.fc1", r".*query"]}
    assert type(values["targets"]) is list  # YAML and JSON write a list, not a Python tuple
    assert LoraConfig.from_dict(values) == config
    assert LoraConfig.from_dict(None) == LoraConfig()


def test_empty_targets_message_says_what_is_missing():
    with pytest.raises(ConfigError, match=r"^lora\.targets must name at least one pattern$"):
        LoraConfig(targets=())


def _three_layer_holder(seed: int = 0) -> tuple[nn.Module, list[nn.Linear]]:
    """vision_model = Linear(6, 5), Linear(5, 5), Linear(5, 4), LoRA r 2, alpha 4 (scaling 2) and a random B."""
    torch.manual_seed(seed)
    layers = [nn.Linear(6, 5), nn.Linear(5, 5), nn.Linear(5, 4)]
    holder = nn.Sequential()
    holder.add_module("vision_model", nn.Sequential(*layers))
    inject_lora(holder, LoraConfig(r=2, alpha=4.0, dropout=0.0))
    _randomise_b(holder, seed)
    return holder, layers


def test_hook_adds_into_the_base_layers_own_output_tensor():
    holder, layer, x = _hooked_linear(dropout=0.0)
    base_outputs = []
    layer.register_forward_hook(lambda m, a, out: base_outputs.append(out.data_ptr()), prepend=True)
    out = holder(x)
    assert out.data_ptr() == base_outputs[0]  # no copy of the (..., out) activation
    torch.testing.assert_close(out, x @ layer.weight.T + layer.bias + 1.5 * (x @ layer.lora_A.T @ layer.lora_B.T),
                               rtol=1e-6, atol=1e-6)


def test_a_merge_stopped_by_a_bad_layer_can_be_undone_or_finished():
    holder, layers = _three_layer_holder()
    base = [m.weight.detach().clone() for m in layers]
    deltas = [2.0 * m.lora_B.detach() @ m.lora_A.detach() for m in layers]
    good_b = layers[1].lora_B.detach().clone()
    with torch.no_grad():
        layers[1].lora_B.fill_(float("inf"))
    with pytest.raises(AdapterError, match=r"cannot merge layer vision_model\.1"):
        merge_lora(holder)
    assert [m._lora.merged for m in layers] == [True, False, False] and not is_merged(holder)
    torch.testing.assert_close(layers[0].weight, base[0] + deltas[0], rtol=0, atol=1e-6)
    assert unmerge_lora(holder) == 1  # only the merged layer (unmerging the others would subtract their B A)
    torch.testing.assert_close(layers[0].weight, base[0], rtol=0, atol=1e-6)
    assert torch.equal(layers[1].weight, base[1]) and torch.equal(layers[2].weight, base[2])
    with pytest.raises(AdapterError):
        merge_lora(holder)
    with torch.no_grad():
        layers[1].lora_B.copy_(good_b)
    assert merge_lora(holder) == 2 and is_merged(holder)  # the first layer is skipped, the other two merged
    for module, weight, delta in zip(layers, base, deltas, strict=True):
        torch.testing.assert_close(module.weight, weight + delta, rtol=0, atol=1e-6)


def test_unmerging_an_unmerged_model_changes_nothing_and_no_lora_is_not_merged():
    holder, layers = _three_layer_holder()
    weights = [m.weight.detach().clone() for m in layers]
    assert unmerge_lora(holder) == 0
    assert all(torch.equal(m.weight, w) for m, w in zip(layers, weights, strict=True))
    plain = nn.Sequential(nn.Linear(3, 3))
    assert is_merged(plain) is False and merge_lora(plain) == 0


def test_lora_disabled_restores_the_adapters_and_refuses_merged_ones():
    holder, layers = _three_layer_holder()
    x = torch.randn(2, 6)
    with torch.no_grad():
        hooked = holder(x)
        with lora_disabled(holder):
            plain = holder(x)
        assert torch.equal(holder(x), hooked) and not torch.allclose(plain, hooked)
        base = x
        for module in layers:
            base = base @ module.weight.T + module.bias
        torch.testing.assert_close(plain, base, rtol=1e-6, atol=1e-6)
    merge_lora(holder)
    with pytest.raises(AdapterError, match="cannot disable merged adapters: call unmerge_lora first"):
        with lora_disabled(holder):
            pass
    assert all(m._lora.enabled for m in layers)


def test_check_lora_fits_says_what_is_wrong_with_each_layer():
    from blip_lora_core.lora.hooks import check_lora_fits

    holder = nn.Sequential()
    holder.add_module("vision_model", nn.Sequential(nn.Linear(6, 5), nn.GELU(), nn.Linear(5, 4)))
    good = {"vision_model.0.lora_A": torch.zeros(2, 6), "vision_model.0.lora_B": torch.zeros(5, 2),
            "vision_model.2.lora_A": torch.zeros(2, 5), "vision_model.2.lora_B": torch.zeros(4, 2)}
    check_lora_fits(holder, ["vision_model.0", "vision_model.2"], good, 2)
    with pytest.raises(AdapterError, match=r"^layer vision_model\.1 is not an nn\.Linear in this model \(a GELU\)$"):
        check_lora_fits(holder, ["vision_model.1"], good, 2)
    with pytest.raises(AdapterError, match=r"^layer vision_model\.9 is not an nn\.Linear in this model "
                                           r"\(no such layer\)$"):
        check_lora_fits(holder, ["vision_model.9"], good, 2)
    with pytest.raises(AdapterError, match=r"^layer vision_model\.0: the adapter lacks lora_A$"):
        check_lora_fits(holder, ["vision_model.0"], {"vision_model.0.lora_B": good["vision_model.0.lora_B"]}, 2)
    with pytest.raises(AdapterError, match=r"^layer vision_model\.0: adapter has lora_A \(2, 6\) and lora_B \(4, 2\) "
                                           r"at r=2, but the model's weight is \(5, 6\)$"):
        check_lora_fits(holder, ["vision_model.0"], {**good, "vision_model.0.lora_B": torch.zeros(4, 2)}, 2)
    inject_lora(holder, LoraConfig(r=2), layer_names=["vision_model.0", "vision_model.2"])
    check_lora_fits(holder, ["vision_model.0", "vision_model.2"], good, 2)
    with pytest.raises(AdapterError, match=r"model only: \['vision_model\.2'\], adapter only: \[\]"):
        check_lora_fits(holder, ["vision_model.0"], good, 2)


def test_load_lora_tensors_injects_exactly_the_named_layers_and_keeps_merge_state():
    from blip_lora_core.lora.hooks import load_lora_tensors

    torch.manual_seed(0)
    holder = nn.Sequential()
    holder.add_module("vision_model", nn.Sequential(nn.Linear(6, 5), nn.Linear(5, 4)))
    holder.add_module("text_decoder", nn.Sequential(nn.Linear(4, 3)))
    tensors = {"text_decoder.0.lora_A": torch.randn(2, 4), "text_decoder.0.lora_B": torch.randn(3, 2)}
    config = LoraConfig(r=2, alpha=3.0, dropout=0.0)  # its targets (the vision encoder) do not apply
    load_lora_tensors(holder, config, ["text_decoder.0"], tensors)
    assert list(lora_layers(holder)) == ["text_decoder.0"] and not is_merged(holder)
    layer = holder.text_decoder[0]
    assert torch.equal(layer.lora_A, tensors["text_decoder.0.lora_A"])
    assert torch.equal(layer.lora_B, tensors["text_decoder.0.lora_B"])
    x = torch.randn(2, 4)
    torch.testing.assert_close(layer(x), x @ layer.weight.T + layer.bias + 1.5 * x @ layer.lora_A.T @ layer.lora_B.T,
                               rtol=1e-6, atol=1e-6)
    for keep_base in (False, True):
        base = layer.weight.detach().clone()
        merge_lora(holder, keep_base=keep_base)
        load_lora_tensors(holder, config, ["text_decoder.0"], tensors)
        assert is_merged(holder)
        kept = layer._lora.base_weight  # a CPU copy only where the merge asked for one
        assert (kept is not None) == keep_base
        if keep_base:
            assert torch.equal(kept, base)
        torch.testing.assert_close(layer(x), x @ base.T + layer.bias + 1.5 * x @ layer.lora_A.T @ layer.lora_B.T,
                                   rtol=1e-6, atol=1e-6)
        unmerge_lora(holder)
        torch.testing.assert_close(layer.weight, base, rtol=0, atol=1e-6)


def test_base_weight_values_read_the_kept_copy_exactly_in_bf16():
    from blip_lora_core.lora.hooks import base_weight_values

    torch.manual_seed(0)
    layer = nn.Linear(16, 8).to(torch.bfloat16)
    holder = nn.Sequential()
    holder.add_module("vision_model", nn.Sequential(layer))
    inject_lora(holder, LoraConfig(r=4, alpha=8.0))
    with torch.no_grad():
        layer.lora_B.copy_(torch.randn(8, 4))
    base = layer.weight.detach().float().reshape(-1).clone()
    index = torch.tensor([0, 5, 17, 63, 127])
    assert torch.equal(base_weight_values(layer, index), base[index])  # unmerged: the weight itself
    merge_lora(holder, keep_base=True)
    got = base_weight_values(layer, index)
    assert got.dtype == torch.float32 and torch.equal(got, base[index])  # bit for bit, from the kept copy
    unmerge_lora(holder)
    merge_lora(holder)  # no kept copy: W - scaling B A in fp32 from the rounded bf16 weight, close
    torch.testing.assert_close(base_weight_values(layer, index), base[index], rtol=0.02, atol=0.05)


@pytest.mark.parametrize("count, text", [
    ((1234, 5678), "trainable params: 1,234 || all params: 5,678 || trainable: 21.7330%"),
    ((0, 0), "trainable params: 0 || all params: 0 || trainable: 0.0000%"),
])
def test_parameter_count_text(count, text):
    from blip_lora_core.lora.hooks import ParameterCount

    assert str(ParameterCount(*count)) == text
