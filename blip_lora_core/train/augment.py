"""Training-image augmentation with PIL only, driven by an explicit numpy Generator (deterministic)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps, ImageStat

from ..settings import check_settings, from_mapping, setting

Augment = Callable[[Image.Image, np.random.Generator], Image.Image]

_CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)  # aspect-ratio range of random crops, as in torchvision
_CROP_TRIES = 10


@dataclass
class AugmentConfig:
    """What to apply to training images (YAML ``augment:``); every field at 0 / False means off."""

    SECTION: ClassVar[str] = "augment"
    random_resized_crop: float = setting(0.0, "random resized crop: smallest crop area as a fraction of the image "
                                              "(0: off)", low=0, high=1)
    colour_jitter: float = setting(0.0, "brightness, contrast and saturation factors drawn from [1 - s, 1 + s] "
                                        "(0: off)", low=0, high=1)
    rotation_degrees: float = setting(0.0, "rotation drawn from [-d, d] degrees (0: off)", low=0, high=180)
    blur_sigma: float = setting(0.0, "Gaussian blur with sigma drawn from [0, s] (0: off)", low=0, high=100)
    hflip: bool = setting(False, "mirror left-right with probability 0.5 (off by default: captions may say "
                                 "left/right)")

    def __post_init__(self) -> None:
        check_settings(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> AugmentConfig:
        """Build from a mapping (e.g. YAML); unknown keys are a ConfigError naming them."""
        return from_mapping(cls, d)

    @property
    def enabled(self) -> bool:
        """True when any augmentation is on."""
        return bool(self.random_resized_crop or self.colour_jitter or self.rotation_degrees
                    or self.blur_sigma or self.hflip)


def build_augment(cfg: AugmentConfig) -> Augment | None:
    """Return ``augment(image, rng) -> image`` (same size, RGB), or None when everything is off.

    Order: random resized crop, horizontal flip, rotation, colour jitter, blur. Each step draws
    from ``rng`` only when enabled, so equal generators give equal images.
    """
    if not cfg.enabled:
        return None

    def augment(image: Image.Image, rng: np.random.Generator) -> Image.Image:
        image = image if image.mode == "RGB" else image.convert("RGB")
        if cfg.random_resized_crop:
            image = _random_resized_crop(image, rng, cfg.random_resized_crop)
        if cfg.hflip and rng.random() < 0.5:
            image = ImageOps.mirror(image)
        if cfg.rotation_degrees:
            image = _rotate(image, float(rng.uniform(-cfg.rotation_degrees, cfg.rotation_degrees)))
        if cfg.colour_jitter:
            image = _colour_jitter(image, rng, cfg.colour_jitter)
        if cfg.blur_sigma:
            image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.0, cfg.blur_sigma))))
        return image

    return augment


def _random_resized_crop(image: Image.Image, rng: np.random.Generator, min_scale: float) -> Image.Image:
    """Crop a random box of area in [min_scale, 1] and aspect in 3/4..4/3, resized back to full size."""
    width, height = image.size
    box = (0.0, 0.0, float(width), float(height))
    for _ in range(_CROP_TRIES):
        area = width * height * rng.uniform(min_scale, 1.0)
        ratio = math.exp(rng.uniform(math.log(_CROP_RATIO[0]), math.log(_CROP_RATIO[1])))
        w, h = math.sqrt(area * ratio), math.sqrt(area / ratio)
        if w <= width and h <= height:
            left, top = rng.uniform(0.0, width - w), rng.uniform(0.0, height - h)
            box = (left, top, left + w, top + h)
            break
    return image.resize((width, height), Image.Resampling.BICUBIC, box=box)


def _rotate(image: Image.Image, degrees: float) -> Image.Image:
    """Rotate about the centre, same size, corners filled with the image's mean colour."""
    fill = tuple(int(round(c)) for c in ImageStat.Stat(image).mean[:3])
    return image.rotate(degrees, resample=Image.Resampling.BILINEAR, fillcolor=fill)


def _colour_jitter(image: Image.Image, rng: np.random.Generator, strength: float) -> Image.Image:
    """Brightness, contrast and saturation, each scaled by a factor from [1 - s, 1 + s]."""
    for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        image = enhancer(image).enhance(float(rng.uniform(1.0 - strength, 1.0 + strength)))
    return image
