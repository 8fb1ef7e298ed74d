"""read_jsonl validation, split_by_order, write_jsonl and ImageCaptionDataset."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from blip_lora_core.atomic import write_jsonl
from blip_lora_core.errors import ConfigError, DataError
from blip_lora_core.models.images import load_image
from blip_lora_core.train.augment import AugmentConfig, build_augment
from blip_lora_core.train.data import (
    BadLine,
    ImageCaptionDataset,
    Sample,
    read_jsonl,
    sample_to_row,
    scene_group,
    split_by_order,
)


def _image(folder: Path, name: str, colour=(200, 50, 50), size=(24, 16)) -> str:
    (folder / "img").mkdir(exist_ok=True)
    Image.new("RGB", size, colour).save(folder / "img" / name)
    return f"img/{name}"


def _write(path: Path, lines: list[str | bytes]) -> Path:
    path.write_bytes(b"\n".join(x if isinstance(x, bytes) else x.encode() for x in lines) + b"\n")
    return path


def _row(**kw) -> str:
    return json.dumps(kw)


@pytest.fixture
def good_line(tmp_path) -> str:
    return _row(image=_image(tmp_path, "red_0001.png"), text="One red cube")


# --- seed_blocks -----------------------------------------------------------------------------


def test_seed_blocks_loads_and_decodes_as_is(seed_blocks):
    samples, bad = read_jsonl(seed_blocks / "annotations.jsonl")
    assert len(samples) == 1120 and bad == []
    assert samples[0].text == "One blue cube" and samples[0].prompt is None and samples[0].extras == {}
    assert samples[0].image == seed_blocks / "image_train" / "blue_0001.jpg"
    assert samples[0].line == 1 and samples[-1].line == 1120


def test_seed_blocks_split_holds_out_last_frames_of_each_scene(seed_blocks):
    samples, _ = read_jsonl(seed_blocks / "annotations.jsonl", check_images=False)
    train, val = split_by_order(samples, 0.2)
    assert (len(train), len(val)) == (896, 224)
    scenes = {"blue", "green", "red", "wood", "blue_on_green", "green_on_blue", "none"}
    expected = {f"{s}_{n:04d}" for s in scenes for n in range(129, 161)}
    assert {s.image.stem for s in val} == expected
    assert not expected & {s.image.stem for s in train}
    assert [s.line for s in train] == sorted(s.line for s in train)  # file order kept


# --- bad lines -------------------------------------------------------------------------------


BAD_LINES = {
    "non-utf8": (b'{"image": "img/x.png", "text": "caf\xe9"}', "not valid UTF-8"),
    "bad-json": ('{"image": "img/x.png", "text": ', "invalid JSON"),
    "not-object": ('["img/x.png", "text"]', "not a JSON object"),
    "no-image": (_row(text="One red cube"), 'missing "image"'),
    "image-not-string": (_row(image=3, text="One red cube"), '"image" must be a string'),
    "no-text": (_row(image="img/red_0001.png"), 'missing "text"'),
    "text-not-string": (_row(image="img/red_0001.png", text=None), '"text" must be a string'),
    "blank-caption": (_row(image="img/red_0001.png", text="  \t "), '"text" is empty'),
    "prompt-not-string": (_row(image="img/red_0001.png", text="x", prompt=5), '"prompt" must be a string'),
    "lone-surrogate": ('{"image": "img/red_0001.png", "text": "a\\ud800"}', "invalid Unicode"),
    "missing-image": (_row(image="img/nope_0001.png", text="One red cube"), "image not found"),
}


@pytest.mark.parametrize("kind", sorted(BAD_LINES))
def test_each_bad_line_raises_naming_file_and_line(tmp_path, good_line, kind):
    line, reason = BAD_LINES[kind]
    path = _write(tmp_path / "data.jsonl", [good_line, "", line, good_line])
    with pytest.raises(DataError, match=reason) as info:
        read_jsonl(path, check_images=False)
    assert f"{path}:3: " in str(info.value)
    assert "1 bad line" in str(info.value)


def test_frames_still_to_label_may_have_no_caption_only_when_asked(tmp_path, good_line):
    image = json.loads(good_line)["image"]
    lines = [good_line, _row(image=image, text=""), _row(image=image), _row(image=image, text=" ")]
    path = _write(tmp_path / "frames.jsonl", lines)
    with pytest.raises(DataError, match="3 bad line"):
        read_jsonl(path, check_images=False)
    samples, bad = read_jsonl(path, check_images=False, require_text=False)
    assert [s.text for s in samples] == ["One red cube", "", "", ""] and bad == []
    with pytest.raises(DataError, match='"text" must be a string'):
        read_jsonl(_write(tmp_path / "bad.jsonl", [_row(image=image, text=3)]), require_text=False)


@pytest.mark.parametrize("kind", ["zero-size", "corrupt", "truncated"])
def test_bad_image_content_raises_only_when_checked(tmp_path, good_line, kind):
    rng = np.random.default_rng(0)
    full = tmp_path / "img" / "full.jpg"
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(full)
    content = {"zero-size": b"", "corrupt": b"\xff\xd8 garbage", "truncated": full.read_bytes()[:300]}[kind]
    (tmp_path / "img" / "bad_0001.jpg").write_bytes(content)
    path = _write(tmp_path / "data.jsonl", [good_line, _row(image="img/bad_0001.jpg", text="x")])
    with pytest.raises(DataError) as info:
        read_jsonl(path)
    assert f"{path}:2: bad image: " in str(info.value) and "bad_0001.jpg" in str(info.value)
    if kind != "zero-size":  # only an existence check without decoding
        assert len(read_jsonl(path, check_images=False)[0]) == 2


def test_skip_bad_reports_bad_lines_and_keeps_good(tmp_path, good_line):
    lines = [good_line, "{oops", "42", good_line, b"\xff\xfe", _row(image="img/gone.png", text="x")]
    path = _write(tmp_path / "data.jsonl", lines)
    samples, bad = read_jsonl(path, skip_bad=True)
    assert [s.line for s in samples] == [1, 4]
    assert [b.line for b in bad] == [2, 3, 5, 6]
    assert all(isinstance(b, BadLine) and b.source == path for b in bad)
    assert str(bad[0]).startswith(f"{path}:2: invalid JSON")


def test_error_message_shows_first_five_and_count(tmp_path, good_line):
    path = _write(tmp_path / "data.jsonl", [good_line] + ["nope"] * 8)
    with pytest.raises(DataError) as info:
        read_jsonl(path)
    message = str(info.value)
    assert "8 bad line(s)" in message and "and 3 more" in message
    assert f"{path}:6: " in message and f"{path}:7: " not in message


@pytest.mark.parametrize("lines", [[], [""], ["   ", "\t"]], ids=["empty", "blank", "whitespace"])
def test_empty_dataset_is_an_error(tmp_path, lines):
    path = _write(tmp_path / "data.jsonl", lines)
    with pytest.raises(DataError, match="no samples"):
        read_jsonl(path)


def test_all_bad_with_skip_bad_is_still_an_error(tmp_path):
    path = _write(tmp_path / "data.jsonl", ["nope"])
    with pytest.raises(DataError, match=r"no samples \(1 bad line"):
        read_jsonl(path, skip_bad=True)


def test_missing_dataset_file(tmp_path):
    with pytest.raises(DataError, match="cannot read") as info:
        read_jsonl(tmp_path / "absent.jsonl")
    assert "absent.jsonl" in str(info.value)


def test_prompt_extras_bom_crlf_and_absolute_paths(tmp_path):
    rel = _image(tmp_path, "blue_0001.png")
    absolute = str(tmp_path / _image(tmp_path, "blue_0002.png"))
    first = _row(image=rel, text="One blue cube", prompt="a picture of", stamp=12, reviewed=True)
    second = _row(image=absolute, text="One blue cube", prompt="")
    path = tmp_path / "data.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + first.encode() + b"\r\n" + second.encode() + b"\r\n")
    samples, _ = read_jsonl(path)
    assert samples[0].prompt == "a picture of" and samples[0].extras == {"stamp": 12, "reviewed": True}
    assert samples[0].image == tmp_path / rel and samples[1].image == Path(absolute)
    assert samples[1].prompt is None
    # hashable although extras is a dict: equal samples hash alike, whatever their extras dict object
    again = dataclasses.replace(samples[0], extras=dict(samples[0].extras))
    assert again == samples[0] and again.extras is not samples[0].extras and hash(again) == hash(samples[0])
    assert len({samples[0], again, samples[1]}) == 2


# --- split_by_order --------------------------------------------------------------------------


def _samples(stems: list[str]) -> list[Sample]:
    return [Sample(Path(f"/d/{s}.jpg"), s, None, Path("/d/a.jsonl"), i + 1, {}) for i, s in enumerate(stems)]


def test_scene_group():
    assert scene_group("image_train/blue_0001.jpg") == "blue"
    assert scene_group("blue_on_green_0160.jpg") == "blue_on_green"
    assert scene_group("cam-2 frame 17.png") == "cam-2 frame"
    assert scene_group("0007.png") == ""


def test_split_rounding_small_and_interleaved_groups():
    stems = [f"a_{i}" for i in range(1, 11)] + ["solo_1"] + [f"b_{i}" for i in range(1, 4)] + ["a_11"]
    train, val = split_by_order(_samples(stems), 0.25)
    # a: 11 samples -> round(2.75) = 3 held out (the last three in file order); b: 3 -> 1; solo stays.
    assert [s.text for s in val] == ["a_9", "a_10", "b_3", "a_11"]
    assert len(train) == len(stems) - 4 and "solo_1" in [s.text for s in train]
    assert split_by_order(_samples(stems), 0.0) == (_samples(stems), [])


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan"), True])
def test_split_rejects_bad_fraction(bad):
    with pytest.raises(ConfigError, match="val_fraction"):
        split_by_order(_samples(["a_1", "a_2"]), bad)


# --- write_jsonl -----------------------------------------------------------------------------


def test_write_jsonl_round_trip_and_atomic(tmp_path):
    rows = [{"image": _image(tmp_path, "red_0001.png"), "text": "Un cube rouge é", "topic": "t"}]
    path = tmp_path / "out.jsonl"
    path.write_text("old\n")
    os.chmod(path, 0o640)
    write_jsonl(path, rows)
    assert path.read_text(encoding="utf-8") == json.dumps(rows[0], ensure_ascii=False) + "\n"
    assert path.stat().st_mode & 0o777 == 0o640
    samples, _ = read_jsonl(path)
    assert sample_to_row(samples[0], tmp_path) == rows[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img", "out.jsonl"]  # no temp file left


def test_write_jsonl_failure_keeps_old_file(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text("old\n")
    with pytest.raises(TypeError):
        write_jsonl(path, [{"ok": 1}, {"bad": object()}])
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]


# --- ImageCaptionDataset ---------------------------------------------------------------------


@pytest.fixture
def dataset_samples(tmp_path) -> list[Sample]:
    rng = np.random.default_rng(1)
    lines = []
    for i in range(1, 4):
        (tmp_path / "img").mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(tmp_path / f"img/c_{i}.png")
        lines.append(_row(image=f"img/c_{i}.png", text=f"caption {i}", prompt="a picture of" if i == 2 else None))
    return read_jsonl(_write(tmp_path / "d.jsonl", lines))[0]


def test_dataset_items(dataset_samples, to_tensor):
    ds = ImageCaptionDataset(dataset_samples, to_tensor)
    item = ds[1]
    assert len(ds) == 3
    assert item["pixel_values"].shape == (3, 16, 16) and item["pixel_values"].dtype == torch.float32
    assert (item["text"], item["prompt"], item["index"]) == ("caption 2", "a picture of", 1)
    assert ds[-1]["index"] == 2
    with pytest.raises(IndexError):
        ds[3]


def test_dataset_augmentation_is_deterministic_per_seed_epoch_index(dataset_samples, to_tensor):
    augment = build_augment(AugmentConfig(random_resized_crop=0.3, colour_jitter=0.4, rotation_degrees=10))

    def pixels(seed: int, epoch: int, index: int) -> torch.Tensor:
        return ImageCaptionDataset(dataset_samples, to_tensor, augment, seed=seed)[epoch, index]["pixel_values"]

    assert torch.equal(pixels(0, 1, 0), pixels(0, 1, 0))
    assert not torch.equal(pixels(0, 1, 0), pixels(0, 2, 0))
    assert not torch.equal(pixels(0, 1, 0), pixels(1, 1, 0))
    # Reading items in a different order, epochs interleaved (as other workers would), changes nothing.
    ds = ImageCaptionDataset(dataset_samples, to_tensor, augment, seed=0)
    keys = [(1, 2), (2, 0), (1, 1), (1, 0)]
    read = {key: ds[key]["pixel_values"] for key in keys}
    assert all(torch.equal(read[epoch, i], pixels(0, epoch, i)) for epoch, i in keys)
    # A plain int is epoch 0; the generator is the one rng_for gives.
    assert torch.equal(ds[1]["pixel_values"], pixels(0, 0, 1))
    by_hand = to_tensor(augment(load_image(dataset_samples[1].image), ds.rng_for(0, 1)))
    assert torch.equal(ds[1]["pixel_values"], by_hand)


def test_dataset_keys(dataset_samples, to_tensor):
    ds = ImageCaptionDataset(dataset_samples, to_tensor)
    assert torch.equal(ds[0]["pixel_values"], ds[5, 0]["pixel_values"])  # no augment: the epoch changes nothing
    assert ds[3, -1]["index"] == 2 and ds[np.int64(1)]["index"] == 1
    with pytest.raises(IndexError, match="epoch"):
        ds[-1, 0]
    with pytest.raises(IndexError):
        ds[0, 3]
    assert not hasattr(ds, "set_epoch")


def test_split_of_unique_file_names_holds_out_the_tail(tmp_path):
    from blip_lora_core.train.data import Sample, split_by_order

    samples = [Sample(tmp_path / f"{i:04d}_{c}.png", c, None, tmp_path, i + 1) for i, c in enumerate("abcdefghij")]
    train, val = split_by_order(samples, 0.2)
    assert [s.text for s in val] == ["i", "j"] and len(train) == 8


def test_image_paths_come_back_as_the_jsonl_wrote_them(tmp_path):
    from PIL import Image

    project = tmp_path / "proj"
    project.mkdir()
    for name in ("x.png", "proj/y.png"):
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    absolute = str(tmp_path / "x.png")
    jsonl = project / "data.jsonl"
    jsonl.write_text("".join(json.dumps({"image": image, "text": "One red cube"}) + "\n"
                             for image in ("../x.png", "y.png", absolute)))
    samples, _ = read_jsonl(jsonl)
    assert [s.image_as_written for s in samples] == ["../x.png", "y.png", absolute]
    assert samples[0].image == project / "../x.png"
