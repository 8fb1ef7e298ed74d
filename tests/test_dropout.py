"""LoRA dropout on the CPU: four 16-bit uniforms per 64-bit draw, with dropout's distribution and gradient."""

import math

import pytest
import torch

from blip_lora_core.lora.dropout import _uniform16, lora_dropout, quantised_p


def _dropout(x, p):
    zeroed, factor = lora_dropout(x, p)
    return zeroed * factor


def test_drop_fraction_matches_p_within_five_sigma():
    torch.manual_seed(0)
    x = torch.randn(4_000_000).abs() + 0.1  # no zeros, so zeros in the output are drops
    for p in (0.05, 0.1, 0.5):
        dropped = float((_dropout(x, p) == 0).float().mean())
        sigma = math.sqrt(p * (1 - p) / x.numel())
        assert abs(dropped - quantised_p(p)) < 5 * sigma, (p, dropped)


def test_kept_elements_are_scaled_by_one_over_keep_probability():
    torch.manual_seed(1)
    x = torch.randn(1000, 64)
    zeroed, factor = lora_dropout(x, 0.05)
    kept = zeroed != 0
    assert torch.equal(zeroed[kept], x[kept])  # the scale is left to the caller
    assert factor == pytest.approx(1 / (1 - quantised_p(0.05)), rel=1e-12)
    assert quantised_p(0.05) == 3277 / 65536


def test_gradient_is_the_mask_times_the_scale():
    torch.manual_seed(2)
    x = torch.randn(3, 50, 40, requires_grad=True)
    upstream = torch.randn(3, 50, 40)
    y = _dropout(x, 0.2)
    y.backward(upstream)
    mask = (y != 0).float()
    torch.testing.assert_close(x.grad, upstream * mask / (1 - quantised_p(0.2)), rtol=1e-6, atol=0)


def test_same_seed_same_mask_and_successive_calls_differ():
    x = torch.ones(10_000)
    torch.manual_seed(3)
    first, second = _dropout(x, 0.3), _dropout(x, 0.3)
    torch.manual_seed(3)
    assert torch.equal(_dropout(x, 0.3), first)
    assert not torch.equal(first, second)


def test_bf16_input_keeps_its_dtype_and_shape():
    x = torch.randn(2, 7, 33, dtype=torch.bfloat16)
    y, _ = lora_dropout(x, 0.1)
    assert y.dtype == torch.bfloat16 and y.shape == x.shape


def test_probability_below_one_level_is_identity_and_near_one_is_clamped():
    x = torch.randn(100)
    assert lora_dropout(x, 1e-6) == (x, 1.0)
    assert quantised_p(0.999999) == 65535 / 65536
    assert torch.isfinite(_dropout(x, 0.999999)).all()


def test_uniform16_lanes_are_uniform_and_uncorrelated():
    torch.manual_seed(4)
    values = _uniform16(4_000_000).float()
    assert values.numel() == 4_000_000
    uniform_std = 65536 / math.sqrt(12)
    assert abs(float(values.mean())) < 5 * uniform_std / math.sqrt(values.numel())
    assert float(values.std()) == pytest.approx(uniform_std, rel=2e-3)
    counts = torch.histc(values, bins=64, min=-32768, max=32767)
    expected = values.numel() / 64
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 120  # 63 degrees of freedom: p < 1e-5 above 120
    lanes = values.view(-1, 4)  # the four 16-bit pieces of one 64-bit draw
    for a, b in ((0, 1), (1, 2), (2, 3), (0, 3)):
        assert abs(float(torch.corrcoef(torch.stack([lanes[:, a], lanes[:, b]]))[0, 1])) < 5e-3


@pytest.mark.parametrize("p", [0.05, 0.5, 0.999])
def test_an_element_drops_exactly_when_its_16_bit_uniform_is_below_the_threshold(monkeypatch, p):
    """Fed every 16-bit value once, the mask drops exactly round(p * 65536) of them: the lowest ones."""
    import blip_lora_core.lora.dropout as dropout

    monkeypatch.setattr(dropout, "_uniform16", lambda count: torch.arange(-32768, 32768, dtype=torch.int16)[:count])
    zeroed, factor = lora_dropout(torch.ones(65536), p)
    threshold = round(p * 65536)
    assert torch.equal(zeroed == 0, torch.arange(65536) < threshold)
    assert factor == 65536 / (65536 - threshold)


def test_other_devices_use_torch_dropout_in_training_mode(monkeypatch):
    """Off the CPU (here the meta device) it is torch's dropout, already scaled: factor 1."""
    calls = []
    real = torch.nn.functional.dropout

    def spy(x, p=0.5, training=True, **kwargs):  # torch's defaults
        calls.append((p, training))
        return real(x, p, training=training, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "dropout", spy)
    x = torch.empty(3, 5, device="meta")
    zeroed, factor = lora_dropout(x, 0.25)
    assert calls == [(0.25, True)] and factor == 1.0
    assert zeroed.device.type == "meta" and zeroed.shape == x.shape
