"""AugmentConfig validation and build_augment determinism."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from blip_lora_core.errors import ConfigError
from blip_lora_core.train.augment import AugmentConfig, build_augment, content_box
from blip_lora_core.train.config import load_config

ALL_ON = AugmentConfig(random_resized_crop=0.5, colour_jitter=0.3, white_balance=0.2, rotation_degrees=15,
                       blur_sigma=1.5, hflip=True)
ONLY = AugmentConfig.off()
REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


@pytest.fixture
def image() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (27, 48, 3), dtype=np.uint8))


def _run(cfg: AugmentConfig, image: Image.Image, seed: int) -> np.ndarray:
    augment = build_augment(cfg)
    assert augment is not None
    return np.asarray(augment(image, np.random.default_rng(seed)))


def test_all_off_is_none_and_the_defaults_are_on_and_in_the_yaml():
    assert build_augment(AugmentConfig.off()) is None
    assert not AugmentConfig.off().enabled
    assert AugmentConfig.from_dict({}) == AugmentConfig.from_dict(None) == AugmentConfig()
    assert AugmentConfig().enabled and AugmentConfig().random_resized_crop > 0 and AugmentConfig().white_balance > 0
    assert load_config(REPO / "config" / "train.yaml").augment == AugmentConfig()  # the file lists the defaults
    assert load_config(None, {"augment": AugmentConfig.off()}).augment == AugmentConfig.off()  # --no-augment


def test_same_generator_same_image_and_seeds_differ(image):
    first, again, other = _run(ALL_ON, image, 7), _run(ALL_ON, image, 7), _run(ALL_ON, image, 8)
    assert first.shape == (27, 48, 3) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


@pytest.mark.parametrize(
    "cfg",
    [
        replace(ONLY, colour_jitter=0.5),
        replace(ONLY, white_balance=0.3),
        replace(ONLY, rotation_degrees=30),
        replace(ONLY, blur_sigma=2.0),
    ],
    ids=["jitter", "white_balance", "rotate", "blur"],
)
def test_each_op_changes_image_and_keeps_size(image, cfg):
    out = _run(cfg, image, 3)
    assert out.shape == np.asarray(image).shape
    assert not np.array_equal(out, np.asarray(image))


def test_hflip_mirrors_about_half_the_time(image):
    cfg = replace(ONLY, hflip=True)
    mirrored = np.asarray(image)[:, ::-1]
    outcomes = [_run(cfg, image, seed) for seed in range(40)]
    flips = sum(np.array_equal(o, mirrored) for o in outcomes)
    unchanged = sum(np.array_equal(o, np.asarray(image)) for o in outcomes)
    assert flips + unchanged == 40 and 10 <= flips <= 30


def test_non_rgb_input_is_converted():
    out = build_augment(replace(ONLY, colour_jitter=0.1))(Image.new("L", (8, 8), 90), np.random.default_rng(0))
    assert out.mode == "RGB"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("random_resized_crop", -0.1),
        ("random_resized_crop", 1.5),
        ("colour_jitter", 2.0),
        ("crop_aspect", 0.5),
        ("crop_aspect", 11),
        ("white_balance", 1.5),
        ("crop_probability", 1.1),
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


def _table_scene(width: int, height: int, box: tuple[int, int, int, int]) -> Image.Image:
    """A shaded grey table (a smooth gradient, as a lamp makes) with one blue cube at box."""
    x = np.linspace(0, 1, width)[None, :, None]
    y = np.linspace(0, 1, height)[:, None, None]
    table = 150 + 60 * x + 30 * y + np.zeros((height, width, 3))
    left, top, right, bottom = box
    table[top:bottom, left:right] = (20, 110, 210)
    return Image.fromarray(table.astype(np.uint8))


def _blue_pixels(image: Image.Image) -> int:
    rgb = np.asarray(image).astype(int)
    return int(((rgb[..., 2] - rgb[..., 0]) > 100).sum())


def test_content_box_finds_the_object_not_the_shading():
    image = _table_scene(480, 270, (300, 40, 340, 80))
    left, top, right, bottom = content_box(image)
    assert left <= 300 and top <= 40 and right >= 340 and bottom >= 80  # holds the cube
    assert right - left < 120 and bottom - top < 100  # and not the whole table
    assert content_box(_table_scene(480, 270, (0, 0, 0, 0))) is None  # shading alone is no content


def test_zoomed_crops_keep_the_object_in_every_draw():
    image = _table_scene(64, 64, (50, 4, 60, 14))  # a small cube near a corner
    crop = build_augment(replace(ONLY, random_resized_crop=0.1, crop_aspect=3.0, crop_probability=1.0))
    outs = [crop(image, np.random.default_rng(seed)) for seed in range(60)]
    assert all(_blue_pixels(out) > 0 for out in outs)
    zoomed = [_blue_pixels(out) / _blue_pixels(image) for out in outs]
    assert max(zoomed) > 2.0  # the crops do zoom in (the cube grows) ...
    assert min(zoomed) >= 0.6  # ... and never cut it away


def test_an_image_that_is_content_everywhere_is_not_cropped(image):
    np.testing.assert_array_equal(_run(replace(ONLY, random_resized_crop=0.2, crop_probability=1.0), image, 3),
                                  np.asarray(image))


def test_about_crop_probability_of_the_images_are_cropped():
    image = _table_scene(64, 64, (30, 30, 40, 40))
    crop = build_augment(replace(ONLY, random_resized_crop=0.3, crop_probability=0.5))
    kept = sum(np.array_equal(np.asarray(crop(image, np.random.default_rng(seed))), np.asarray(image))
               for seed in range(60))
    assert 15 <= kept <= 45


def test_crops_of_a_wide_frame_change_its_framing_and_aspect():
    image = _table_scene(480, 270, (200, 100, 260, 160))
    crop = build_augment(replace(ONLY, random_resized_crop=0.8, crop_aspect=3.5, crop_probability=1.0))
    boxes = []
    for seed in range(30):
        out = np.asarray(crop(image, np.random.default_rng(seed)))
        assert out.shape == (270, 480, 3)
        ys, xs = np.nonzero((out[..., 2].astype(int) - out[..., 0]) > 100)
        boxes.append((xs.max() - xs.min() + 1) / (ys.max() - ys.min() + 1))  # the cube's aspect on screen
    assert min(boxes) < 0.8 and max(boxes) > 1.25  # squeezed (portrait crops) and stretched (wide crops)


def test_white_balance_warms_or_cools_and_keeps_green():
    grey = Image.new("RGB", (8, 8), (100, 100, 100))
    balance = build_augment(replace(ONLY, white_balance=0.2))
    gains = set()
    for seed in range(20):
        red, green, blue = (int(v) for v in np.asarray(balance(grey, np.random.default_rng(seed)))[0, 0])
        assert green == 100 and 83 <= red <= 120 and 83 <= blue <= 120
        assert abs(red * blue - 100 * 100) <= 130  # red times t, blue divided by t
        gains.add((red, blue))
    assert len(gains) > 10 and min(r for r, _ in gains) < 95 < 105 < max(r for r, _ in gains)


def test_the_no_augment_flag_turns_everything_off(tmp_path):
    from blip_lora_training.cli import build_parser
    from blip_lora_training.commands.train import config_of

    def config(*flags: str):
        return config_of(build_parser().parse_args(["train", "--train", "d.jsonl", *flags]))

    assert config("--no-augment").augment == AugmentConfig.off()
    assert config().augment == AugmentConfig()  # the camera-robust defaults
    yaml_file = tmp_path / "train.yaml"
    yaml_file.write_text("augment:\n  colour_jitter: 0.3\n")
    assert config("--config", str(yaml_file)).augment.colour_jitter == 0.3  # the config's section
    assert config("--config", str(yaml_file), "--no-augment").augment == AugmentConfig.off()
