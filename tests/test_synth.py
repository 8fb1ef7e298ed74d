"""Synthetic cube scenes: captions, rendering, dataset files and the `synth` command."""

from __future__ import annotations

import errno
import functools
import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from blip_lora_core.errors import BlipLoraError, ConfigError, DataError
from blip_lora_training import synth
from blip_lora_training.synth import COLOURS, DOMAINS, Scene, all_scenes, caption_for, render, write_dataset

SMALL = (64, 48)


def _chromaticity(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) colours to (..., 3) r, g, b fractions of their sum."""
    rgb = np.asarray(rgb, np.float64)
    return rgb / np.maximum(rgb.sum(-1, keepdims=True), 1.0)


def _reduced(image: Image.Image) -> np.ndarray:
    """(N, 3) pixels of the 4x-reduced image (averaging takes out most sensor noise), without near-black ones."""
    pixels = np.asarray(image.reduce(4), np.float64).reshape(-1, 3)
    return pixels[pixels.sum(-1) > 40]


def _hue_bins(pixels: np.ndarray) -> np.ndarray:
    """(N, 2) integer (r, g) chromaticity bins of width 0.02."""
    return np.floor(_chromaticity(pixels)[:, :2] / 0.02).astype(int)


@functools.cache
def _background_hues(domain: str) -> frozenset[tuple[int, int]]:
    """Hue bins seen on eight empty tables of `domain` (table, wall, shadows), widened by one bin."""
    seen = {tuple(b) for s in range(8) for b in _hue_bins(_reduced(render(Scene(()), _rng(1000 + s), domain)))}
    return frozenset((r + dr, g + dg) for r, g in seen for dr in (-1, 0, 1) for dg in (-1, 0, 1))


def _colour_votes(image: Image.Image, domain: str) -> Counter:
    """Count the pixels whose hue is never seen on an empty table of `domain`, by nearest cube colour
    under the domain's light."""
    pixels = _reduced(image)
    background = _background_hues(domain)
    odd = np.array([tuple(b) not in background for b in _hue_bins(pixels)], bool)
    palette = _chromaticity(np.array([COLOURS[n] for n in COLOURS]) * DOMAINS[domain].light_rgb)
    nearest = np.abs(_chromaticity(pixels[odd])[:, None] - palette[None]).sum(-1).argmin(1)
    return Counter(list(COLOURS)[i] for i in nearest)


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _all_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- scenes and captions


@pytest.mark.parametrize(
    ("cubes", "caption"),
    [
        ((), "No cube is visible in the image"),
        (("red",), "One red cube"),
        (("wood",), "One wood cube"),
        (("blue", "green"), "A blue cube on top of a green cube"),
        (("red", "blue", "green"), "A red cube on top of a blue cube on top of a green cube"),
    ],
)
def test_caption_for_each_scene_kind(cubes, caption):
    assert caption_for(Scene(cubes)) == caption


def test_unknown_colour_and_domain_are_config_errors():
    with pytest.raises(ConfigError):
        Scene(("pink",))
    with pytest.raises(ConfigError):
        render(Scene(()), np.random.default_rng(0), domain="moon")
    with pytest.raises(ConfigError):
        all_scenes(["red", "pink"])


def test_all_scenes_counts_ordered_stacks_of_distinct_colours():
    scenes = all_scenes(["red", "green", "blue"], max_stack=3)
    assert len(scenes) == 1 + 3 + 6 + 6
    assert len(set(scenes)) == len(scenes)
    assert Scene(("blue", "green")) in scenes and Scene(("green", "blue")) in scenes
    assert all(len(set(s.cubes)) == len(s.cubes) for s in scenes)
    assert all_scenes(["red"], max_stack=0) == [Scene(())]


# ---------------------------------------------------------------- rendering


@settings(max_examples=12, deadline=None)
@given(
    scene=st.sampled_from(all_scenes(list(COLOURS), max_stack=3)),
    seed=st.integers(0, 2**32 - 1),
    domain=st.sampled_from(sorted(DOMAINS)),
)
def test_render_is_rgb_of_the_size_asked_and_seeded(scene, seed, domain):
    first = render(scene, np.random.default_rng(seed), domain, size=(50, 40))
    again = render(scene, np.random.default_rng(seed), domain, size=(50, 40))
    assert first.mode == "RGB" and first.size == (50, 40)
    assert first.tobytes() == again.tobytes()


def _bright_votes(image: Image.Image, domain: str) -> Counter:
    """Count the pixels brighter than 1.5x the image's median brightness, by nearest cube colour."""
    pixels = _reduced(image)
    brightness = pixels.sum(-1)
    bright = pixels[brightness > 1.5 * np.median(brightness)]
    palette = _chromaticity(np.array([COLOURS[n] for n in COLOURS]) * DOMAINS[domain].light_rgb)
    nearest = np.abs(_chromaticity(bright)[:, None] - palette[None]).sum(-1).argmin(1)
    return Counter(list(COLOURS)[i] for i in nearest)


# a light wood cube on the shifted domain's dark wooden table has the table's hue: it is checked by brightness below
HUE_CASES = [(c, d) for d in sorted(DOMAINS) for c in ["red", "green", "blue", "wood", "yellow"]
             if (c, d) != ("wood", "shifted")]


@pytest.mark.parametrize(("colour", "domain"), HUE_CASES)
def test_single_cube_shows_its_colour(colour, domain):
    """The commonest non-background hue in a one-cube render is the cube's colour (under the domain's light)."""
    hits = 0
    for seed in range(4):
        votes = _colour_votes(render(Scene((colour,)), np.random.default_rng(seed), domain), domain)
        assert votes, "the cube should cover some pixels"
        hits += votes.most_common(1)[0][0] == colour
    assert hits >= 3


def test_wood_cube_on_the_wooden_table_shows_by_its_brightness():
    """The pixels much brighter than the rest are the wood cube's (wood-hued); an empty wooden table has none."""
    for seed in range(4):
        votes = _bright_votes(render(Scene(("wood",)), _rng(seed), "shifted"), "shifted")
        assert sum(votes.values()) >= 5 and votes.most_common(1)[0][0] == "wood", votes
        assert not _bright_votes(render(Scene(()), _rng(seed), "shifted"), "shifted")


def test_top_cube_is_drawn_above_the_bottom_cube():
    for seed in range(4):
        image = np.asarray(render(Scene(("red", "blue")), np.random.default_rng(seed)), np.float64)
        chroma = _chromaticity(image)
        red_rows = np.nonzero((chroma[..., 0] > 0.55) & (image.sum(-1) > 90))[0]
        blue_rows = np.nonzero((chroma[..., 2] > 0.45) & (image.sum(-1) > 90))[0]
        assert red_rows.size > 30 and blue_rows.size > 30
        assert red_rows.mean() < blue_rows.mean()


@pytest.mark.parametrize("domain", sorted(DOMAINS))
def test_empty_table_has_no_coloured_object(domain):
    for seed in range(4):
        assert sum(_colour_votes(render(Scene(()), _rng(seed), domain), domain).values()) < 5


def test_shifted_domain_looks_different_from_table():
    scenes = [Scene(()), Scene(("red",)), Scene(("blue", "green"))]
    table = [np.asarray(render(s, np.random.default_rng(i), "table"), np.float64)
             for i, s in enumerate(scenes * 3)]
    shifted = [np.asarray(render(s, np.random.default_rng(i), "shifted"), np.float64)
               for i, s in enumerate(scenes * 3)]
    assert np.mean(table) - np.mean(shifted) > 60
    table_bg = np.median([np.median(a.reshape(-1, 3), 0) for a in table], 0)
    shifted_bg = np.median([np.median(a.reshape(-1, 3), 0) for a in shifted], 0)
    assert np.linalg.norm(table_bg - shifted_bg) > 100
    # and a render varies within a domain
    assert max(abs(a.mean() - table[0].mean()) for a in table) > 3


# ---------------------------------------------------------------- datasets


def test_dataset_jsonl_lines_point_at_existing_images(tmp_path):
    jsonl = write_dataset(tmp_path / "ds", 12, seed=3, size=SMALL)
    assert jsonl == tmp_path / "ds" / "annotations.jsonl"
    lines = _read_jsonl(jsonl)
    assert len(lines) == 12
    for line in lines:
        assert set(line) == {"image", "text"}
        assert not Path(line["image"]).is_absolute()
        with Image.open(jsonl.parent / line["image"]) as image:
            assert image.mode == "RGB" and image.size == SMALL


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        write_dataset(tmp_path / name, 10, seed=seed, size=SMALL)
    a, b, c = (_all_bytes(tmp_path / name) for name in "abc")
    assert a == b
    assert a["annotations.jsonl"] != c["annotations.jsonl"]
    images_a = {v for k, v in a.items() if k.startswith("images/")}
    images_c = {v for k, v in c.items() if k.startswith("images/")}
    assert not images_a & images_c


def test_every_scene_appears_and_classes_are_balanced(tmp_path):
    colours = ["red", "green", "blue"]
    scenes = all_scenes(colours, max_stack=2)
    n = 3 * len(scenes) + 4
    lines = _read_jsonl(write_dataset(tmp_path / "ds", n, seed=1, colours=colours, size=(32, 24)))
    counts = Counter(line["text"] for line in lines)
    assert set(counts) == {caption_for(s) for s in scenes}
    assert set(counts.values()) <= {3, 4}


def test_holdout_pairs_split_train_and_test(tmp_path):
    colours, held = ["red", "green", "blue"], [("red", "blue")]
    needle = "red cube on top of a blue cube"
    train = _read_jsonl(write_dataset(tmp_path / "train", 40, seed=0, colours=colours, max_stack=3,
                                      holdout_pairs=held, size=(32, 24)))
    test = _read_jsonl(write_dataset(tmp_path / "test", 40, seed=1, colours=colours, max_stack=3,
                                     holdout_pairs=held, only_pairs=True, size=(32, 24)))
    assert not any(needle in line["text"] for line in train)
    assert all(needle in line["text"] for line in test)
    expected = {caption_for(s) for s in all_scenes(colours, 3) if ("red", "blue") in s.pairs()}
    assert {line["text"] for line in test} == expected == {
        "A red cube on top of a blue cube",
        "A red cube on top of a blue cube on top of a green cube",
        "A green cube on top of a red cube on top of a blue cube",
    }
    assert "A blue cube on top of a red cube" in {line["text"] for line in train}
    with pytest.raises(ConfigError):
        write_dataset(tmp_path / "bad", 4, seed=0, only_pairs=True)


def test_write_is_atomic_and_refuses_foreign_folders(tmp_path, monkeypatch):
    out = tmp_path / "ds"
    write_dataset(out, 4, seed=0, size=(32, 24))
    write_dataset(out, 3, seed=1, size=(32, 24))  # an earlier synthetic dataset is replaced
    assert len(_read_jsonl(out / "annotations.jsonl")) == 3 and len(list((out / "images").iterdir())) == 3

    calls = []

    def failing_render(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("disk full")
        return Image.new("RGB", (32, 24))

    monkeypatch.setattr(synth, "render", failing_render)
    with pytest.raises(RuntimeError):
        write_dataset(tmp_path / "new", 5, seed=0, size=(32, 24))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # no half-written dataset, no temp folder

    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(DataError):
        write_dataset(foreign, 2, seed=0)
    assert (foreign / "holiday.jpg").read_bytes() == b"x"


def _files(folder: Path) -> dict[Path, bytes]:
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_a_failed_swap_keeps_the_previous_dataset(tmp_path, monkeypatch):
    """The rename of the new dataset into place fails: the dataset from before is back in place, whole."""
    out = tmp_path / "ds"
    write_dataset(out, 4, seed=0, size=(32, 24))
    before = _files(out)
    failed = []

    def fails_once_into_place(real):
        def move(src, dst, *args, **kwargs):
            if Path(dst) == out and not failed:
                failed.append(src)
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(src, dst, *args, **kwargs)
        return move

    monkeypatch.setattr(os, "replace", fails_once_into_place(os.replace))
    monkeypatch.setattr(os, "rename", fails_once_into_place(os.rename))
    with pytest.raises((OSError, BlipLoraError)):
        write_dataset(out, 3, seed=1, size=(32, 24))
    assert failed and _files(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # no staging or set-aside folder left


def test_every_file_is_synced_before_the_dataset_is_renamed_into_place(tmp_path, monkeypatch):
    out, synced, at_rename = tmp_path / "ds", [], []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        synced.append(Path(os.readlink(f"/proc/self/fd/{fd}")).name)
        return real_fsync(fd)

    def replace(src, dst, *args, **kwargs):
        if Path(dst) == out:
            at_rename.extend(synced)
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    write_dataset(out, 3, seed=1, size=(32, 24))
    files = {p.name for p in out.rglob("*") if p.is_file()}
    assert len(files) == 5 and files <= set(at_rename)  # 3 images, annotations.jsonl, synth.json


# ---------------------------------------------------------------- command line


def test_cli_writes_a_dataset(tmp_path, capsys):
    from blip_lora_training.cli import main

    out = tmp_path / "cli"
    code = main(["synth", "--out", str(out), "-n", "9", "--seed", "2", "--domain", "shifted",
                 "--colours", "red,blue", "--max-stack", "2", "--size", "40x30", "--holdout", "red/blue"])
    assert code == 0
    assert "wrote 9 images" in capsys.readouterr().out
    lines = _read_jsonl(out / "annotations.jsonl")
    assert len(lines) == 9
    assert {line["text"] for line in lines} == {
        "No cube is visible in the image", "One red cube", "One blue cube", "A blue cube on top of a red cube"}
    with Image.open(out / lines[0]["image"]) as image:
        assert image.size == (40, 30)


def test_cli_rejects_a_bad_holdout_pair(tmp_path, capsys):
    from blip_lora_training.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["synth", "--out", str(tmp_path / "x"), "--holdout", "red-blue"])
    assert exit_.value.code == 2
    assert ("blip-lora synth: error: argument --holdout: holdout pairs look like red/blue (top/bottom), "
            "got 'red-blue'") in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
