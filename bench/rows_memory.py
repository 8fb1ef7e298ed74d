"""Peak memory of training (RSS high-water mark, VmHWM, of a fresh subprocess per configuration): our LoRA
vs full fine-tuning vs peft LoRA, and our LoRA with gradient checkpointing, batch 1, fp32, one AdamW step
(the optimizer state is created during the first step, so its peak is the training peak).

    python -m bench.rows_memory MODE SIZE [THREADS]   # the child: prints one JSON line
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from .common import REPO, Row, caption_batch

MODES = ("lora", "full", "peft", "lora_ckpt")


def _rss_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(mode: str, size: str) -> dict:
    """Build the model, set it up for mode, run one step; peak RSS and whether LoRA got gradients."""
    from blip_lora_core.lora.hooks import LoraConfig, inject_lora, lora_layers
    from blip_lora_core.models.labels import token_loss_sum

    from . import rows_lora
    from .common import MEDIUM, TINY, large_random_model, small_bundle

    model = large_random_model() if size == "large" else small_bundle(MEDIUM if size == "medium" else TINY).model
    rss_model = _rss_mib("VmRSS")
    if mode in ("lora", "lora_ckpt"):
        inject_lora(model, LoraConfig(r=16, alpha=32.0, dropout=0.05))
    elif mode == "peft":
        import peft

        from blip_lora_core.lora.hooks import find_targets

        config = peft.LoraConfig(r=16, lora_alpha=32.0, lora_dropout=0.05,
                                 target_modules=find_targets(model, rows_lora.LORA.targets))
        model = peft.get_peft_model(model, config)
    if mode.endswith("_ckpt"):
        model.gradient_checkpointing_enable()
    model.train()
    batch = caption_batch(model, 1, rows_lora.TOKENS)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    began, grads_ok = time.perf_counter(), True
    token_loss_sum(model, batch, 0.0).backward()
    if mode.startswith("lora"):
        # B starts at zero, so at the first step only B has a non-zero gradient
        grads_ok = all(m.lora_B.grad is not None and bool(m.lora_B.grad.abs().sum() > 0)
                       for m in lora_layers(model).values())
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return {"mode": mode, "peak_mib": _rss_mib("VmHWM"), "model_mib": rss_model, "grads_ok": grads_ok,
            "step_s": time.perf_counter() - began, "trainable": sum(p.numel() for p in params)}


def measure(mode: str, size: str) -> dict:
    """Run the child in a fresh interpreter; its JSON result."""
    threads = str(torch.get_num_threads())
    done = subprocess.run([sys.executable, "-m", "bench.rows_memory", mode, size, threads], cwd=REPO,
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"memory child {mode} failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def rows(quick: bool) -> list[Row]:
    size = "tiny" if quick else "large"
    label = "tiny BLIP" if quick else "BLIP-large"
    r = {mode: measure(mode, size) for mode in MODES}
    model = r["lora"]["model_mib"]
    note = f"peak RSS of a fresh process ({model:,.0f} MiB once the fp32 model is built); batch 1, one AdamW step"
    return [
        Row("memory_lora_vs_full", f"peak RSS, LoRA vs full fine-tuning, {label}", r["lora"]["peak_mib"],
            r["full"]["peak_mib"], "MiB", "", 1,
            f"{note}; trainable {r['lora']['trainable']:,} vs {r['full']['trainable']:,}"),
        Row("memory_lora_vs_peft", f"peak RSS, our LoRA vs peft LoRA, {label}", r["lora"]["peak_mib"],
            r["peft"]["peak_mib"], "MiB", "<= 1.00", 1, note),
        Row("memory_ckpt", f"peak RSS, LoRA + gradient checkpointing vs LoRA, {label}", r["lora_ckpt"]["peak_mib"],
            r["lora"]["peak_mib"], "MiB", "<= 1.00", 1,
            f"model.gradient_checkpointing_enable() with our hooks: LoRA gradients "
            f"{'flow' if r['lora_ckpt']['grads_ok'] else 'MISSING'}; step {r['lora_ckpt']['step_s']:.2f} s vs "
            f"{r['lora']['step_s']:.2f} s without"),
    ]


ROWS = {"memory": rows}

if __name__ == "__main__":
    if len(sys.argv) > 3:
        torch.set_num_threads(int(sys.argv[3]))
    print(json.dumps(child(sys.argv[1], sys.argv[2])))
