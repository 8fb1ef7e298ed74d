"""AugmentConfig validation and build_augment determinism."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from blip_lora_core.errors import ConfigError
from blip_lora_core.train.augment import AugmentConfig, build_augment

ALL_ON = AugmentConfig(random_resized_crop=0.5, colour_jitter=0.3, rotation_degrees=15, blur_sigma=1.5, hflip=True)


@pytest.fixture
def image() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (27, 48, 3), dtype=np.uint8))


def _run(cfg: AugmentConfig, image: Image.Image, seed: int) -> np.ndarray:
    augment = build_augment(cfg)
    assert augment is not None
    return np.asarray(augment(image, np.random.default_rng(seed)))


def test_all_off_is_none():
    assert build_augment(AugmentConfig()) is None
    assert build_augment(AugmentConfig.from_dict({})) is None
    assert build_augment(AugmentConfig.from_dict(None)) is None


def test_same_generator_same_image_and_seeds_differ(image):
    first, again, other = _run(ALL_ON, image, 7), _run(ALL_ON, image, 7), _run(ALL_ON, image, 8)
    assert first.shape == (27, 48, 3) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


@pytest.mark.parametrize(
    "cfg",
    [
        AugmentConfig(random_resized_crop=0.2),
        AugmentConfig(colour_jitter=0.5),
        AugmentConfig(rotation_degrees=30),
        AugmentConfig(blur_sigma=2.0),
    ],
    ids=["crop", "jitter", "rotate", "blur"],
)
def test_each_op_changes_image_and_keeps_size(image, cfg):
    out = _run(cfg, image, 3)
    assert out.shape == np.asarray(image).shape
    assert not np.array_equal(out, np.asarray(image))


def test_hflip_mirrors_about_half_the_time(image):
    cfg = AugmentConfig(hflip=True)
    mirrored = np.asarray(image)[:, ::-1]
    outcomes = [_run(cfg, image, seed) for seed in range(40)]
    flips = sum(np.array_equal(o, mirrored) for o in outcomes)
    unchanged = sum(np.array_equal(o, np.asarray(image)) for o in outcomes)
    assert flips + unchanged == 40 and 10 <= flips <= 30


def test_non_rgb_input_is_converted():
    out = build_augment(AugmentConfig(colour_jitter=0.1))(Image.new("L", (8, 8), 90), np.random.default_rng(0))
    assert out.mode == "RGB"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("random_resized_crop", -0.1),
        ("random_resized_crop", 1.5),
        ("colour_jitter", 2.0),
        ("rotation_degrees", 181),
        ("blur_sigma", float("nan")),
        ("blur_sigma", "1"),
        ("colour_jitter", True),
        ("hflip", 1),
    ],
)
def test_invalid_values_name_the_field(field, value):
    with pytest.raises(ConfigError, match=field):
        AugmentConfig(**{field: value})


def test_from_dict_rejects_unknown_keys_by_name():
    with pytest.raises(ConfigError, match="rotation, zoom"):
        AugmentConfig.from_dict({"hflip": True, "zoom": 2, "rotation": 3})
    with pytest.raises(ConfigError, match="mapping"):
        AugmentConfig.from_dict([("hflip", True)])
    assert AugmentConfig.from_dict({"hflip": True, "blur_sigma": 1}) == AugmentConfig(hflip=True, blur_sigma=1)
