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

_CONTENT_WIDTH = 64  # the content box is found on a copy of the image this many pixels wide
_CONTENT_THRESHOLD = 60.0  # sum over R, G, B of |pixel - its blurred surroundings| (0-765) that marks content
_CONTENT_MARGIN = 0.1  # the box grows by this fraction of its size on each side


@dataclass
class AugmentConfig:
    """What to apply to training images (YAML ``augment:``); every field at 0 / False means off
    (``AugmentConfig.off()``).

    The defaults make an adapter hold on another camera: closer, cropped to another aspect (portrait), with
    another white balance, slightly rolled, without losing exact match on the training camera
    (bench/camera_robust.py measures it on seed_blocks). A crop always holds the image's content box (what
    stands out from its local background: the objects), so zooming in never cuts away what the caption
    talks about.
    """

    SECTION: ClassVar[str] = "augment"
    random_resized_crop: float = setting(0.25, "random resized crop: smallest crop area as a fraction of the image "
                                               "(0: off); the crop always holds the image's content", low=0, high=1)
    crop_aspect: float = setting(3.5, "crop aspect ratios drawn log-uniformly from [1/a, a] times the image's own "
                                      "(a 9:16 portrait crop of a 16:9 frame is 1/3.2)", low=1, high=10)
    crop_probability: float = setting(0.25, "the share of images cropped (the rest keep the camera's framing)",
                                      low=0, high=1)
    colour_jitter: float = setting(0.1, "brightness, contrast and saturation factors drawn from [1 - s, 1 + s] "
                                        "(0: off)", low=0, high=1)
    white_balance: float = setting(0.25, "another camera's white balance: red gain t and blue gain 1/t, t drawn "
                                         "log-uniformly from [1/(1 + s), 1 + s] (0: off)", low=0, high=1)
    rotation_degrees: float = setting(5.0, "rotation drawn from [-d, d] degrees (0: off)", low=0, high=180)
    blur_sigma: float = setting(0.5, "Gaussian blur with sigma drawn from [0, s] (0: off)", low=0, high=100)
    hflip: bool = setting(False, "mirror left-right with probability 0.5 (off by default: captions may say "
                                 "left/right)")

    def __post_init__(self) -> None:
        check_settings(self)

    @classmethod
    def off(cls) -> AugmentConfig:
        """Every augmentation off."""
        return cls(random_resized_crop=0.0, colour_jitter=0.0, white_balance=0.0, rotation_degrees=0.0,
                   blur_sigma=0.0, hflip=False)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> AugmentConfig:
        """Build from a mapping (e.g. YAML); unknown keys are a ConfigError naming them."""
        return from_mapping(cls, d)

    @property
    def enabled(self) -> bool:
        """True when any augmentation is on."""
        return bool(self.random_resized_crop or self.colour_jitter or self.white_balance or self.rotation_degrees
                    or self.blur_sigma or self.hflip)


def build_augment(cfg: AugmentConfig) -> Augment | None:
    """Return ``augment(image, rng) -> image`` (same size, RGB), or None when everything is off.

    Order: random resized crop, horizontal flip, rotation, colour jitter, white balance, blur. Each step
    draws from ``rng`` only when enabled, so equal generators give equal images.
    """
    if not cfg.enabled:
        return None

    def augment(image: Image.Image, rng: np.random.Generator) -> Image.Image:
        image = image if image.mode == "RGB" else image.convert("RGB")
        if cfg.random_resized_crop and rng.random() < cfg.crop_probability:
            image = _random_resized_crop(image, rng, cfg.random_resized_crop, cfg.crop_aspect)
        if cfg.hflip and rng.random() < 0.5:
            image = ImageOps.mirror(image)
        if cfg.rotation_degrees:
            image = _rotate(image, float(rng.uniform(-cfg.rotation_degrees, cfg.rotation_degrees)))
        if cfg.colour_jitter:
            image = _colour_jitter(image, rng, cfg.colour_jitter)
        if cfg.white_balance:
            image = _white_balance(image, rng, cfg.white_balance)
        if cfg.blur_sigma:
            image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.0, cfg.blur_sigma))))
        return image

    return augment


def _random_resized_crop(image: Image.Image, rng: np.random.Generator, min_scale: float,
                         max_aspect: float) -> Image.Image:
    """Crop a random box (area about [min_scale, 1] of the image, aspect [1/a, a] times the image's) that holds
    the content box, resized back to full size; the box grows past the drawn size where the content needs it."""
    width, height = image.size
    area = rng.uniform(min_scale, 1.0)
    aspect = math.exp(rng.uniform(-math.log(max_aspect), math.log(max_aspect)))
    content = content_box(image) or (width, height, 0.0, 0.0)  # no content: nothing to hold
    w = min(float(width), max(width * math.sqrt(area * aspect), content[2] - content[0]))
    h = min(float(height), max(height * math.sqrt(area / aspect), content[3] - content[1]))
    left = _between(rng, max(0.0, content[2] - w), min(content[0], width - w))
    top = _between(rng, max(0.0, content[3] - h), min(content[1], height - h))
    return image.resize((width, height), Image.Resampling.BICUBIC, box=(left, top, left + w, top + h))


def _between(rng: np.random.Generator, low: float, high: float) -> float:
    """A uniform draw from [low, high]; low when rounding made high fall a hair below it."""
    return low + float(rng.random()) * max(0.0, high - low)


def salience(image: Image.Image) -> np.ndarray:
    """(h, 64) map, one value per pixel of a 64-pixel-wide copy of the image: how far (sum over R, G, B, 0-765)
    the pixel lies from its blurred surroundings. Objects stand out; smooth shading and a plain table do not."""
    small_h = max(1, round(image.height * _CONTENT_WIDTH / image.width))
    small = image.convert("RGB").resize((_CONTENT_WIDTH, small_h), Image.Resampling.BOX)
    surroundings = small.filter(ImageFilter.GaussianBlur(_CONTENT_WIDTH / 8))
    return np.abs(np.asarray(small, np.int16) - np.asarray(surroundings, np.int16)).sum(axis=2)


def content_box(image: Image.Image) -> tuple[float, float, float, float] | None:
    """(left, top, right, bottom) in pixels around everything that stands out (``salience`` above a threshold),
    grown by a margin; None when nothing does."""
    distance = salience(image)
    ys, xs = np.nonzero(distance > _CONTENT_THRESHOLD)
    if len(xs) < 4:
        return None
    (x0, x1), (y0, y1) = np.percentile(xs, [1, 99]), np.percentile(ys, [1, 99])
    sx, sy = image.width / distance.shape[1], image.height / distance.shape[0]
    mx, my = _CONTENT_MARGIN * (x1 + 1 - x0), _CONTENT_MARGIN * (y1 + 1 - y0)
    return (max(0.0, (x0 - mx) * sx), max(0.0, (y0 - my) * sy), min(float(image.width), (x1 + 1 + mx) * sx),
            min(float(image.height), (y1 + 1 + my) * sy))


def _rotate(image: Image.Image, degrees: float) -> Image.Image:
    """Rotate about the centre, same size, corners filled with the image's mean colour."""
    fill = tuple(int(round(c)) for c in ImageStat.Stat(image).mean[:3])
    return image.rotate(degrees, resample=Image.Resampling.BILINEAR, fillcolor=fill)


def _colour_jitter(image: Image.Image, rng: np.random.Generator, strength: float) -> Image.Image:
    """Brightness, contrast and saturation, each scaled by a factor from [1 - s, 1 + s]."""
    for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        image = enhancer(image).enhance(float(rng.uniform(1.0 - strength, 1.0 + strength)))
    return image


def _white_balance(image: Image.Image, rng: np.random.Generator, strength: float) -> Image.Image:
    """Warmer or cooler: red times t, blue divided by t, t from [1/(1 + s), 1 + s] log-uniformly (green kept)."""
    t = math.exp(rng.uniform(-math.log1p(strength), math.log1p(strength)))
    return image.convert("RGB", (t, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1 / t, 0))
