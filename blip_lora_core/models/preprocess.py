"""BLIP's image preprocessing (resize, rescale, normalise) with PIL and numpy only.

Equivalent to transformers' BlipImageProcessor for RGB inputs, without its torchvision dependency,
and read from the same ``preprocessor_config.json``. The numbers are made in numpy (``array``), so the torch
captioner (``__call__``, ``batch``: torch tensors) and the ONNX Runtime captioner (``batch_array``) get the
same pixels bit for bit; this module imports torch only when a tensor is asked for.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import torch

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ImagePreprocessor:
    """PIL RGB image -> (3, height, width) float tensor, normalised."""

    height: int = 384
    width: int = 384
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    resample: int = Image.Resampling.BICUBIC
    rescale_factor: float = 1 / 255

    @classmethod
    def from_dict(cls, config: dict) -> ImagePreprocessor:
        size = config.get("size", {})
        if isinstance(size, int):
            size = {"height": size, "width": size}
        return cls(
            height=int(size.get("height", size.get("shortest_edge", 384))),
            width=int(size.get("width", size.get("shortest_edge", 384))),
            mean=tuple(config.get("image_mean", CLIP_MEAN)),
            std=tuple(config.get("image_std", CLIP_STD)),
            resample=int(config.get("resample", Image.Resampling.BICUBIC)),
            rescale_factor=float(config.get("rescale_factor", 1 / 255)),
        )

    @classmethod
    def from_pretrained(cls, name_or_path: str, revision: str | None = None) -> ImagePreprocessor:
        """Read preprocessor_config.json from a local folder or the hub cache."""
        from transformers.utils import cached_file

        path = cached_file(name_or_path, "preprocessor_config.json", revision=revision)
        with open(path, encoding="utf-8") as handle:
            return cls.from_dict(json.load(handle))

    def save_pretrained(self, folder) -> None:
        """Write preprocessor_config.json into folder (atomically), as transformers' processors do."""
        from ..atomic import atomic_write_text

        atomic_write_text(Path(folder) / "preprocessor_config.json", json.dumps(self.to_dict(), indent=2))

    def to_dict(self) -> dict:
        return {
            "image_processor_type": "BlipImageProcessor",
            "processor_class": "BlipProcessor",
            "do_resize": True,
            "size": {"height": self.height, "width": self.width},
            "resample": int(self.resample),
            "do_rescale": True,
            "rescale_factor": self.rescale_factor,
            "do_normalize": True,
            "image_mean": list(self.mean),
            "image_std": list(self.std),
            "do_convert_rgb": True,
        }

    def array(self, image: Image.Image | np.ndarray) -> np.ndarray:
        """One image (PIL, or (H, W, 3) uint8 RGB array) -> (3, height, width) float32 numpy array."""
        if isinstance(image, np.ndarray):
            image = Image.fromarray(image)
        if image.mode != "RGB":
            image = image.convert("RGB")
        resized = image.resize((self.width, self.height), resample=self.resample)
        pixels = np.asarray(resized, dtype=np.float32).transpose(2, 0, 1)
        mean = np.asarray(self.mean, dtype=np.float32).reshape(3, 1, 1)
        std = np.asarray(self.std, dtype=np.float32).reshape(3, 1, 1)
        return np.ascontiguousarray((pixels * np.float32(self.rescale_factor) - mean) / std)

    def batch_array(self, images: Sequence[Image.Image | np.ndarray]) -> np.ndarray:
        """Images -> (B, 3, height, width) float32 numpy array."""
        return np.stack([self.array(image) for image in images])

    def __call__(self, image: Image.Image | np.ndarray) -> torch.Tensor:
        """One image (PIL, or (H, W, 3) uint8 RGB array) -> (3, height, width) float32 tensor."""
        import torch

        return torch.from_numpy(self.array(image))

    def batch(self, images: Sequence[Image.Image | np.ndarray]) -> torch.Tensor:
        """Images -> (B, 3, height, width) float32 tensor."""
        import torch

        return torch.from_numpy(self.batch_array(images))
