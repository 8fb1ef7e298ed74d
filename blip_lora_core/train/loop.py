"""The training loop, top to bottom: data, model, optimizer, then one loop over optimizer steps.

Per step: the learning rate is a pure function of the step; `grad_accum` micro-batches are fetched,
their label tokens counted, and each micro-batch's summed token loss is divided by that count, so
accumulating 4 x batch 1 gives the same update as batch 4 (and DDP ranks the same as one process);
then unscale -> clip -> step -> update -> zero_grad. Checkpoints hold everything needed to resume
bit for bit; validation keeps the best adapter.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import signal
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from ..lora.adapter_io import adapter_filename, save_adapter
from ..atomic import atomic_write_bytes, atomic_write_text
from .augment import AugmentConfig, build_augment
from .batches import CaptionCollator, MicroBatchStream
from ..models.captioning import Captioner
from .checkpoint import latest_checkpoint, save_checkpoint, set_rng_state
from .data import ImageCaptionDataset, Sample, read_jsonl, split_by_order
from ..errors import BlipLoraError, ConfigError, DataError, TrainingError
from ..models.labels import IGNORE_INDEX, TokenSpec
from ..lora.hooks import inject_lora, trainable_parameters
from .metrics import caption_metrics, references_by_class
from ..models.loading import BlipBundle, load_blip, save_bundle
from .precision import autocast, device_precision, store_frozen_matmul_weights
from .schedule import lr_factor
from .config import TrainConfig

log = logging.getLogger(__name__)
LOG_FIELDS = ["step", "epoch", "loss", "lr", "grad_norm", "tokens", "images_per_s", "elapsed_s"]
EVAL_FIELDS = ["step", "exact_match", "bleu4", "cider", "count"]


@dataclass
class TrainResult:
    output_dir: Path
    adapter: Path | None = None
    model_dir: Path | None = None
    steps: int = 0
    best: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(config: TrainConfig) -> _Dist:
    """Single process, or DDP when launched by torchrun (WORLD_SIZE > 1): nccl on GPUs, gloo on CPUs."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        return _Dist(device=device)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available() and config.device != "cpu"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    device = torch.device(f"cuda:{local}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    return _Dist(dist.get_rank(), world, device)


def _seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_samples(config: TrainConfig) -> tuple[list[Sample], list[Sample]]:
    """Read and validate the training (and validation) JSONL before training starts."""
    if not config.train_file:
        raise ConfigError("no training data: set train_file (--train)")
    train, bad = read_jsonl(config.train_file, skip_bad=config.skip_bad)
    for line in bad:
        log.warning("skipped %s", line)
    val: list[Sample] = []
    if config.val_file:
        val, bad_val = read_jsonl(config.val_file, skip_bad=config.skip_bad)
        for line in bad_val:
            log.warning("skipped %s", line)
    elif config.val_fraction > 0:
        train, val = split_by_order(train, config.val_fraction)
    unreviewed = sum(1 for s in train if s.extras.get("reviewed") is False)
    if unreviewed:
        log.warning("%d of %d training rows are marked unreviewed (\"reviewed\": false): machine "
                    "pre-captions that nobody has corrected yet", unreviewed, len(train))
    if not train:
        raise DataError(f"{config.train_file}: no training samples left")
    return train, val


def _optimizer(model: nn.Module, config: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices (LoRA A and B included), none on biases and norms.

    Fused (one kernel for all parameters) on CUDA and, from torch 2.4, on the CPU, where the default
    per-tensor loop takes about 3x longer over BLIP-large's 192 LoRA tensors.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": config.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    if device.type in ("cuda", "cpu"):
        try:
            return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.999), fused=True)
        except (RuntimeError, TypeError):  # torch < 2.4 has no fused AdamW on the CPU
            pass
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.999))


def token_loss_sum(model: nn.Module, batch: dict[str, torch.Tensor], label_smoothing: float) -> torch.Tensor:
    """Sum over label tokens of the next-token cross-entropy: logits (B, T-1, V) vs labels (B, T-1)."""
    logits = model(pixel_values=batch["pixel_values"], input_ids=batch["input_ids"],
                   attention_mask=batch["attention_mask"]).logits
    logits, labels = logits[:, :-1], batch["labels"][:, 1:]
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                                       ignore_index=IGNORE_INDEX, reduction="sum", label_smoothing=label_smoothing)


def _to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def predict(bundle: BlipBundle, samples: list[Sample], *, prompt: str | None, max_new_tokens: int,
            batch_size: int) -> list[str]:
    """Greedy captions of the samples' images with the model as it is (adapters hooked)."""
    captioner = Captioner(bundle, prompt=prompt, max_new_tokens=max_new_tokens, batch_size=batch_size)
    was_training = bundle.model.training
    bundle.model.eval()
    try:
        return captioner.caption_files([s.image for s in samples])
    finally:
        bundle.model.train(was_training)


def evaluate(bundle: BlipBundle, samples: list[Sample], config: TrainConfig,
             pool: list[Sample] | None = None) -> dict:
    """exact match, BLEU-4 and CIDEr of greedy captions against each sample's references."""
    predictions = predict(bundle, samples, prompt=config.prompt or None, max_new_tokens=config.max_new_tokens,
                          batch_size=config.eval_batch_size)
    # with group_references, every phrasing a scene has anywhere in pool (training rows too) is a reference
    references = references_by_class(samples, pool) if config.group_references else [[s.text] for s in samples]
    return caption_metrics(predictions, references)


def _better(metrics: dict, best: dict) -> bool:
    key = (metrics["exact_match"], metrics["cider"])
    return not best or key > (best["exact_match"], best["cider"])


class _StopFlag:
    """SIGINT during training: finish the current step, save a checkpoint, stop cleanly."""

    def __init__(self):
        self.stop = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread
            self._previous = None
        return self

    def _handle(self, signum, frame):
        if self.stop:  # second Ctrl-C: stop at once
            raise KeyboardInterrupt
        self.stop = True
        log.warning("interrupt: saving a checkpoint after this step (Ctrl-C again to abort)")

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def train(config: TrainConfig, *, resume: bool = False) -> TrainResult:
    """Fine-tune config.model on config.train_file; writes adapter(s), logs and checkpoints to output_dir."""
    ctx = _init_distributed(config)
    config.precision = device_precision(config.precision, ctx.device)
    _seed_everything(config.seed)
    out = Path(config.output_dir)
    train_samples, val_samples = load_samples(config)

    bundle = load_blip(config.model, dtype="fp32", device=str(ctx.device), revision=config.revision or None)
    model = bundle.model
    if config.finetune == "lora":
        inject_lora(model, config.lora_config(), dtype=torch.float32)
        store_frozen_matmul_weights(model, config.precision)
    if ctx.main:
        log.info("%s", trainable_parameters(model))
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}

    augment = build_augment(AugmentConfig.from_dict(config.augment))
    dataset = ImageCaptionDataset(train_samples, bundle.preprocess, augment, seed=config.seed)
    collate = CaptionCollator(bundle.tokenizer, TokenSpec.from_model(model), config.prompt)
    stream = MicroBatchStream(dataset, config.batch_size, collate, seed=config.seed, rank=ctx.rank,
                              world=ctx.world, num_workers=config.num_workers)
    steps_per_epoch = math.ceil(stream.per_epoch / config.grad_accum)
    total_steps = config.max_steps or config.epochs * steps_per_epoch

    optimizer = _optimizer(model, config, ctx.device)
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=config.precision == "fp16")
    start_step, best = 0, {}
    if resume:
        start_step, best = _restore(out / "checkpoints", params, optimizer, scaler)
    ddp = nn.parallel.DistributedDataParallel(model) if ctx.world > 1 else None
    forward_model = ddp or model

    if ctx.main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.yaml", config.to_yaml())
        if resume:
            _trim_logs(out, start_step)
    result = TrainResult(out, best=best)
    batches = stream.iterate(start_step * config.grad_accum)
    bar = tqdm(total=total_steps, initial=start_step, disable=not (config.progress and ctx.main),
               desc="train", dynamic_ncols=True)
    began = time.perf_counter()
    model.train()
    with _StopFlag() as interrupt:
        for step in range(start_step, total_steps):
            lr = config.lr * _lr(step, total_steps, config)
            for group in optimizer.param_groups:
                group["lr"] = lr
            window = [_to_device(next(batches), ctx.device) for _ in range(config.grad_accum)]
            tokens = torch.tensor(sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in window))
            if ddp:
                dist.all_reduce(tokens)
            loss_sum = 0.0
            for index, batch in enumerate(window):
                syncing = ddp is None or index == len(window) - 1
                with (nullcontext() if syncing else ddp.no_sync()), autocast(config.precision, ctx.device):
                    summed = token_loss_sum(forward_model, batch, config.label_smoothing)
                if not torch.isfinite(summed):
                    raise TrainingError(
                        f"loss is {summed.item()} at step {step + 1} (epoch {step // steps_per_epoch + 1}); "
                        f"training stopped. Last good checkpoint: {_latest_name(out)}. Lower the learning "
                        f"rate or use bf16/fp32.")
                scaler.scale(summed * ctx.world / tokens.item()).backward()
                loss_sum += summed.item()
            grad_norm = _clip(params, optimizer, scaler, config.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)

            done = step + 1
            row = _log_row(done, done / steps_per_epoch, loss_sum, tokens, lr, grad_norm, window, ctx,
                           time.perf_counter() - began, start_step)
            result.history.append(row)
            if ctx.main:
                _append_csv(out / "train_log.csv", row, LOG_FIELDS)
                bar.update(1)
                bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{lr:.2e}")
            if val_samples and _eval_due(done, total_steps, steps_per_epoch, config):
                best = _validate(bundle, val_samples, config, ctx, out, done, best,
                                 pool=train_samples + val_samples)
                result.best = best
            due = bool(config.checkpoint_every) and done % config.checkpoint_every == 0
            if (due or interrupt.stop) and done < total_steps:  # Ctrl-C saves even with checkpoint_every 0
                _checkpoint(out, done, params, optimizer, scaler, config, ctx, best)
            if interrupt.stop and done < total_steps:  # after the last step, finish and write the adapter
                bar.close()
                raise KeyboardInterrupt(f"stopped after step {done}; resume with --resume")
    bar.close()
    result.steps = total_steps
    if ctx.main:
        _finish(result, bundle, config, total_steps, steps_per_epoch)
    if ddp:
        dist.barrier()
    return result


def _lr(step: int, total_steps: int, config: TrainConfig) -> float:
    return lr_factor(step, total_steps, config.warmup_steps, config.min_lr_ratio)


def _clip(params: dict[str, nn.Parameter], optimizer, scaler, max_norm: float) -> float:
    scaler.unscale_(optimizer)
    grads = [p for p in params.values() if p.grad is not None]
    if max_norm > 0:
        return float(nn.utils.clip_grad_norm_(grads, max_norm))
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.grad) for g in grads])))


def _log_row(step, epoch, loss_sum, tokens, lr, grad_norm, window, ctx, elapsed, start_step) -> dict:
    images = sum(len(b["pixel_values"]) for b in window) * ctx.world
    loss = torch.tensor(loss_sum)
    if ctx.world > 1:
        dist.all_reduce(loss)
    return {"step": step, "epoch": round(epoch, 4), "loss": float(loss) / max(int(tokens), 1), "lr": lr,
            "grad_norm": grad_norm, "tokens": int(tokens),
            "images_per_s": images * (step - start_step) / max(elapsed, 1e-9), "elapsed_s": round(elapsed, 3)}


def _append_csv(path: Path, row: dict, fields: list[str]) -> None:
    new = not path.exists()
    try:
        with open(path, "a", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)
    except OSError as error:
        raise TrainingError(f"could not write {path}: {error.strerror or error}") from error


def _trim_logs(out: Path, step: int) -> None:
    """On resume: keep the logs' whole rows up to the checkpoint's step (a kill leaves later or torn rows)."""
    for path, fields in ((out / "train_log.csv", LOG_FIELDS), (out / "eval_log.csv", EVAL_FIELDS)):
        if not path.exists():
            continue
        rows = list(csv.reader(path.read_text(encoding="utf-8", errors="replace").replace("\0", "").splitlines()))
        kept = [r for r in rows[1:] if len(r) == len(fields) and r[0].isdigit() and int(r[0]) <= step]
        buffer = io.StringIO()
        csv.writer(buffer).writerows([fields, *kept])
        atomic_write_text(path, buffer.getvalue())


def _eval_due(done: int, total: int, steps_per_epoch: int, config: TrainConfig) -> bool:
    every = config.eval_every or steps_per_epoch
    return done % every == 0 or done == total


def _validate(bundle, val_samples, config, ctx, out, step, best, pool=None) -> dict:
    if ctx.main:
        with autocast(config.precision, ctx.device):
            metrics = evaluate(bundle, val_samples, config, pool)
        metrics["step"] = step
        log.info("validation at step %d: exact match %.3f, BLEU-4 %.3f, CIDEr %.3f", step,
                 metrics["exact_match"], metrics["bleu4"], metrics["cider"])
        _append_csv(out / "eval_log.csv", metrics, EVAL_FIELDS)
        if config.finetune == "lora" and _better(metrics, best):
            best = metrics
            _save_adapter(bundle, config, out / "best.safetensors", extra={"step": step, "metrics": metrics})
    if ctx.world > 1:
        shared = [best]
        dist.broadcast_object_list(shared, src=0)
        best = shared[0]
    return best


def _save_adapter(bundle: BlipBundle, config: TrainConfig, path: Path, extra: dict) -> Path:
    return save_adapter(bundle.model, path, config=config.lora_config(), base_model=config.model,
                        base_revision=config.revision, extra={**extra, "prompt": config.prompt})


def _checkpoint(out, step, params, optimizer, scaler, config, ctx, best) -> None:
    if ctx.main:
        save_checkpoint(out / "checkpoints", step, params, optimizer, scaler.state_dict(),
                        keep=config.keep_checkpoints, extra={"best": best})
    if ctx.world > 1:
        dist.barrier()


def _latest_name(out: Path) -> str:
    found = sorted((out / "checkpoints").glob("step_*.safetensors")) if (out / "checkpoints").is_dir() else []
    return str(found[-1]) if found else "none written yet"


def _restore(folder: Path, params, optimizer, scaler) -> tuple[int, dict]:
    checkpoint = latest_checkpoint(folder)
    if checkpoint is None:
        found = sorted(folder.glob("step_*.safetensors")) if folder.is_dir() else []
        if found:
            raise TrainingError(f"{folder}: none of the {len(found)} checkpoint(s) can be read (see the warnings "
                                f"above); move them away to start from step 0")
        log.warning("no checkpoint in %s: starting from step 0", folder)
        return 0, {}
    _check_fits(checkpoint, params)
    try:
        with torch.no_grad():
            for name, param in params.items():
                param.copy_(checkpoint.params[name])
        optimizer.load_state_dict(checkpoint.optimizer)
        if checkpoint.scaler:
            scaler.load_state_dict(checkpoint.scaler)
        set_rng_state(checkpoint.rng)
    except (RuntimeError, ValueError, TypeError, KeyError, IndexError) as error:
        raise TrainingError(f"{checkpoint.path}: cannot resume from this checkpoint ({str(error)[:200]})") from None
    log.info("resumed from %s (step %d)", checkpoint.path, checkpoint.step)
    return checkpoint.step, checkpoint.extra.get("best", {})


def _check_fits(checkpoint, params: dict[str, nn.Parameter]) -> None:
    """TrainingError unless the checkpoint holds exactly this run's parameters, with their shapes."""
    missing = sorted(set(params) ^ set(checkpoint.params))
    if missing:
        raise TrainingError(f"{checkpoint.path}: parameters differ from this run's ({missing[:3]})")
    for name, param in params.items():
        saved = checkpoint.params[name]
        if saved.shape != param.shape or not saved.is_floating_point():
            raise TrainingError(f"{checkpoint.path}: {name} is {tuple(saved.shape)} {saved.dtype} in the checkpoint "
                                f"but {tuple(param.shape)} in this run (were r, targets or the model changed?)")


def _finish(result: TrainResult, bundle: BlipBundle, config: TrainConfig, total_steps: int,
            steps_per_epoch: int) -> None:
    out = result.output_dir
    if config.finetune == "full":
        result.model_dir = save_bundle(bundle, out / "model")
    else:
        last = _save_adapter(bundle, config, out / "last.safetensors", extra={"step": total_steps})
        chosen = out / "best.safetensors" if (out / "best.safetensors").exists() else last
        epochs = math.ceil(total_steps / steps_per_epoch)
        named = out / adapter_filename(config.lora_config(), batch_size=config.batch_size, epochs=epochs, lr=config.lr)
        result.adapter = atomic_write_bytes(named, chosen.read_bytes())
    try:
        plot_loss(out / "train_log.csv", out / "loss_curve.png")
    except BlipLoraError as error:  # the run itself is complete and saved
        log.warning("%s; the loss curve is missing", error)


def plot_loss(csv_path: Path, png_path: Path) -> None:
    """Loss per step (and its moving average) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(csv_path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    steps = [int(r["step"]) for r in rows]
    losses = np.array([float(r["loss"]) for r in rows])
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, losses, alpha=0.4, label="loss")
    if len(losses) >= 10:
        window = max(len(losses) // 20, 5)
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1:], smooth, label=f"mean of {window}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("token cross-entropy")
    ax.legend()
    fig.tight_layout()
    image = io.BytesIO()
    try:
        fig.savefig(image, format="png", dpi=100)
    finally:
        plt.close(fig)
    atomic_write_bytes(png_path, image.getvalue())
