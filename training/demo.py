"""The offline demo: a tiny BLIP pretrained on synthetic table scenes, then LoRA on a shifted domain.

Steps (no network, a few minutes on two CPU cores):
1. pretrain (or reuse from ``<out>/base``) a tiny BLIP on rendered "table" scenes, fully fine-tuned;
2. measure its exact match on a held-out set of the "shifted" domain (another camera, light, table);
3. LoRA-fine-tune only its vision encoder on shifted training renders and measure again;
4. write ``<out>/gallery.html`` with reference, before and after captions;
5. print ``exact match: before 0.NN -> after 0.NN`` as the very last line.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from itertools import permutations
from pathlib import Path

import torch
import transformers

from blip_lora_core.atomic import atomic_write_text
from blip_lora_core.lora.adapter_io import load_adapter
from blip_lora_core.lora.hooks import LoraConfig
from blip_lora_core.models.loading import TinySize, build_tiny_blip, load_blip
from blip_lora_core.train.augment import AugmentConfig
from blip_lora_core.train.config import TrainConfig
from blip_lora_core.train.data import Sample, read_jsonl
from blip_lora_core.train.gallery import GalleryRow, write_gallery
from blip_lora_core.train.loop import predict, train
from blip_lora_core.train.metrics import caption_metrics
from blip_lora_training.synth import caption_for, select_scenes, write_dataset

# seed_blocks' empty-table phrasings: in the vocabulary so the cached base also serves real photos.
SEED_BLOCKS_CAPTIONS = (
    "No cube is visible in the image", "Nothing is placed in the scene", "The image contains no visible objects",
    "An empty background without any cubes", "This image contains no items or structures",
)
_MARKER = "DONE.json"


@dataclass(frozen=True)
class DemoSettings:
    """Everything that decides the demo's numbers; the defaults are the tuned demo (see the report)."""

    seed: int = 0
    # the seven seed_blocks scenes: four single cubes, blue on green, green on blue, an empty table
    colours: tuple[str, ...] = ("red", "green", "blue", "wood")
    max_stack: int = 2
    stacks: tuple[tuple[str, str], ...] | None = (("blue", "green"), ("green", "blue"))  # None: every pair
    render_size: tuple[int, int] = (64, 64)  # (W, H) of the synthetic renders
    tiny: TinySize = TinySize()  # 64x64 images, 8x8 patches, hidden 64, 2 layers: 0.19M parameters
    extra_captions: tuple[str, ...] = SEED_BLOCKS_CAPTIONS
    # base model: full fine-tuning on "table" renders
    base_train: int = 1200
    base_val: int = 140
    base_epochs: int = 10
    base_batch: int = 16
    base_lr: float = 2e-3
    base_warmup: int = 30
    base_augment: tuple[tuple[str, float], ...] = ()  # AugmentConfig fields, e.g. (("colour_jitter", 0.3),)
    # LoRA on the vision encoder with "shifted" renders
    shift_train: int = 1200
    shift_test: int = 210
    lora_r: int = 8
    lora_alpha: float = 16.0
    lora_lr: float = 6e-3
    lora_epochs: int = 8
    lora_batch: int = 16
    lora_warmup: int = 5
    lora_augment: tuple[tuple[str, float], ...] = ()
    # evaluation and running
    max_new_tokens: int = 12
    eval_batch: int = 64
    num_workers: int = 0  # a worker per epoch costs more than it saves here
    threads: int = 1  # torch threads (0: torch's default); on 2 busy cores 1 thread beats 2
    progress: bool = True

    @classmethod
    def fast(cls) -> DemoSettings:
        """A smaller demo for tests: fewer renders, a higher base learning rate."""
        return cls(base_train=700, base_val=70, base_epochs=12, base_lr=3e-3, shift_train=700, shift_test=70)

    def base_key(self) -> dict:
        """The settings the pretrained base depends on (the cache is reused only when they match)."""
        names = ("seed", "colours", "max_stack", "stacks", "render_size", "tiny", "extra_captions", "base_train",
                 "base_epochs", "base_batch", "base_lr", "base_warmup", "base_augment")
        return json.loads(json.dumps({n: asdict(self)[n] for n in names}))


@dataclass
class DemoResult:
    """Exact match before and after LoRA on the held-out shifted set, and where things were written."""

    before: float
    after: float
    base_exact: float  # on the held-out "table" set
    before_metrics: dict = field(default_factory=dict)
    after_metrics: dict = field(default_factory=dict)
    base_model: Path | None = None
    adapter: Path | None = None
    gallery: Path | None = None
    seconds: dict = field(default_factory=dict)

    @property
    def summary(self) -> str:
        return f"exact match: before {self.before:.2f} -> after {self.after:.2f}"


def _left_out(settings: DemoSettings) -> list[tuple[str, str]]:
    """The (top, bottom) pairs not in settings.stacks (none when stacks is None)."""
    if settings.stacks is None:
        return []
    return [p for p in permutations(settings.colours, 2) if p not in settings.stacks]


def _data(out: Path, name: str, n: int, settings: DemoSettings, domain: str, seed: int) -> Path:
    """A synthetic dataset out/data/<name> (rewritten each time: rendering takes seconds)."""
    return write_dataset(out / "data" / name, n, seed=seed, domain=domain, colours=settings.colours,
                         max_stack=settings.max_stack, holdout_pairs=_left_out(settings), size=settings.render_size)


def _captions(settings: DemoSettings) -> list[str]:
    scenes = select_scenes(settings.colours, settings.max_stack, _left_out(settings))
    return [caption_for(s) for s in scenes] + list(settings.extra_captions)


def _config(settings: DemoSettings, **values) -> TrainConfig:
    common = dict(precision="fp32", device="cpu", num_workers=settings.num_workers, grad_accum=1,
                  seed=settings.seed, max_new_tokens=settings.max_new_tokens, eval_batch_size=settings.eval_batch,
                  progress=settings.progress, checkpoint_every=0)
    return TrainConfig(**{**common, **values})


def _augment(values: tuple[tuple[str, float], ...]) -> AugmentConfig:
    """Only the named augmentations: the demo was tuned, and its base cached, without training's defaults."""
    return replace(AugmentConfig.off(), **dict(values))


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """torch.set_num_threads(count) for the duration (count 0: unchanged)."""
    previous = torch.get_num_threads()
    if count > 0:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _read_marker(base: Path) -> dict | None:
    try:
        return json.loads((base / _MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def pretrain_base(out: str | Path, settings: DemoSettings = DemoSettings(), *, fresh: bool = False) -> Path:
    """The tiny base pretrained on "table" renders: out/base/model, reused when its marker matches.

    The marker (out/base/DONE.json) is written last, with the settings and the base's exact match on a
    held-out "table" set; any other content of out/base is rebuilt from scratch.
    """
    base = Path(out) / "base"
    if not fresh and is_cached(out, settings):
        return base / "model"
    with torch_threads(settings.threads):
        return _pretrain(Path(out), settings)


def _pretrain(out: Path, settings: DemoSettings) -> Path:
    base = out / "base"
    shutil.rmtree(base, ignore_errors=True)
    train_file = _data(out, "table_train", settings.base_train, settings, "table", settings.seed * 10 + 1)
    val_file = _data(out, "table_val", settings.base_val, settings, "table", settings.seed * 10 + 2)
    init = build_tiny_blip(base / "init", _captions(settings), size=settings.tiny, seed=settings.seed)
    config = _config(settings, model=str(init), train_file=str(train_file), output_dir=str(base / "run"),
                     finetune="full", epochs=settings.base_epochs, batch_size=settings.base_batch,
                     lr=settings.base_lr, warmup_steps=settings.base_warmup, augment=_augment(settings.base_augment))
    result = train(config)
    shutil.move(str(result.model_dir), base / "model")
    metrics, _ = measure(base / "model", None, read_jsonl(val_file)[0], settings)
    marker = {"settings": settings.base_key(), "table_metrics": metrics}
    atomic_write_text(base / _MARKER, json.dumps(marker, indent=2) + "\n")
    return base / "model"


def is_cached(out: str | Path, settings: DemoSettings) -> bool:
    """Whether out/base holds a finished base pretrained with these settings."""
    marker = _read_marker(Path(out) / "base")
    return bool(marker) and marker.get("settings") == settings.base_key() and (Path(out) / "base/model").is_dir()


def base_metrics(out: str | Path) -> dict:
    """The cached base's metrics on its held-out "table" set ({} when there is no finished base)."""
    return (_read_marker(Path(out) / "base") or {}).get("table_metrics", {})


def measure(model: Path, adapter: Path | None, samples: list[Sample],
            settings: DemoSettings) -> tuple[dict, list[str]]:
    """(caption metrics, predictions) of the model, with the adapter when given, on the samples."""
    bundle = load_blip(str(model), dtype="fp32", device="cpu")
    if adapter is not None:
        load_adapter(bundle.model, adapter)
    predictions = predict(bundle, samples, prompt=None, max_new_tokens=settings.max_new_tokens,
                          batch_size=settings.eval_batch)
    return caption_metrics(predictions, [[s.text] for s in samples]), predictions


def lora_finetune(out: str | Path, model: Path, train_file: Path, settings: DemoSettings) -> Path:
    """LoRA on every linear layer of the vision encoder (the default targets); returns the adapter file."""
    run = Path(out) / "lora"
    shutil.rmtree(run, ignore_errors=True)
    config = _config(settings, model=str(model), train_file=str(train_file), output_dir=str(run), finetune="lora",
                     lora=LoraConfig(r=settings.lora_r, alpha=settings.lora_alpha, dropout=0.0), lr=settings.lora_lr,
                     epochs=settings.lora_epochs, batch_size=settings.lora_batch, warmup_steps=settings.lora_warmup,
                     augment=_augment(settings.lora_augment))
    return train(config).adapter


def run_demo(out: str | Path = "demo_out", settings: DemoSettings = DemoSettings(), *,
             fresh: bool = False) -> DemoResult:
    """Pretrain or reuse the base, then measure, LoRA-fine-tune, measure again, and write the gallery."""
    with torch_threads(settings.threads):
        return _run(Path(out), settings, fresh)


def _run(out: Path, settings: DemoSettings, fresh: bool) -> DemoResult:
    clock = {"start": time.perf_counter()}
    _say(f"[1/4] tiny BLIP pretrained on synthetic table scenes ({out / 'base'})")
    cached = not fresh and is_cached(out, settings)
    model = pretrain_base(out, settings, fresh=fresh)
    base_exact = base_metrics(out).get("exact_match", float("nan"))
    clock["base"] = time.perf_counter()
    _say(f"      {'reused' if cached else 'trained'}: exact match "
         f"{base_exact:.2f} on held-out table scenes ({clock['base'] - clock['start']:.0f} s)")

    shift_train = _data(out, "shifted_train", settings.shift_train, settings, "shifted", settings.seed * 10 + 3)
    test = read_jsonl(_data(out, "shifted_test", settings.shift_test, settings, "shifted", settings.seed * 10 + 4))[0]
    _say(f"[2/4] shifted domain (other camera, light and table): {len(test)} held-out renders")
    before, before_pred = measure(model, None, test, settings)
    _say(f"      before LoRA: exact match {before['exact_match']:.2f}")

    _say(f"[3/4] LoRA (r={settings.lora_r}) on the vision encoder, {settings.shift_train} shifted renders")
    adapter = lora_finetune(out, model, shift_train, settings)
    after, after_pred = measure(model, adapter, test, settings)
    clock["lora"] = time.perf_counter()
    _say(f"      after LoRA: exact match {after['exact_match']:.2f} ({clock['lora'] - clock['base']:.0f} s)")

    rows = [GalleryRow(s.image, [s.text], {"before": b, "after": a})
            for s, b, a in zip(test, before_pred, after_pred, strict=True)]
    gallery = write_gallery(out / "gallery.html", rows, title="blip-lora demo: shifted domain, before and after LoRA")
    _say(f"[4/4] gallery: {gallery}")
    seconds = {"base": clock["base"] - clock["start"], "lora": clock["lora"] - clock["base"],
               "total": time.perf_counter() - clock["start"]}
    return DemoResult(before["exact_match"], after["exact_match"], base_exact, before, after, model, adapter,
                      gallery, seconds)


def _say(text: str) -> None:
    print(text, flush=True)


def quiet_logs() -> None:
    """Logs at WARNING and no transformers progress bars (the demo prints its own lines; training bars stay)."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m blip_lora_training.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo_out", help="cache and output folder (default: demo_out)")
    parser.add_argument("--fresh", action="store_true", help="pretrain the base again even if it is cached")
    parser.add_argument("--fast", action="store_true", help="the small settings the tests use")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default 1; 0: torch's choice)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    quiet_logs()
    settings = replace(DemoSettings.fast() if args.fast else DemoSettings(), progress=not args.no_progress)
    if args.threads is not None:
        settings = replace(settings, threads=args.threads)
    result = run_demo(args.out, settings, fresh=args.fresh)
    _say(f"total {result.seconds['total']:.0f} s")
    _say(result.summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
