"""Mixed precision: frozen matmul weights stored in bf16 give the same numbers as autocast on fp32 weights."""

import logging

import torch
from torch import nn

from blip_lora_core.lora.hooks import LoraConfig, inject_lora
from blip_lora_core.models.loading import load_blip
from blip_lora_core.train.precision import autocast, device_precision, store_frozen_matmul_weights


def _adapted(model_dir):
    bundle = load_blip(str(model_dir), device="cpu")
    torch.manual_seed(0)
    inject_lora(bundle.model, LoraConfig(r=4, alpha=8, dropout=0.0, targets=(r"vision_model\..*", r".*query")),
                dtype=torch.float32)
    with torch.no_grad():
        for name, param in bundle.model.named_parameters():
            if name.endswith("lora_B"):
                param.normal_(0, 0.05)
    bundle.model.train()
    return bundle


def _step(bundle, pixels):
    ids = bundle.tokenizer(["a red cube on a blue cube"] * len(pixels), return_tensors="pt").input_ids
    with autocast("bf16", torch.device("cpu")):
        loss = bundle.model(pixel_values=pixels, input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in bundle.model.named_parameters() if p.requires_grad}


def test_bf16_storage_gives_the_bits_of_bf16_autocast_on_fp32_weights(tiny_model_dir, pixels):
    reference, stored = _adapted(tiny_model_dir), _adapted(tiny_model_dir)
    cast = store_frozen_matmul_weights(stored.model, "bf16")
    assert cast > 0
    ref_loss, ref_grads = _step(reference, pixels)
    loss, grads = _step(stored, pixels)
    assert torch.equal(loss, ref_loss)
    assert grads.keys() == ref_grads.keys()
    for name in grads:
        assert grads[name].dtype == torch.float32
        assert torch.equal(grads[name], ref_grads[name]), name


def test_only_frozen_untied_matmul_weights_change_dtype(tiny_model_dir):
    bundle = _adapted(tiny_model_dir)
    model = bundle.model
    store_frozen_matmul_weights(model, "bf16")
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and name != "text_decoder.cls.predictions.decoder":
            assert module.weight.dtype == torch.bfloat16, name
        if isinstance(module, (nn.LayerNorm, nn.Embedding, nn.Conv2d)):
            assert module.weight.dtype == torch.float32, name
    decoder = model.text_decoder.cls.predictions.decoder
    embeddings = model.text_decoder.bert.embeddings.word_embeddings
    assert decoder.weight is embeddings.weight and decoder.weight.dtype == torch.float32  # tied: left alone
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
    assert store_frozen_matmul_weights(model, "bf16") == 0  # already done
    assert store_frozen_matmul_weights(model, "fp32") == 0


def test_fp16_falls_back_to_fp32_on_the_cpu_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        assert device_precision("fp16", torch.device("cpu")) == "fp32"
    assert "fp16 autocast is for GPUs" in caplog.text
    assert device_precision("bf16", torch.device("cpu")) == "bf16"
    assert device_precision("fp16", torch.device("cuda")) == "fp16"
