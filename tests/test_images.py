"""load_image / pil_to_rgb: every mode to 8-bit RGB with known pixel values; every failure a DataError."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from blip_lora_core.errors import DataError
from blip_lora_core.models.images import check_image_file, load_image, pil_to_rgb


def _save(img: Image.Image, path: Path, **kwargs) -> Path:
    img.save(path, **kwargs)
    return path


def _pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.int32)


def test_rgb_jpeg_loads_as_rgb(tmp_path):
    path = _save(Image.new("RGB", (32, 16), (10, 200, 30)), tmp_path / "a.jpg", quality=95)
    img = load_image(path)
    assert img.mode == "RGB" and img.size == (32, 16)
    assert np.abs(_pixels(img) - [10, 200, 30]).max() <= 3


def test_rgba_composited_on_white(tmp_path):
    arr = np.array([[[255, 0, 0, 0], [255, 0, 0, 255], [0, 0, 0, 128]]], dtype=np.uint8)
    img = load_image(_save(Image.fromarray(arr, "RGBA"), tmp_path / "a.png"))
    assert img.mode == "RGB"
    got = _pixels(img)[0]
    assert got[0].tolist() == [255, 255, 255]
    assert got[1].tolist() == [255, 0, 0]
    assert np.abs(got[2] - 127).max() <= 1


def test_la_composited_on_white(tmp_path):
    arr = np.array([[[0, 0], [0, 255], [100, 255]]], dtype=np.uint8)
    img = load_image(_save(Image.fromarray(arr, "LA"), tmp_path / "a.png"))
    assert _pixels(img)[0].tolist() == [[255] * 3, [0] * 3, [100] * 3]


def test_grayscale_l(tmp_path):
    arr = np.array([[0, 77, 255]], dtype=np.uint8)
    img = load_image(_save(Image.fromarray(arr, "L"), tmp_path / "a.png"))
    assert img.mode == "RGB"
    assert _pixels(img)[0].tolist() == [[0] * 3, [77] * 3, [255] * 3]


def test_palette_with_transparency_becomes_white(tmp_path):
    img = Image.new("P", (3, 1))
    img.putpalette([0, 0, 255, 0, 255, 0] + [0] * (256 * 3 - 6))
    img.putdata([0, 1, 0])
    path = _save(img, tmp_path / "a.png", transparency=0)
    got = _pixels(load_image(path))[0]
    assert got.tolist() == [[255, 255, 255], [0, 255, 0], [255, 255, 255]]


def test_palette_without_transparency(tmp_path):
    img = Image.new("P", (2, 1))
    img.putpalette([0, 0, 255, 0, 255, 0] + [0] * (256 * 3 - 6))
    img.putdata([0, 1])
    assert _pixels(load_image(_save(img, tmp_path / "a.gif")))[0].tolist() == [[0, 0, 255], [0, 255, 0]]


def test_16_bit_png_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 32896, 65535, 1000]], dtype=np.uint16)
    path = _save(Image.fromarray(values), tmp_path / "a.png")
    assert Image.open(path).mode.startswith("I")
    got = _pixels(load_image(path))[0, :, 0].tolist()
    assert got == [0, 1, 128, 255, 4]  # v / 257 rounded; 1000 / 257 = 3.89


def test_mode_i_with_16_bit_values_and_out_of_range():
    in_range = Image.fromarray(np.array([[0, 65535]], dtype=np.int32), "I")
    assert _pixels(pil_to_rgb(in_range))[0, :, 0].tolist() == [0, 255]
    stretched = Image.fromarray(np.array([[-10, 0, 90]], dtype=np.int32), "I")
    assert _pixels(pil_to_rgb(stretched))[0, :, 0].tolist() == [0, 26, 255]


def test_cmyk(tmp_path):
    path = _save(Image.new("CMYK", (4, 4), (0, 255, 255, 0)), tmp_path / "a.tif")
    img = load_image(path)
    assert img.mode == "RGB"
    assert np.unique(_pixels(img).reshape(-1, 3), axis=0).tolist() == [[255, 0, 0]]


def test_exif_orientation_applied(tmp_path):
    # 40x20 stored; red block in the stored top-left. Orientation 6 = display rotated 90 deg clockwise.
    arr = np.full((20, 40, 3), 255, dtype=np.uint8)
    arr[:8, :8] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = _save(Image.fromarray(arr), tmp_path / "a.jpg", exif=exif, quality=95)
    img = load_image(path)
    assert img.size == (20, 40)
    got = _pixels(img)
    assert np.abs(got[3, 16] - [255, 0, 0]).max() < 40  # now at the top right
    assert np.abs(got[3, 3] - [255, 255, 255]).max() < 40


def test_lab_converted_through_colour_management():
    red = Image.new("LAB", (2, 2), (128, 128 + 80, 128 + 67))  # L*=50, a*=80, b*=67: a strong red
    r, g, b = pil_to_rgb(red).getpixel((0, 0))
    assert r > 200 and g < 40 and b < 40


@pytest.mark.parametrize("mode", ["1", "YCbCr", "HSV", "PA", "La", "RGBa", "RGBX", "F", "I;16B"])
def test_every_other_mode_becomes_rgb(mode):
    assert pil_to_rgb(Image.new(mode, (3, 2))).mode == "RGB"


def test_pil_to_rgb_in_memory_rgba():
    img = Image.new("RGBA", (2, 2), (0, 0, 0, 0))
    assert _pixels(pil_to_rgb(img)).reshape(-1, 3).tolist() == [[255, 255, 255]] * 4


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda p: None, "not found"),
        (lambda p: p.write_bytes(b""), "empty"),
        (lambda p: p.write_text("hello, not an image"), "not an image"),
    ],
    ids=["missing", "zero-size", "not-image"],
)
def test_bad_files_raise_data_error_naming_file(tmp_path, make, reason):
    path = tmp_path / "bad_0001.jpg"
    make(path)
    with pytest.raises(DataError, match=reason) as info:
        load_image(path)
    assert str(path) in str(info.value)


def test_directory_is_not_an_image(tmp_path):
    with pytest.raises(DataError, match="not a file"):
        check_image_file(tmp_path)


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_truncated_file_raises(tmp_path, suffix):
    rng = np.random.default_rng(0)
    full = _save(Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)), tmp_path / f"f{suffix}")
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(DataError) as info:
        load_image(cut)
    assert str(cut) in str(info.value)


def test_max_pixels_cap(tmp_path):
    path = _save(Image.new("RGB", (20, 20)), tmp_path / "a.png")
    with pytest.raises(DataError, match="decompression bomb") as info:
        load_image(path, max_pixels=399)
    assert str(path) in str(info.value)
    assert load_image(path, max_pixels=400).size == (20, 20)


def test_pillow_bomb_error_becomes_data_error(tmp_path, monkeypatch):
    path = _save(Image.new("RGB", (20, 20)), tmp_path / "a.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 400 > 2 * 100: Pillow's hard error
    with pytest.raises(DataError, match="decompression bomb") as info:
        load_image(path)
    assert str(path) in str(info.value)


def test_pillow_bomb_warning_defers_to_max_pixels(tmp_path, monkeypatch, recwarn):
    path = _save(Image.new("RGB", (20, 20)), tmp_path / "a.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300)  # 300 < 400 <= 600: Pillow only warns
    assert load_image(path, max_pixels=1000).size == (20, 20)
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]
    with pytest.raises(DataError):
        load_image(path, max_pixels=300)
