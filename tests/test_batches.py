"""MicroBatchStream: one loader for the run, batches a pure function of (seed, epoch, position)."""

from __future__ import annotations

import gc
import multiprocessing
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from blip_lora_core.models.labels import TokenSpec
from blip_lora_core.models.loading import build_tokenizer, caption_words
from blip_lora_core.train.augment import AugmentConfig, build_augment
from blip_lora_core.train.batches import CaptionCollator, MicroBatchStream
from blip_lora_core.train.data import ImageCaptionDataset, Sample

N_SAMPLES, BATCH = 10, 3  # 4 micro-batches per epoch, the last one of a single item
WORDS = ["red", "green", "blue", "wood", "cube", "on", "top", "of", "a", "one", "two", "three"]


class _PidDataset(torch.utils.data.Dataset):
    """Items of an ImageCaptionDataset with the id of the process that read them."""

    def __init__(self, inner: ImageCaptionDataset):
        self.inner = inner

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, key):
        return {**self.inner[key], "pid": os.getpid()}


class _FailingDataset(_PidDataset):
    """Raises for the item at index 3 of epoch 1."""

    def __getitem__(self, key):
        if key == (1, 3):
            raise RuntimeError("unreadable image")
        return super().__getitem__(key)


def _pids(items: list[dict]) -> list[int]:
    return [item["pid"] for item in items]


@pytest.fixture(scope="module")
def parts(tmp_path_factory, to_tensor) -> tuple[ImageCaptionDataset, CaptionCollator]:
    """A 10-image augmented dataset (captions of different lengths) and its collator."""
    folder = tmp_path_factory.mktemp("stream")
    rng = np.random.default_rng(3)
    samples = []
    for i in range(N_SAMPLES):
        path = folder / f"c_{i:04d}.png"
        Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(path)
        text = " ".join(rng.choice(WORDS, size=1 + i % 4))
        samples.append(Sample(path, text, None, folder / "d.jsonl", i + 1))
    tokenizer = build_tokenizer(caption_words(WORDS), folder / "tokenizer")
    spec = TokenSpec(tokenizer.bos_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id, 32)
    augment = build_augment(AugmentConfig(random_resized_crop=0.3, colour_jitter=0.4, rotation_degrees=10))
    return ImageCaptionDataset(samples, to_tensor, augment, seed=5), CaptionCollator(tokenizer, spec)


def _stream(parts, workers: int = 0, *, rank: int = 0, world: int = 1, batch: int = BATCH) -> MicroBatchStream:
    dataset, collate = parts
    return MicroBatchStream(dataset, batch, collate, seed=11, rank=rank, world=world, num_workers=workers)


def _take(stream: MicroBatchStream, start: int, n: int) -> list[dict[str, torch.Tensor]]:
    batches = stream.iterate(start)
    try:
        return [next(batches) for _ in range(n)]
    finally:
        batches.close()


def _assert_same(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert a.keys() == b.keys()
        for name in a:
            assert torch.equal(a[name], b[name]), name


@pytest.fixture(scope="module")
def reference(parts) -> list[dict[str, torch.Tensor]]:
    """Three epochs from micro-batch 0, read in the main process."""
    stream = _stream(parts)
    assert stream.per_epoch == 4
    return _take(stream, 0, 3 * stream.per_epoch)


def test_batches_equal_with_and_without_workers(parts, reference):
    _assert_same(_take(_stream(parts, 2), 0, len(reference)), reference)
    assert [len(b["input_ids"]) for b in reference[:4]] == [3, 3, 3, 1]
    assert all(set(b) == {"pixel_values", "input_ids", "attention_mask", "labels"} for b in reference)
    # each epoch is shuffled differently
    assert not all(torch.equal(reference[i]["input_ids"], reference[i + 4]["input_ids"]) for i in range(3))


@pytest.mark.parametrize("start,workers", [(1, 0), (4, 0), (6, 0), (9, 2), (4, 2)],
                         ids=["mid-first-epoch", "second-epoch", "mid-second-epoch", "mid-third-epoch-2-workers",
                              "second-epoch-2-workers"])
def test_resume_is_the_tail_of_an_uninterrupted_run(parts, reference, start, workers):
    _assert_same(_take(_stream(parts, workers), start, len(reference) - start), reference[start:])


def test_keys_walk_epochs_with_ddp_shards(parts):
    """Rank r gets every world-th key of the epoch's shuffle, padded to a multiple of world."""
    world = 3
    streams = [_stream(parts, rank=r, world=world, batch=2) for r in range(world)]
    assert streams[0].per_epoch == 2  # ceil(ceil(10 / 3) / 2)
    per_rank = [[key for batch in _first(s.keys(0), 2 * s.per_epoch) for key in batch] for s in streams]
    for epoch in (0, 1):
        order = torch.randperm(N_SAMPLES, generator=torch.Generator().manual_seed(11 * 100_003 + epoch)).tolist()
        padded = order + order[:2]
        shards = [[k for k in keys if k[0] == epoch] for keys in per_rank]
        assert shards == [[(epoch, i) for i in padded[r::world]] for r in range(world)]
    for s in streams:
        keys = _first(s.keys(0), 7)
        assert _first(s.keys(3), 4) == keys[3:]


def _first(keys, n: int) -> list:
    return [next(keys) for _ in range(n)]


def test_augmentation_follows_the_epoch_whatever_the_workers(parts):
    """Batch size 1: each batch is one (epoch, index) key; its pixels are dataset[epoch, index]."""
    dataset, _ = parts
    streams = {w: _stream(parts, w, batch=1) for w in (0, 2)}
    n = 2 * N_SAMPLES
    keys = [batch[0] for batch in _first(streams[0].keys(0), n)]
    seen = {w: dict(zip(keys, (b["pixel_values"][0] for b in _take(s, 0, n)), strict=True)) for w, s in streams.items()}
    assert len(seen[0]) == n
    for key in keys:
        assert torch.equal(seen[0][key], seen[2][key])
        assert torch.equal(seen[0][key], dataset[key]["pixel_values"])
    assert all(not torch.equal(seen[0][0, i], seen[0][1, i]) for i in range(N_SAMPLES))


def test_workers_persist_across_epochs(parts):
    dataset, _ = parts
    stream = MicroBatchStream(_PidDataset(dataset), BATCH, _pids, seed=11, num_workers=2)
    pids = {pid for batch in _take(stream, 0, 3 * stream.per_epoch) for pid in batch}
    assert len(pids) == 2 and os.getpid() not in pids


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("start", [0, 5])
def test_global_rng_is_untouched(parts, workers, start):
    """Dropout draws from the global RNG: the stream must not, wherever it starts."""
    torch.manual_seed(7)
    before = torch.get_rng_state()
    _take(_stream(parts, workers), start, 6)
    assert torch.equal(torch.get_rng_state(), before)


def _live(pids: set[int]) -> set[int]:
    return {pid for pid in pids if Path(f"/proc/{pid}").exists()}


@pytest.mark.parametrize("how", ["close", "garbage-collect"])
def test_dropping_the_stream_stops_its_workers(parts, how):
    before = set(multiprocessing.active_children())
    batches = _stream(parts, 2).iterate(2)
    for _ in range(5):
        next(batches)
    workers = {p.pid for p in set(multiprocessing.active_children()) - before}
    assert len(workers) == 2 and _live(workers) == workers
    if how == "close":
        batches.close()
    else:
        del batches
        gc.collect()
    assert set(multiprocessing.active_children()) - before == set()
    assert _live(workers) == set()


def test_a_failing_item_stops_the_workers_while_its_error_is_held(parts):
    """The traceback keeps the generator's frame alive: the workers must not wait for it to go."""
    before = set(multiprocessing.active_children())
    stream = MicroBatchStream(_FailingDataset(parts[0]), BATCH, _pids, seed=11, num_workers=2)
    with pytest.raises(RuntimeError, match="unreadable image") as error:
        for _ in stream.iterate(0):
            pass
    assert error.value.__traceback__ is not None
    assert set(multiprocessing.active_children()) - before == set()
