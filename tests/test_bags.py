"""ROS 2 bags without ROS: reading camera topics, `bag extract`, `bag caption`, and every error case."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from bag_fixtures import (
    Frame,
    bag_cli,
    camera_frames,
    extract,
    read,
    read_topic,
    replay,
    seed_frames,
    storage_file,
    string_msg,
    undecodable_msg,
    write_bag,
)
from PIL import Image

from blip_lora_core.bags.extract import ExtractOptions
from blip_lora_core.bags.storage import resolve_bag
from blip_lora_core.errors import BagError, ConfigError, DataError
from blip_lora_core.runtime.image_msgs import decode_message

RAW = "/camera/image_raw"
PNG = "/camera/png/compressed"
JPEG = "/camera/image_raw/compressed"
START = 1_700_000_000 * 10**9
RAW_KINDS = ("rgb8", "bgr8", "rgb8_pad", "bgr8_pad")


@pytest.fixture()
def images(seed_blocks) -> list[np.ndarray]:
    """21 photos (first 3 frames of each of the 7 seed_blocks scenes) at 96x54."""
    return seed_frames(seed_blocks)


def _mixed_bag(path: Path, images: list[np.ndarray], storage: str) -> Path:
    """Raw frames on RAW, png on PNG, jpeg on JPEG, and a String topic /status."""
    frames = (camera_frames(images, RAW_KINDS, RAW) + camera_frames(images, ["png"], PNG)
              + camera_frames(images, ["jpeg"], JPEG) + [Frame("/status", string_msg("ok"), START)])
    return write_bag(path, sorted(frames, key=lambda f: f.time_ns), storage)


@pytest.fixture(scope="session")
def _bags(tmp_path_factory) -> tuple[dict[str, Path], Path]:
    """Mixed bags built once per session (tests only read them): storage -> bag folder."""
    return {}, tmp_path_factory.mktemp("bags")


def _cached_bag(bags: tuple[dict[str, Path], Path], images: list[np.ndarray], storage: str) -> Path:
    cache, folder = bags
    if storage not in cache:
        cache[storage] = _mixed_bag(folder / f"bag_{storage}", images, storage)
    return cache[storage]


@pytest.fixture(params=["sqlite3", "mcap"])
def bag(request, images, _bags) -> Path:
    return _cached_bag(_bags, images, request.param)


@pytest.fixture()
def mcap_bag(images, _bags) -> Path:
    """The mixed bag in mcap only, for the slower tests that run the model."""
    return _cached_bag(_bags, images, "mcap")


def _rows(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "annotations.jsonl").read_text().splitlines()]


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


# ---- reading --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("topic", [RAW, PNG])
@pytest.mark.parametrize("as_file", [False, True])
def test_lossless_frames_decode_to_the_source_pixels(bag, images, topic, as_file):
    source = storage_file(bag) if as_file else bag
    messages = read(source, topic)
    assert [m.index for m in messages] == list(range(len(images)))
    for message, expected in zip(messages, images, strict=True):
        np.testing.assert_array_equal(decode_message(message.msg), expected)
        assert message.stamp_source == "header" and message.time_ns == message.stamp_ns + 3_000_000


def test_bare_folder_without_metadata_reads_its_storage_file(bag, tmp_path, images):
    bare = tmp_path / "cut_short"
    bare.mkdir()
    shutil.copy(storage_file(bag), bare)
    assert resolve_bag(bare) == bare
    assert len(read(bare, RAW)) == len(images)


# ---- extract --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("as_file", [False, True])
def test_extract_round_trip_image_by_image(bag, images, tmp_path, as_file):
    source = storage_file(bag) if as_file else bag
    assert bag_cli("extract", source, "--topic", RAW, "--out", tmp_path / "ds") == 0
    rows = _rows(tmp_path / "ds")
    assert len(rows) == len(images)
    for i, (row, expected) in enumerate(zip(rows, images, strict=True)):
        stamp = START + i * 100_000_000
        assert row["image"] == f"images/frame_{stamp // 10**9}_{stamp % 10**9:09d}.jpg"
        assert row["text"] == "" and row["reviewed"] is False and row["index"] == i
        assert row["ros_stamp"] == {"sec": stamp // 10**9, "nanosec": stamp % 10**9}
        assert row["stamp"] == pytest.approx(stamp / 1e9) and row["stamp_source"] == "header"
        assert row["topic"] == RAW and row["bag"] == str(Path(source).absolute())
        written = np.asarray(Image.open(tmp_path / "ds" / row["image"]), dtype=np.float32)
        assert np.abs(written - expected).mean() < 3
    assert sorted(p.name for p in (tmp_path / "ds").iterdir()) == ["annotations.jsonl", "images"]
    assert _leftovers(tmp_path) == []


def test_extract_from_jpeg_topic(bag, images, tmp_path):
    assert bag_cli("extract", bag, "--topic", JPEG, "--out", tmp_path / "ds") == 0
    rows = _rows(tmp_path / "ds")
    for row, expected in zip(rows, images, strict=True):
        written = np.asarray(Image.open(tmp_path / "ds" / row["image"]), dtype=np.float32)
        assert np.abs(written - expected).mean() < 4  # compressed twice
    assert len(rows) == len(images)


def test_every_keeps_one_frame_per_interval(bag, tmp_path):
    assert bag_cli("extract", bag, "--topic", PNG, "--every", "0.25", "--out", tmp_path / "ds") == 0
    stamps = [r["ros_stamp"]["sec"] * 10**9 + r["ros_stamp"]["nanosec"] - START for r in _rows(tmp_path / "ds")]
    assert stamps == [i * 300_000_000 for i in range(7)]  # frames every 0.1 s: 0.0, 0.3, 0.6, ... 1.8


def test_every_falls_back_to_receive_time(tmp_path, images):
    bag = write_bag(tmp_path / "b", camera_frames(images[:10], ["rgb8"], RAW, stamped=False), "mcap")
    report = extract(bag, tmp_path / "ds", ExtractOptions(RAW, every=0.45))
    rows = _rows(tmp_path / "ds")
    assert report.kept == 2 and report.skipped_every == 8
    assert [r["stamp_source"] for r in rows] == ["receive", "receive"]
    assert [r["bag_time_ns"] - START for r in rows] == [3_000_000, 503_000_000]
    assert rows[0]["image"] == "images/frame_1700000000_003000000.jpg"


def test_dedup_skips_near_duplicates(tmp_path, images):
    rng = np.random.default_rng(0)
    repeated = []
    for image in images[:6]:  # each photo three times, the copies with +-1 noise
        repeated += [image] + [np.clip(image.astype(int) + rng.integers(-1, 2, image.shape), 0, 255)
                               .astype(np.uint8) for _ in range(2)]
    bag = write_bag(tmp_path / "b", camera_frames(repeated, ["png"], RAW), "sqlite3")
    report = extract(bag, tmp_path / "ds", ExtractOptions(RAW, dedup_threshold=2.0))
    assert report.kept == 6 and report.skipped_duplicate == 12
    assert [r["index"] for r in _rows(tmp_path / "ds")] == [0, 3, 6, 9, 12, 15]


def test_extract_twice_with_force_is_identical(bag, tmp_path):
    out = tmp_path / "ds"
    assert bag_cli("extract", bag, "--topic", RAW, "--every", "0.2", "--out", out) == 0
    first = {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    assert bag_cli("extract", bag, "--topic", RAW, "--every", "0.2", "--out", out, "--force") == 0
    second = {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    assert first == second and len(first) == 12
    assert _leftovers(tmp_path) == []


def test_extract_refuses_to_overwrite(bag, tmp_path, capsys):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert bag_cli("extract", bag, "--topic", RAW, "--out", out) == 2
    assert "--force" in capsys.readouterr().err
    assert bag_cli("extract", bag, "--topic", RAW, "--out", out, "--force") == 2  # not a dataset folder
    assert "does not look like a dataset folder" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert bag_cli("extract", bag, "--topic", RAW, "--out", empty) == 0


def test_unlabelled_rows_are_refused_by_the_dataset_reader(bag, tmp_path):
    from blip_lora_core.train.data import read_jsonl

    extract(bag, tmp_path / "ds", ExtractOptions(RAW, every=1.0))
    with pytest.raises(DataError, match="text"):
        read_jsonl(tmp_path / "ds" / "annotations.jsonl")


def test_precaption_fills_text_and_marks_unreviewed(mcap_bag, images, tmp_path, tiny_model_dir):
    from blip_lora_core.models.captioning import Captioner
    from blip_lora_core.train.data import read_jsonl

    out = tmp_path / "ds"
    assert bag_cli("extract", mcap_bag, "--topic", RAW, "--every", "0.7", "--out", out, "--precaption",
                "--model", tiny_model_dir, "--batch-size", "2", "--max-new-tokens", "3") == 0
    rows = _rows(out)
    assert len(rows) == 3 and all(r["reviewed"] is False for r in rows)
    assert all(isinstance(r["text"], str) and r["text"] for r in rows)
    assert rows[0]["precaption"] == {"model": str(tiny_model_dir), "adapter": None, "prompt": None}
    captioner = Captioner.from_pretrained(str(tiny_model_dir), device="cpu", max_new_tokens=3)
    assert [r["text"] for r in rows] == captioner.caption([images[r["index"]] for r in rows])
    samples, bad = read_jsonl(out / "annotations.jsonl")
    assert not bad and [s.extras["reviewed"] for s in samples] == [False] * 3


# ---- errors ---------------------------------------------------------------------------------------------


def test_missing_topic_lists_the_topics_present(bag, tmp_path, capsys):
    assert bag_cli("extract", bag, "--topic", "/nope", "--out", tmp_path / "ds") == 2
    err = capsys.readouterr().err
    assert "/nope not found" in err and f"{RAW} (sensor_msgs/msg/Image)" in err
    assert "/status (std_msgs/msg/String)" in err and not (tmp_path / "ds").exists()


def test_unsupported_message_type_is_named(bag, tmp_path):
    with pytest.raises(BagError, match="std_msgs/msg/String"):
        extract(bag, tmp_path / "ds", ExtractOptions("/status"))
    assert not (tmp_path / "ds").exists() and _leftovers(tmp_path) == []


def _cut_in_half(bag: Path, tmp_path: Path) -> Path:
    data = storage_file(bag).read_bytes()
    broken = tmp_path / f"half{storage_file(bag).suffix}"
    broken.write_bytes(data[: len(data) // 2])
    return broken


def test_a_db3_cut_in_half_names_the_file_and_leaves_no_output(images, _bags, tmp_path):
    broken = _cut_in_half(_cached_bag(_bags, images, "sqlite3"), tmp_path)
    with pytest.raises(BagError, match=str(broken)):
        extract(broken, tmp_path / "ds", ExtractOptions(RAW, strict=True))
    assert not (tmp_path / "ds").exists() and _leftovers(tmp_path) == []


def test_an_mcap_cut_in_half_reads_the_messages_before_the_cut(images, _bags, tmp_path, caplog):
    """As a killed recorder leaves it: no summary, no footer (tests/test_bag_recorders.py has the real one)."""
    broken = _cut_in_half(_cached_bag(_bags, images, "mcap"), tmp_path)
    frames = [decode_message(m.msg) for m in read(broken, RAW)]
    assert 0 < len(frames) < len(images)
    for frame, expected in zip(frames, images, strict=False):
        np.testing.assert_array_equal(frame, expected)
    assert f"{broken}: the recorder did not close this file (no mcap summary at its end); read " in caplog.text


@pytest.mark.parametrize("damage", ["flip", "flip_middle", "garbage"])
def test_corrupt_files_name_the_file_and_leave_no_output(bag, tmp_path, damage):
    data = bytearray(storage_file(bag).read_bytes())
    if damage == "flip":
        for i in range(0, len(data), 97):  # flip bytes across the whole file
            data[i] ^= 0xFF
    elif damage == "flip_middle":  # the header survives, the records and index between do not
        for i in range(len(data) // 4, len(data) // 2):
            data[i] ^= 0x5A
    else:
        data = bytearray(b"not a bag " * 100)
    broken = tmp_path / f"broken{storage_file(bag).suffix}"
    broken.write_bytes(bytes(data))
    out = tmp_path / "ds"
    with pytest.raises(BagError, match=str(broken)):
        extract(broken, out, ExtractOptions(RAW, strict=True))
    assert not out.exists() and _leftovers(tmp_path) == []


def _damaged(clean: bytes, kind: str, rng: np.random.Generator) -> bytes:
    """A copy of ``clean`` with a seeded run of flipped bytes anywhere ("flip") or in its first 256 bytes, where
    the file's structure is ("head"), or cut at a seeded length ("cut")."""
    data = bytearray(clean)
    if kind == "cut":
        return bytes(data[: int(rng.integers(64, len(data)))])
    start = int(rng.integers(0, (256 if kind == "head" else len(data)) - 64))
    for i in range(start, start + int(rng.integers(1, 64))):
        data[i] ^= int(rng.integers(1, 256))
    return bytes(data)


# (storage) -> how many of the 12 damaged copies extract and how many raise BagError, with seed 1
_DAMAGE_OUTCOMES = {"sqlite3": {"extracted": 6, "BagError": 6}, "mcap": {"extracted": 7, "BagError": 5}}


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_damaged_bags_extract_or_raise_only_bag_errors(tmp_path, images, storage):
    """Seeded damage, four copies of each kind: extract succeeds (with at most the 8 frames, in order, each
    written) or raises BagError naming the file and leaving no output; never anything else. Both outcomes
    occur, as many times as pinned: a change in what is detected shows here."""
    bag = write_bag(tmp_path / "b", camera_frames(images[:8], ["rgb8", "png"], RAW), storage)
    clean = storage_file(bag).read_bytes()
    rng = np.random.default_rng(1)
    outcomes: dict[str, int] = {"extracted": 0, "BagError": 0}
    for trial, kind in enumerate(["flip", "head", "cut"] * 4):
        broken = tmp_path / f"t{trial}{storage_file(bag).suffix}"
        broken.write_bytes(_damaged(clean, kind, rng))
        out = tmp_path / f"out{trial}"
        try:
            report = extract(broken, out, ExtractOptions(RAW))
        except BagError as exc:
            outcomes["BagError"] += 1
            assert str(broken) in str(exc) and not out.exists()
            continue
        outcomes["extracted"] += 1
        rows = _rows(out)
        assert 0 < report.kept == len(rows) <= 8 and [r["index"] for r in rows] == sorted({r["index"] for r in rows})
        assert all((out / r["image"]).is_file() for r in rows)
    assert outcomes == _DAMAGE_OUTCOMES[storage]


def test_not_a_bag(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(BagError, match="not a ROS 2 bag"):
        resolve_bag(tmp_path / "notes.txt")
    with pytest.raises(BagError, match="no such bag"):
        resolve_bag(tmp_path / "missing.mcap")


def _bag_with_bad_frame(tmp_path: Path, images: list[np.ndarray]) -> Path:
    frames = camera_frames(images[:4], ["rgb8"], RAW)
    frames.insert(2, Frame(RAW, undecodable_msg(START + 150_000_000), START + 150_000_000))
    return write_bag(tmp_path / "b", frames, "mcap")


def test_bad_frame_is_skipped_and_counted(tmp_path, images, caplog):
    bag = _bag_with_bad_frame(tmp_path, images)
    report = extract(bag, tmp_path / "ds", ExtractOptions(RAW))
    assert report.kept == 4 and report.bad_frames == 1
    assert [r["index"] for r in _rows(tmp_path / "ds")] == [0, 1, 3, 4]
    assert "yuv444" in caplog.text and f"message 2 on {RAW}" in caplog.text


def test_bad_frame_fails_when_strict(tmp_path, images, capsys):
    bag = _bag_with_bad_frame(tmp_path, images)
    assert bag_cli("extract", bag, "--topic", RAW, "--out", tmp_path / "ds", "--strict") == 2
    err = capsys.readouterr().err
    assert "yuv444" in err and f"message 2 on {RAW}" in err and "unsupported encoding" in err
    assert not (tmp_path / "ds").exists() and _leftovers(tmp_path) == []


def test_bad_options():
    with pytest.raises(ConfigError):
        ExtractOptions(RAW, every=-1)
    with pytest.raises(ConfigError):
        ExtractOptions(RAW, dedup_threshold=300)


def test_fixture_bags_hold_what_was_written(bag, images):
    assert len(read_topic(bag, "/status")) == 1 and len(read_topic(bag, JPEG)) == len(images)


# ---- caption --------------------------------------------------------------------------------------------


def test_caption_to_jsonl_with_the_model(mcap_bag, images, tmp_path, tiny_model_dir, capsys):
    from blip_lora_core.models.captioning import Captioner

    out = tmp_path / "captions.jsonl"
    args = ["caption", mcap_bag, "--topic", RAW, "--model", tiny_model_dir, "--max-new-tokens", "3",
            "--max-rate-hz", "1", "--out", out]
    assert bag_cli(*args) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    captioner = Captioner.from_pretrained(str(tiny_model_dir), device="cpu", max_new_tokens=3)
    assert [r["caption"] for r in rows] == captioner.caption(images[::10])
    assert [r["image_stamp"] for r in rows] == pytest.approx([(START + i * 10**9) / 1e9 for i in range(3)])
    assert [r["stamp"] for r in rows] == pytest.approx([r["image_stamp"] + 0.003 for r in rows])
    assert bag_cli(*args) == 2 and "--force" in capsys.readouterr().err  # refused before loading the model


@pytest.mark.parametrize("rate, times", [(2.0, [0, 500, 1000, 1500, 2000]), (0.7, [0, 1428.571429, 2857.142858])])
def test_rate_limit_applies_in_bag_time(bag, rate, times):
    """Frames every 100 ms for 2 s. At 0.7 Hz the last frame still waits for the limit when the bag ends: it
    is captioned when the limit allows, after the bag's end (it used to vanish from every count)."""
    captions, report = replay(bag, RAW, max_rate_hz=rate)
    assert report.messages == 21 and report.captions == len(times)
    offsets = [(c.time_ns - START - 3 * 10**6) / 1e6 for c in captions]
    assert offsets == pytest.approx(times, abs=1e-5)
    # the newest frame at each publish time: the one received at or just before it (the last one after the end)
    assert [c.image_stamp for c in captions] == pytest.approx([START / 1e9 + min(t // 100, 20) / 10 for t in times])
    assert report.dropped == 21 - len(times) and report.unchanged == 0


@pytest.mark.parametrize("out_name, storage", [("captions.mcap", "mcap"), ("captions.db3", "sqlite3"),
                                               ("caption_bag", "mcap"), ("caption_bag", "sqlite3")])
def test_caption_to_a_bag(bag, tmp_path, out_name, storage):
    from blip_lora_core.bags.caption import write_captions

    captions, _ = replay(bag, RAW, max_rate_hz=3.0)  # 7 captions: the 7th 2 ns after the last frame
    out = tmp_path / out_name
    write_captions(out, captions, source=bag, storage=storage)
    if out.is_dir():
        assert storage_file(out).suffix == {"mcap": ".mcap", "sqlite3": ".db3"}[storage]
    messages = read_topic(out, "/caption")
    assert [m.data for _, m in messages] == [c.caption for c in captions] and len(messages) == 7
    times = [t for t, _ in messages]
    assert times == [c.time_ns for c in captions] and times == sorted(set(times))
    assert [m.__msgtype__ for _, m in messages] == ["std_msgs/msg/String"] * 7
    assert _leftovers(tmp_path) == []


def test_caption_cli_writes_a_bag_beside_the_camera(mcap_bag, tmp_path, tiny_model_dir):
    out = tmp_path / "captions.mcap"
    args = ["caption", mcap_bag, "--topic", RAW, "--model", tiny_model_dir, "--max-new-tokens", "2",
            "--max-rate-hz", "0.6", "--out", out]
    assert bag_cli(*args) == 0
    times = [t for t, _ in read_topic(out, "/caption")]
    period = -(-10**9 * 10 // 6)  # 1 / 0.6 Hz in ns, rounded up as the pipeline's clock does
    assert times == [START + 3 * 10**6 + i * period for i in range(3)]  # the 3rd after the bag's end
    assert bag_cli(*args) == 2 and bag_cli(*args, "--storage", "sqlite3", "--force") == 0
    assert [t for t, _ in read_topic(out, "/caption")] == times


def test_caption_realtime_uses_the_worker(tmp_path, images):
    bag = write_bag(tmp_path / "b", camera_frames(images[:8], ["rgb8"], RAW, period_ns=20_000_000), "mcap")
    captions, report = replay(bag, RAW, realtime=True, max_rate_hz=25.0)
    assert report.messages == 8 and 1 <= report.captions <= 8
    times = [c.time_ns for c in captions]
    assert times == sorted(times) and times[0] >= START
    assert report.captions + report.dropped <= 8


def test_caption_on_change_only(bag):
    captions, report = replay(bag, RAW, caption_fn=lambda image: "same", publish_on_change_only=True)
    assert [c.caption for c in captions] == ["same"] and report.messages == 21
    assert report.unchanged == 20 and report.dropped == 0  # every frame is accounted for


def test_caption_bad_frames(tmp_path, images, capsys):
    bag = _bag_with_bad_frame(tmp_path, images)
    captions, report = replay(bag, RAW)
    assert report.decode_errors == 1 and len(captions) == 4 and f"message 2 on {RAW}" in report.first_error
    with pytest.raises(BagError, match=f"message 2 on {RAW}.*yuv444"):
        replay(bag, RAW, strict=True)
    with pytest.raises(BagError, match="yuv444"):
        replay(bag, RAW, strict=True, realtime=True)


def test_caption_model_failures(bag):
    from blip_lora_core.errors import BlipLoraError

    def flaky(image: np.ndarray) -> str:
        if image.mean() > 100:
            raise RuntimeError("out of memory")
        return "ok"

    captions, report = replay(bag, RAW, caption_fn=flaky)
    assert report.inference_errors > 0 and len(captions) + report.inference_errors == 21
    with pytest.raises(BlipLoraError, match="out of memory"):
        replay(bag, RAW, caption_fn=flaky, strict=True)


@pytest.mark.parametrize("command", ["caption", "extract"])
def test_bag_errors_come_before_loading_the_model(bag, tmp_path, capsys, command):
    out = tmp_path / ("c.jsonl" if command == "caption" else "ds")
    extra = ["--precaption"] if command == "extract" else []
    assert bag_cli(command, bag, "--topic", "/status", "--out", out, "--model", tmp_path / "no_model", *extra) == 2
    assert "topic /status has message type std_msgs/msg/String" in capsys.readouterr().err
    assert not out.exists() and _leftovers(tmp_path) == []
