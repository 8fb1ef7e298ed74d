"""The training loop, top to bottom: data, model, optimizer, then one loop over optimizer steps.

Per step: the learning rate is a pure function of the step; `grad_accum` micro-batches are fetched,
their label tokens counted, and each micro-batch's summed token loss is divided by that count, so
accumulating 4 x batch 1 gives the same update as batch 4 (and DDP ranks the same as one process);
then unscale -> clip -> step -> update -> zero_grad. Checkpoints hold everything needed to resume
bit for bit; validation keeps the best adapter.
"""

from __future__ import annotations

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

from ..atomic import atomic_write_bytes, atomic_write_text
from ..errors import BlipLoraError, ConfigError, DataError, TrainingError
from ..lora.adapter_io import adapter_filename, save_adapter
from ..lora.hooks import inject_lora, trainable_parameters
from ..models.captioning import Captioner
from ..models.labels import TokenSpec, label_token_count, token_loss_sum
from ..models.loading import BlipBundle, load_blip, save_bundle
from .augment import build_augment
from .batches import CaptionCollator, MicroBatchStream
from .checkpoint import checkpoint_paths, latest_checkpoint, newest_checkpoint_name, save_checkpoint, set_rng_state
from .config import TrainConfig
from .data import ImageCaptionDataset, Sample, read_jsonl, split_by_order
from .logs import EVAL_FIELDS, EVAL_LOG, LOG_FIELDS, TRAIN_LOG, append_row, plot_loss, trim_logs
from .metrics import caption_metrics, references_by_class
from .precision import autocast, device_precision, store_frozen_matmul_weights
from .schedule import lr_factor

log = logging.getLogger(__name__)


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
    per-tensor loop is slower over BLIP-large's 192 LoRA tensors.
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


@dataclass
class _Run:
    """What one training run's helpers share: set up once by train(), read top to bottom."""

    config: TrainConfig
    ctx: _Dist
    out: Path
    bundle: BlipBundle
    params: dict[str, nn.Parameter]
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    steps_per_epoch: int
    total_steps: int
    val_samples: list[Sample]
    pool: list[Sample]
    result: TrainResult
    start_step: int = 0
    began: float = field(default_factory=time.perf_counter)

    @property
    def model(self) -> nn.Module:
        return self.bundle.model


def train(config: TrainConfig, *, resume: bool = False) -> TrainResult:
    """Fine-tune config.model on config.train_file; writes adapter(s), logs and checkpoints to output_dir."""
    ctx = _init_distributed(config)
    config.precision = device_precision(config.precision, ctx.device)
    _seed_everything(config.seed)
    out = Path(config.output_dir)
    train_samples, val_samples = load_samples(config)

    bundle = load_blip(config.model, dtype="fp32", device=str(ctx.device), revision=config.revision or None,
                       attention=config.attention)
    model = bundle.model
    if config.finetune == "lora":
        inject_lora(model, config.lora, dtype=torch.float32)
        store_frozen_matmul_weights(model, config.precision)
    if ctx.main:
        log.info("%s", trainable_parameters(model))
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}

    dataset = ImageCaptionDataset(train_samples, bundle.preprocess, build_augment(config.augment), seed=config.seed)
    collate = CaptionCollator(bundle.tokenizer, TokenSpec.from_model(model), config.prompt)
    stream = MicroBatchStream(dataset, config.batch_size, collate, seed=config.seed, rank=ctx.rank,
                              world=ctx.world, num_workers=config.num_workers)
    steps_per_epoch = math.ceil(stream.per_epoch / config.grad_accum)
    run = _Run(config, ctx, out, bundle, params, _optimizer(model, config, ctx.device),
               torch.amp.GradScaler(ctx.device.type, enabled=config.precision == "fp16"), steps_per_epoch,
               config.max_steps or config.epochs * steps_per_epoch, val_samples, train_samples + val_samples,
               TrainResult(out))
    if resume:
        run.start_step, run.result.best = _restore(run)
    ddp = nn.parallel.DistributedDataParallel(model) if ctx.world > 1 else None

    if ctx.main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.yaml", config.to_yaml())
        if resume:
            trim_logs(out, run.start_step)
    batches = stream.iterate(run.start_step * config.grad_accum)
    bar = tqdm(total=run.total_steps, initial=run.start_step, disable=not (config.progress and ctx.main),
               desc="train", dynamic_ncols=True)
    model.train()
    with _StopFlag() as interrupt:
        for step in range(run.start_step, run.total_steps):
            lr = config.lr * lr_factor(step, run.total_steps, config.warmup_steps, config.min_lr_ratio)
            for group in run.optimizer.param_groups:
                group["lr"] = lr
            window = [_to_device(next(batches), ctx.device) for _ in range(config.grad_accum)]
            loss_sum, tokens = _accumulate(run, ddp, window, step)
            grad_norm = _clip(run)
            run.scaler.step(run.optimizer)
            run.scaler.update()
            run.optimizer.zero_grad(set_to_none=True)

            done = step + 1
            row = _log_row(run, done, loss_sum, tokens, lr, grad_norm, window)
            run.result.history.append(row)
            if ctx.main:
                append_row(out / TRAIN_LOG, row, LOG_FIELDS)
                bar.update(1)
                bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{lr:.2e}")
            if val_samples and _eval_due(run, done):
                _validate(run, done)
            due = bool(config.checkpoint_every) and done % config.checkpoint_every == 0
            if (due or interrupt.stop) and done < run.total_steps:  # Ctrl-C saves even with checkpoint_every 0
                _checkpoint(run, done)
            if interrupt.stop and done < run.total_steps:  # after the last step, finish and write the adapter
                bar.close()
                raise KeyboardInterrupt(f"stopped after step {done}; resume with --resume")
    bar.close()
    run.result.steps = run.total_steps
    if ctx.main:
        _finish(run)
    if ddp:
        dist.barrier()
    return run.result


def _accumulate(run: _Run, ddp: nn.parallel.DistributedDataParallel | None, window: list[dict],
                step: int) -> tuple[float, torch.Tensor]:
    """Backward over the window's micro-batches, each loss divided by the step's label-token count.

    Returns the summed token loss of this rank and the token count of all ranks.
    """
    tokens = torch.tensor(sum(label_token_count(b) for b in window))
    if ddp:
        dist.all_reduce(tokens)
    loss_sum = 0.0
    for index, batch in enumerate(window):
        syncing = ddp is None or index == len(window) - 1
        with (nullcontext() if syncing else ddp.no_sync()), autocast(run.config.precision, run.ctx.device):
            summed = token_loss_sum(ddp or run.model, batch, run.config.label_smoothing)
        if not torch.isfinite(summed):
            raise TrainingError(
                f"loss is {summed.item()} at step {step + 1} (epoch {step // run.steps_per_epoch + 1}); "
                f"training stopped. Last good checkpoint: {newest_checkpoint_name(run.out / 'checkpoints')}. "
                f"Lower the learning rate or use bf16/fp32.")
        run.scaler.scale(summed * run.ctx.world / tokens.item()).backward()
        loss_sum += summed.item()
    return loss_sum, tokens


def _clip(run: _Run) -> float:
    """Unscale, clip to config.grad_clip (0: no clipping); returns the gradient norm before clipping."""
    run.scaler.unscale_(run.optimizer)
    grads = [p for p in run.params.values() if p.grad is not None]
    if run.config.grad_clip > 0:
        return float(nn.utils.clip_grad_norm_(grads, run.config.grad_clip))
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.grad) for g in grads])))


def _log_row(run: _Run, step: int, loss_sum: float, tokens: torch.Tensor, lr: float, grad_norm: float,
             window: list[dict]) -> dict:
    images = sum(len(b["pixel_values"]) for b in window) * run.ctx.world
    loss = torch.tensor(loss_sum)
    if run.ctx.world > 1:
        dist.all_reduce(loss)
    elapsed = time.perf_counter() - run.began
    return {"step": step, "epoch": round(step / run.steps_per_epoch, 4), "loss": float(loss) / max(int(tokens), 1),
            "lr": lr, "grad_norm": grad_norm, "tokens": int(tokens),
            "images_per_s": images * (step - run.start_step) / max(elapsed, 1e-9), "elapsed_s": round(elapsed, 3)}


def _eval_due(run: _Run, done: int) -> bool:
    every = run.config.eval_every or run.steps_per_epoch
    return done % every == 0 or done == run.total_steps


def _validate(run: _Run, step: int) -> None:
    """Score the validation set; keep best.safetensors when it improves; every rank learns the best."""
    config, best = run.config, run.result.best
    if run.ctx.main:
        with autocast(config.precision, run.ctx.device):
            metrics = evaluate(run.bundle, run.val_samples, config, run.pool)
        metrics["step"] = step
        log.info("validation at step %d: exact match %.3f, BLEU-4 %.3f, CIDEr %.3f", step,
                 metrics["exact_match"], metrics["bleu4"], metrics["cider"])
        append_row(run.out / EVAL_LOG, metrics, EVAL_FIELDS)
        if config.finetune == "lora" and _better(metrics, best):
            best = metrics
            _save_adapter(run, run.out / "best.safetensors", extra={"step": step, "metrics": metrics})
    if run.ctx.world > 1:
        shared = [best]
        dist.broadcast_object_list(shared, src=0)
        best = shared[0]
    run.result.best = best


def _save_adapter(run: _Run, path: Path, extra: dict) -> Path:
    config = run.config
    return save_adapter(run.model, path, config=config.lora, base_model=config.model,
                        base_revision=config.revision, extra={**extra, "prompt": config.prompt})


def _checkpoint(run: _Run, step: int) -> None:
    if run.ctx.main:
        save_checkpoint(run.out / "checkpoints", step, run.params, run.optimizer, run.scaler.state_dict(),
                        keep=run.config.keep_checkpoints, extra={"best": run.result.best})
    if run.ctx.world > 1:
        dist.barrier()


def _restore(run: _Run) -> tuple[int, dict]:
    """Parameters, optimizer, scaler and RNG from the newest readable checkpoint; (step, best metrics)."""
    folder = run.out / "checkpoints"
    checkpoint = latest_checkpoint(folder)
    if checkpoint is None:
        found = checkpoint_paths(folder)
        if found:
            raise TrainingError(f"{folder}: none of the {len(found)} checkpoint(s) can be read (see the warnings "
                                f"above); move them away to start from step 0")
        log.warning("no checkpoint in %s: starting from step 0", folder)
        return 0, {}
    _check_fits(checkpoint, run.params)
    try:
        with torch.no_grad():
            for name, param in run.params.items():
                param.copy_(checkpoint.params[name])
        run.optimizer.load_state_dict(checkpoint.optimizer)
        if checkpoint.scaler:
            run.scaler.load_state_dict(checkpoint.scaler)
        set_rng_state(checkpoint.rng)
    except (RuntimeError, ValueError, TypeError, KeyError, IndexError) as error:
        raise TrainingError(f"{checkpoint.path}: cannot resume from this checkpoint ({str(error)[:200]})") from error
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


def _finish(run: _Run) -> None:
    """The final adapter (best if validated, else last) under its descriptive name, or the full model."""
    out, config, result = run.out, run.config, run.result
    if config.finetune == "full":
        result.model_dir = save_bundle(run.bundle, out / "model")
    else:
        last = _save_adapter(run, out / "last.safetensors", extra={"step": run.total_steps})
        chosen = out / "best.safetensors" if (out / "best.safetensors").exists() else last
        epochs = math.ceil(run.total_steps / run.steps_per_epoch)
        named = out / adapter_filename(config.lora, batch_size=config.batch_size, epochs=epochs, lr=config.lr)
        result.adapter = atomic_write_bytes(named, chosen.read_bytes())
    try:
        plot_loss(out / TRAIN_LOG, out / "loss_curve.png")
    except BlipLoraError as error:  # the run itself is complete and saved
        log.warning("%s; the loss curve is missing", error)
