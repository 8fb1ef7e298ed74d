"""Shared pieces of the benchmarks: the machine's name, interleaved timing, result rows and the table,
and the models and datasets the rows run on (all built locally, no network)."""

from __future__ import annotations

import atexit
import gc
import os
import platform
import re
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

from blip_lora_core.models.loading import TinySize, blip_large_config, build_tiny_blip

REPO = Path(__file__).resolve().parents[1]
# beside the checkout (/work/main -> /work/shared) or beside a worktree's parent (/work/wt/x -> /work/shared)
SEED_BLOCKS = next((p for p in (REPO.parent / "shared" / "data" / "seed_blocks",
                                REPO.parents[1] / "shared" / "data" / "seed_blocks") if p.is_dir()),
                   REPO.parent / "shared" / "data" / "seed_blocks")
TINY = TinySize()
# A ViT-S-sized vision encoder and a small text decoder: big enough that compute, not Python, dominates.
MEDIUM = TinySize(image_size=224, patch_size=16, hidden=384, layers=6, heads=6, intermediate=1536, max_positions=40)


# ---------------------------------------------------------------- machine


def machine_description() -> str:
    """CPU model and core count, e.g. 'AMD EPYC, 2 cores' (no host name)."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{model}, {cores} cores"


def file_name(text: str) -> str:
    """'AMD EPYC, 2 cores' -> 'amd-epyc-2-cores'."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "machine"


def versions() -> str:
    import peft
    import transformers

    return f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}, " \
           f"{torch.get_num_threads()} threads"


# ---------------------------------------------------------------- timing


def interleave(cases: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per call of each case, measured round-robin (order reversed every other round), after warm-up."""
    for _ in range(warmup):
        for fn in cases.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in cases}
    names = list(cases)
    for round_ in range(repeats):
        for name in names if round_ % 2 == 0 else reversed(names):
            gc.collect()
            began = time.perf_counter()
            cases[name]()
            times[name].append(time.perf_counter() - began)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


# ---------------------------------------------------------------- rows and the table


@dataclass
class Row:
    """One comparison: ours vs a baseline in one unit; ratio = ours / baseline."""

    row: str
    what: str
    ours: float
    baseline: float
    unit: str
    goal: str = ""
    repeats: int = 0
    notes: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.ours / self.baseline if self.baseline else float("nan")

    @property
    def met(self) -> str:
        """'yes' / 'no' against a goal like '<= 1.02' or '>= 3', '' without one."""
        match = re.fullmatch(r"\s*(<=|>=)\s*([\d.]+)x?\s*", self.goal)
        if not match:
            return ""
        op, value = match.group(1), float(match.group(2))
        ok = self.ratio <= value if op == "<=" else self.ratio >= value
        return "yes" if ok else "no"


def _number(value: float) -> str:
    if value != value:
        return "n/a"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def _ratio(value: float) -> str:
    return "n/a" if value != value else f"{value:.3f}x"


HEADER = "| row | measure | ours | baseline | unit | ratio | goal | met | repeats | notes |"


def format_table(rows: list[Row], machine: str, *, title: str = "blip-lora benchmarks") -> str:
    """Markdown: a heading naming the machine, then one table row per comparison."""
    load = "/".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    lines = [f"## {title}", "", f"Machine: {machine}; {versions()}; load average at the end {load}.", "",
             "ratio = ours / baseline (medians over interleaved repeats).", "",
             HEADER, "|" + "---|" * 10]
    for r in rows:
        lines.append(f"| {r.row} | {r.what} | {_number(r.ours)} | {_number(r.baseline)} | {r.unit} | "
                     f"{_ratio(r.ratio)} | {r.goal} | {r.met} | {r.repeats} | {r.notes} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- work folder, models, data

_WORKDIR: Path | None = None


def workdir() -> Path:
    """A temporary folder for this run (models, datasets, outputs), removed at exit."""
    global _WORKDIR
    if _WORKDIR is None:
        _WORKDIR = Path(tempfile.mkdtemp(prefix="blip-lora-bench-"))
        atexit.register(shutil.rmtree, _WORKDIR, True)
    return _WORKDIR


def synth_captions() -> list[str]:
    from blip_lora_training.synth import DEFAULT_COLOURS, all_scenes, caption_for

    return sorted({caption_for(s) for s in all_scenes(DEFAULT_COLOURS, 3)}) + ["a picture of"]


def small_model_dir(size: TinySize = TINY) -> Path:
    """A random small BLIP of the given size saved like a hub model (built once per run)."""
    folder = workdir() / f"model-{size.hidden}-{size.layers}-{size.image_size}"
    if not (folder / "config.json").is_file():
        build_tiny_blip(folder, synth_captions(), size=size, seed=0)
    return folder


def synth_dataset(n: int, size: tuple[int, int] = (480, 270), fmt: str = "jpg") -> Path:
    """A synthetic dataset of n images (seed_blocks' size and format by default); returns its annotations.jsonl."""
    from blip_lora_training.synth import write_dataset

    folder = workdir() / f"synth-{n}-{size[0]}x{size[1]}-{fmt}"
    jsonl = folder / "annotations.jsonl"
    if not jsonl.is_file():
        write_dataset(folder, n, seed=0, size=size, image_format=fmt)
    return jsonl


def large_model_dir() -> Path:
    """large_bundle() saved like a hub model (about 1.9 GB, once per run), for rows that load a folder."""
    from blip_lora_core.models.loading import save_bundle

    folder = workdir() / "model-blip-large"
    if not (folder / "config.json").is_file():
        save_bundle(large_bundle(), folder)
    return folder


def large_random_model(seed: int = 0, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """BLIP-large's architecture with random weights, in eval mode (models.loading.build_random_blip)."""
    from blip_lora_core.models.loading import build_random_blip

    return build_random_blip(blip_large_config(), seed, device, dtype)


def shared_copy(model: torch.nn.Module, builder: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """A second model object whose parameters and buffers share storage with model's (no extra memory).

    builder() makes the empty module (on the meta device); used to give peft and our hooks one set of base
    weights each without doubling memory.
    """
    twin = builder()
    twin.load_state_dict(model.state_dict(), assign=True, strict=True)
    modules = dict(twin.named_modules())
    for name, buffer in model.named_buffers():  # non-persistent buffers are not in the state dict
        owner, _, leaf = name.rpartition(".")
        modules[owner]._buffers[leaf] = buffer
    return twin.eval()


def caption_batch(model, batch: int, tokens: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random training micro-batch for model: pixel_values (B, 3, S, S), input_ids/attention_mask/labels (B, T)."""
    from blip_lora_core.models.labels import IGNORE_INDEX

    generator = torch.Generator().manual_seed(seed)
    vision, text = model.config.vision_config, model.config.text_config
    pixels = torch.randn(batch, 3, vision.image_size, vision.image_size, generator=generator)
    ids = torch.randint(5, text.vocab_size - 2, (batch, tokens), generator=generator)
    ids[:, 0] = text.bos_token_id
    ids[:, -1] = text.sep_token_id
    labels = ids.clone()
    labels[:, 0] = IGNORE_INDEX
    return {"pixel_values": pixels, "input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def bert_like_tokenizer(vocab_size: int, bos_id: int, folder: Path):
    """A BERT-layout WordPiece tokenizer of vocab_size ids ([PAD] 0, [SEP] 102, [DEC] at bos_id), saved in folder.

    Stands in for BLIP-large's tokenizer (not downloadable here): captions decode to filler words.
    """
    import transformers
    from transformers import BertTokenizerFast

    from blip_lora_core.models.loading import BOS_TOKEN, ENC_TOKEN

    tokens = [f"[unused{i}]" for i in range(vocab_size)]
    fixed = {0: "[PAD]", 100: "[UNK]", 101: "[CLS]", 102: "[SEP]", 103: "[MASK]", bos_id: BOS_TOKEN,
             bos_id + 1: ENC_TOKEN}
    for i in range(104, vocab_size):
        tokens[i] = f"w{i}"
    for i, token in fixed.items():
        tokens[i] = token
    tokenizer = BertTokenizerFast(vocab={t: i for i, t in enumerate(tokens)}, do_lower_case=True, bos_token=BOS_TOKEN,
                                  additional_special_tokens=[ENC_TOKEN])
    tokenizer.save_pretrained(folder)
    return transformers.AutoTokenizer.from_pretrained(folder)


def large_bundle(seed: int = 0):
    """A BlipBundle of BLIP-large's architecture with random weights, a BERT-layout tokenizer, 384 px input."""
    from blip_lora_core.models.loading import BlipBundle
    from blip_lora_core.models.preprocess import ImagePreprocessor

    model = large_random_model(seed)
    text = model.config.text_config
    tokenizer = bert_like_tokenizer(text.vocab_size, text.bos_token_id, workdir() / "large-tokenizer")
    return BlipBundle(model, tokenizer, ImagePreprocessor(384, 384), "blip-large-random")


def small_bundle(size: TinySize):
    from blip_lora_core.models.loading import load_blip

    return load_blip(str(small_model_dir(size)), device="cpu", dtype="fp32")


def random_adapter(model: torch.nn.Module, path: Path, r: int = 16, seed: int = 0) -> Path:
    """Save an adapter with non-zero A and B for model (which is left without LoRA); returns the file."""
    from blip_lora_core.lora.adapter_io import save_adapter
    from blip_lora_core.lora.hooks import LoraConfig, inject_lora, lora_layers, remove_lora

    config = LoraConfig(r=r, alpha=2.0 * r)
    torch.manual_seed(seed)
    inject_lora(model, config)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.normal_(0.0, 0.01)
    try:
        return save_adapter(model, path, config=config, base_model="bench")
    finally:
        remove_lora(model)


def seed_block_images(n: int) -> list:
    """n decoded RGB images from seed_blocks (or from a synthetic set of the same size when it is absent)."""
    from blip_lora_core.models.images import load_image

    folder = SEED_BLOCKS / "image_train"
    paths = sorted(folder.glob("*.jpg"))[:: max(1, 1120 // n)][:n] if folder.is_dir() else []
    if len(paths) < n:
        paths = sorted((synth_dataset(max(n, 16)).parent / "images").glob("*.jpg"))[:n]
    return [load_image(p) for p in paths]
