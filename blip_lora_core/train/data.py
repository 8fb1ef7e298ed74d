"""Caption datasets: JSONL reading and validation, order-preserving splits, atomic writing, torch Dataset.

One JSONL line per sample: ``{"image": "image_train/blue_0001.jpg", "text": "One blue cube"}`` with an
optional ``"prompt"``; other keys are kept as ``extras``. Image paths are relative to the JSONL file's
folder unless absolute.
"""

from __future__ import annotations

import json
import math
import operator
import os
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..errors import ConfigError, DataError
from ..models.images import check_image_file, load_image

MAX_ERRORS_SHOWN = 5
Key = tuple[int, int]  # an ImageCaptionDataset key: (epoch, index)
_TRAILING_INDEX = re.compile(r"[\d\s_.\-]+$")


@dataclass(frozen=True)
class Sample:
    """One image-caption pair, with where it came from (``source`` file, 1-based ``line``)."""

    image: Path
    text: str
    prompt: str | None
    source: Path
    line: int
    extras: dict[str, Any] = field(default_factory=dict, hash=False)

    @property
    def image_as_written(self) -> str:
        """The image path as a JSONL line writes it: relative to the JSONL's folder when it lies there
        (``../x.jpg`` stays ``../x.jpg``, not ``proj/../x.jpg``), else as it is."""
        try:
            return self.image.relative_to(self.source.parent).as_posix()
        except ValueError:
            return self.image.as_posix()


@dataclass(frozen=True)
class BadLine:
    """A dataset line that was rejected, and why."""

    source: Path
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.reason}"


def read_jsonl(
    path: str | Path, *, skip_bad: bool = False, check_images: bool = True, workers: int | None = None,
    require_text: bool = True,
) -> tuple[list[Sample], list[BadLine]]:
    """Read and validate a caption JSONL file.

    Every line is checked (UTF-8, JSON object, non-empty string "image" and "text", optional string
    "prompt"; with ``require_text=False`` "text" may be empty or absent: frames still to label); each image
    must exist, and with ``check_images`` it is fully decoded (thread pool of
    ``workers``). Blank lines are ignored. Raises DataError listing the first bad lines and their
    count, unless ``skip_bad``, in which case they are returned as BadLine records. A file with no
    good sample is always an error.
    """
    source = Path(path).absolute()
    samples, bad = _parse_lines(source, _read_bytes(source), require_text)
    samples, bad_images = _check_images(samples, decode=check_images, workers=workers)
    bad = sorted(bad + bad_images, key=lambda b: b.line)
    if bad and not skip_bad:
        raise DataError(_summarise(source, bad))
    if not samples:
        detail = f" ({len(bad)} bad line(s) skipped)" if bad else ""
        raise DataError(f"{source}: the dataset has no samples{detail}")
    return samples, bad


def scene_group(image: str | Path) -> str:
    """Group name of an image: its file stem without the trailing frame number ("blue_0001" -> "blue")."""
    stem = Path(image).stem
    return _TRAILING_INDEX.sub("", stem)


def split_by_order(samples: Sequence[Sample], val_fraction: float) -> tuple[list[Sample], list[Sample]]:
    """Hold out the last ``val_fraction`` of each scene group, in file order (never random).

    Groups come from :func:`scene_group`. Each group of two or more samples gives
    ``max(1, round(n * val_fraction))`` (at most n - 1) samples to validation; single-sample groups
    stay in training. When every group is a single sample (unique file names), the whole file is one
    group: its last fraction is held out. Both lists keep the input order.
    """
    if isinstance(val_fraction, bool) or not (0.0 <= float(val_fraction) < 1.0):
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    groups: dict[str, list[int]] = {}
    for i, sample in enumerate(samples):
        groups.setdefault(scene_group(sample.image), []).append(i)
    if val_fraction > 0 and len(groups) == len(samples) > 1:
        groups = {"": list(range(len(samples)))}
    val_index: set[int] = set()
    for members in groups.values():
        val_index.update(members[len(members) - _val_count(len(members), val_fraction):])
    train = [s for i, s in enumerate(samples) if i not in val_index]
    val = [s for i, s in enumerate(samples) if i in val_index]
    return train, val


def sample_to_row(sample: Sample, relative_to: str | Path | None = None) -> dict[str, Any]:
    """JSONL row for a sample; the image path is made relative to ``relative_to`` when possible."""
    image = sample.image
    if relative_to is not None:
        try:
            image = Path(os.path.relpath(image, Path(relative_to).absolute()))
        except ValueError:  # different drive on Windows
            pass
    row: dict[str, Any] = {"image": image.as_posix(), "text": sample.text}
    if sample.prompt is not None:
        row["prompt"] = sample.prompt
    row.update(sample.extras)
    return row


class ImageCaptionDataset(Dataset):
    """Torch dataset: key -> ``dict(pixel_values=(3, H, W) tensor, text, prompt, index)``.

    A key is ``(epoch, index)``; a plain int ``index`` means epoch 0. ``augment(image, rng)`` (training
    only) gets :meth:`rng_for` (epoch, index), so an item depends on its key alone: not on the number
    or order of DataLoader workers, nor on state set in another process (persistent workers).
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        image_transform: Callable[[Image.Image], torch.Tensor],
        augment: Callable[[Image.Image, np.random.Generator], Image.Image] | None = None,
        seed: int = 0,
    ) -> None:
        if int(seed) < 0:
            raise ConfigError(f"seed must be >= 0, got {seed}")
        self.samples = list(samples)
        self.image_transform = image_transform
        self.augment = augment
        self.seed = int(seed)

    def rng_for(self, epoch: int, index: int) -> np.random.Generator:
        """The generator used to augment item ``index`` in ``epoch``."""
        return np.random.default_rng(np.random.SeedSequence([self.seed, epoch, index]))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | Key) -> dict[str, Any]:
        epoch, index = _split_key(key)
        index = range(len(self.samples))[index]  # IndexError / negative indices as for lists
        sample = self.samples[index]
        image = load_image(sample.image)
        if self.augment is not None:
            image = self.augment(image, self.rng_for(epoch, index))
        pixel_values = self.image_transform(image)
        return {"pixel_values": pixel_values, "text": sample.text, "prompt": sample.prompt, "index": index}


def _split_key(key: int | Key) -> Key:
    """(epoch, index) of a dataset key; a plain int is an index in epoch 0. IndexError for epoch < 0."""
    epoch, index = key if isinstance(key, tuple) else (0, key)
    epoch = operator.index(epoch)
    if epoch < 0:
        raise IndexError(f"epoch must be >= 0, got {epoch}")
    return epoch, operator.index(index)


# ---------------------------------------------------------------------------------------------
# Parsing helpers


def _read_bytes(source: Path) -> bytes:
    """Whole file as bytes, or DataError naming it."""
    try:
        return source.read_bytes()
    except OSError as exc:
        raise DataError(f"{source}: cannot read dataset file: {exc.strerror or exc}") from exc


def _parse_lines(source: Path, data: bytes, require_text: bool) -> tuple[list[Sample], list[BadLine]]:
    """Parse every non-blank line; images are not touched yet."""
    samples: list[Sample] = []
    bad: list[BadLine] = []
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            samples.append(_parse_line(source, number, raw, require_text))
        except DataError as exc:
            bad.append(BadLine(source, number, str(exc)))
    return samples, bad


def _parse_line(source: Path, number: int, raw: bytes, require_text: bool) -> Sample:
    """One line -> Sample, or DataError with the reason only (no location)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})") from exc
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise DataError(f"invalid JSON: {str(exc)[:200]}") from exc
    if not isinstance(obj, dict):
        raise DataError(f"line is not a JSON object (got {_json_type(obj)})")
    image = _required_string(obj, "image")
    caption = _required_string(obj, "text") if require_text else (_optional_string(obj, "text") or "")
    prompt = _optional_string(obj, "prompt")
    image_path = Path(image)
    if not image_path.is_absolute():
        image_path = source.parent / image_path
    extras = {k: v for k, v in obj.items() if k not in ("image", "text", "prompt")}
    return Sample(image_path, caption, prompt, source, number, extras)


def _required_string(obj: dict[str, Any], key: str) -> str:
    """A present, non-blank, encodable string field."""
    if key not in obj:
        raise DataError(f'missing "{key}"')
    value = obj[key]
    if not isinstance(value, str):
        raise DataError(f'"{key}" must be a string, got {_json_type(value)}')
    if not value.strip():
        raise DataError(f'"{key}" is empty')
    _check_encodable(key, value)
    if key == "image" and "\x00" in value:
        raise DataError('"image" contains a NUL character')
    return value


def _optional_string(obj: dict[str, Any], key: str) -> str | None:
    """A string field that may be absent, null or blank (-> None)."""
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise DataError(f'"{key}" must be a string or null, got {_json_type(value)}')
    _check_encodable(key, value)
    return value if value.strip() else None


def _check_encodable(key: str, value: str) -> None:
    """Reject lone surrogates (valid JSON escapes, but not text any tokenizer can take)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise DataError(f'"{key}" contains invalid Unicode (a lone surrogate escape)') from error


def _json_type(value: Any) -> str:
    """JSON name of a parsed value's type, for messages."""
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


# ---------------------------------------------------------------------------------------------
# Image checks, summaries, small utilities


def _check_images(
    samples: list[Sample], *, decode: bool, workers: int | None
) -> tuple[list[Sample], list[BadLine]]:
    """Split samples into good ones and BadLines for missing (or, with ``decode``, undecodable) images."""
    check = _decode_error if decode else _missing_error
    if workers is None:
        workers = min(16, (os.cpu_count() or 1) + 2)
    if decode and workers > 1 and len(samples) > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            errors = list(pool.map(check, [s.image for s in samples]))
    else:
        errors = [check(s.image) for s in samples]
    good = [s for s, err in zip(samples, errors, strict=True) if err is None]
    bad = [BadLine(s.source, s.line, err) for s, err in zip(samples, errors, strict=True) if err is not None]
    return good, bad


def _decode_error(image: Path) -> str | None:
    """None if the image decodes fully, else the reason."""
    try:
        load_image(image).close()
    except DataError as exc:
        return f"bad image: {exc}"
    return None


def _missing_error(image: Path) -> str | None:
    """None if the image file exists and is not empty, else the reason."""
    try:
        check_image_file(image)
    except DataError as exc:
        return f"bad image: {exc}"
    return None


def _summarise(source: Path, bad: list[BadLine]) -> str:
    """Error message: count, then the first few bad lines as ``path:line: reason``."""
    lines = [f"{source}: {len(bad)} bad line(s):"]
    lines += [f"  {b}" for b in bad[:MAX_ERRORS_SHOWN]]
    if len(bad) > MAX_ERRORS_SHOWN:
        lines.append(f"  ... and {len(bad) - MAX_ERRORS_SHOWN} more (use skip_bad to drop them)")
    return "\n".join(lines)


def _val_count(n: int, val_fraction: float) -> int:
    """How many of a group's n samples go to validation."""
    if n < 2 or val_fraction <= 0:
        return 0
    return min(n - 1, max(1, math.floor(n * val_fraction + 0.5)))


