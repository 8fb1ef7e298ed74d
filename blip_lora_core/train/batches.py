"""The stream of training micro-batches: a pure function of (seed, epoch, position), so resuming at any
optimizer step reproduces exactly the batches an uninterrupted run would have seen, on any number of
DataLoader workers and DDP ranks. One DataLoader (persistent workers) serves the whole run: the batch
sampler yields (epoch, index) keys, so the epoch reaches the workers with every item."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import DataLoader

from ..models.labels import TokenSpec, collate_text
from .data import Key

PREFETCH = 4  # micro-batches each worker prepares ahead


class CaptionCollator:
    """Dataset items -> {pixel_values (B, 3, H, W), input_ids, attention_mask, labels (B, T)}."""

    def __init__(self, tokenizer, spec: TokenSpec, default_prompt: str | None = None):
        self.tokenizer, self.spec, self.default_prompt = tokenizer, spec, default_prompt or None

    def __call__(self, items: Sequence[dict]) -> dict[str, torch.Tensor]:
        prompts = [item.get("prompt") or self.default_prompt for item in items]
        batch = collate_text(self.tokenizer, self.spec, [item["text"] for item in items], prompts)
        batch["pixel_values"] = torch.stack([item["pixel_values"] for item in items])
        return batch


class MicroBatchStream:
    """Micro-batches numbered globally: micro-batch k belongs to epoch k // per_epoch.

    Each epoch shuffles the dataset with a generator seeded by (seed, epoch), pads it to a multiple of
    the world size as DistributedSampler does, and gives rank r every world-th index. The dataset is
    indexed with (epoch, index) keys, so per-epoch randomness (augmentation) travels with each key and
    one DataLoader, with persistent workers, serves the whole run.
    """

    def __init__(self, dataset, batch_size: int, collate, *, seed: int, rank: int = 0, world: int = 1,
                 num_workers: int = 0):
        self.dataset, self.batch_size, self.collate = dataset, batch_size, collate
        self.seed, self.rank, self.world, self.num_workers = seed, rank, world, num_workers
        self.per_epoch = math.ceil(math.ceil(len(dataset) / world) / batch_size)

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        order = torch.randperm(len(self.dataset), generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))
        order = order.tolist()
        padded = order + order[: (-len(order)) % self.world]
        shard = padded[self.rank::self.world]
        return [shard[i:i + self.batch_size] for i in range(0, len(shard), self.batch_size)]

    def keys(self, start: int = 0) -> Iterator[list[Key]]:
        """This rank's micro-batches as lists of (epoch, index) keys, from global index start onward, forever."""
        epoch, offset = divmod(start, self.per_epoch)
        while True:
            for batch in self._epoch_batches(epoch)[offset:]:
                yield [(epoch, index) for index in batch]
            epoch, offset = epoch + 1, 0

    def loader(self, start: int = 0) -> DataLoader:
        """One DataLoader for the whole run from global index start: an infinite batch sampler of keys."""
        workers = self.num_workers
        # its own generator: creating a loader must not draw from the global RNG, or resuming
        # mid-epoch would shift the dropout randomness of every later step
        return DataLoader(self.dataset, batch_sampler=_KeySampler(self, start), collate_fn=self.collate,
                          num_workers=workers, persistent_workers=workers > 0,
                          prefetch_factor=PREFETCH if workers > 0 else None,
                          generator=torch.Generator().manual_seed(self.seed))

    def iterate(self, start: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        """Collated micro-batches (pixel_values (B, 3, H, W), input_ids ... (B, T)) from global index start
        onward, forever. Closing or dropping the generator, or an error raised through it, stops the
        loader's workers at once."""
        batches = iter(self.loader(start))
        try:
            yield from batches
        finally:
            _shut_down(batches)


class _KeySampler:
    """Re-iterable batch sampler: stream.keys(start)."""

    def __init__(self, stream: MicroBatchStream, start: int):
        self.stream, self.start = stream, start

    def __iter__(self) -> Iterator[list[Key]]:
        return self.stream.keys(self.start)


def _shut_down(batches) -> None:
    """Stop a DataLoader iterator's worker processes now (torch offers no public close; this is what
    its __del__ does, which a persistent, infinite iterator may otherwise reach late)."""
    shut_down = getattr(batches, "_shutdown_workers", None)
    if shut_down is not None:
        shut_down()
