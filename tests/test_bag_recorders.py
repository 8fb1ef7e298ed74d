"""The bag tools on recordings made by the real `ros2 bag record` of each shared ROS 2 tree (Humble, Jazzy).

Issue 18: recordings killed mid-way (an mcap without its summary, a WAL, an empty WAL, a compressed split bag
without metadata.yaml) and small defects (the last frame waiting for the rate limit, --on-change repeats,
warnings said twice, a misnamed file, a topic with two types, type names, no model and no network). Issue 20:
each distribution's own recorder and storage presets (Jazzy: mcap by default, sqlite3, zstd) through
`bag extract` and `bag caption`, and the captions read back by both distributions' `ros2 bag info` and
`ros2 bag play`.

Per distribution one camera process (tests/bag_camera.py) publishes FRAMES frames once while every recorder
of that distribution records (a session fixture); then each recording is stopped with SIGINT, or killed with
SIGKILL once what it shows on disk makes the case (see RECORDERS). Tests only read the recordings (every
command runs inside bag_fixtures' input guard). Frame i has the pixels ``frame_pixels(i)``, the stamp
``START_NS + i * PERIOD_NS`` and frame_id "frame i", so what is read is compared with what was published.
"""

from __future__ import annotations

import fcntl
import io
import json
import logging
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml
from bag_camera import PERIOD_NS, START_NS, frame_pixels
from bag_fixtures import bag_cli, read, read_topic, replay, sqlite_edit, unchanged
from PIL import Image
from ros_env import wait_until

from bench import ros2_stack
from blip_lora_core.runtime.image_msgs import decode_message

pytestmark = [pytest.mark.ros, pytest.mark.xdist_group("bag_recorders")]

TOPIC, STATUS, CAPTIONS = "/camera/image_raw", "/status", "/caption"
FRAMES, WIDTH, HEIGHT = 30, 320, 240  # 230 kB frames: a few per 768 KiB mcap chunk
HERE = Path(__file__).resolve().parent
KEEP_ALL = "{topic}:\n  history: keep_all\n  reliability: reliable\n  durability: {durability}\n"


def _size_at_least(size: int) -> Callable[[Path], bool]:
    """Kill once the recording's files hold ``size`` bytes (chunks written, the last one still in memory)."""
    return lambda folder: sum(p.stat().st_size for p in folder.iterdir()) >= size


def _db3(folder: Path) -> Path:
    (db3,) = folder.glob("*.db3")
    return db3


def _all_frames_in_the_db(folder: Path) -> bool:
    """Every frame committed (into the .db3 or its WAL), as a second sqlite connection sees it."""
    con = sqlite3.connect(_db3(folder), timeout=5)
    try:
        (count,) = con.execute("SELECT count(*) FROM messages JOIN topics ON messages.topic_id = topics.id "
                               "WHERE topics.name = ?", (TOPIC,)).fetchone()
    except sqlite3.Error:
        return False
    finally:
        con.close()
    return count == FRAMES


def _wal_truncated(folder: Path) -> bool:
    """Every frame committed, then the WAL checkpointed into the .db3 and truncated to 0 bytes by a second
    connection (as a backup or sqlite tool does) while the recorder keeps the database open."""
    if not _all_frames_in_the_db(folder):
        return False
    con = sqlite3.connect(_db3(folder), timeout=5)
    try:
        (busy, _, _) = con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    finally:
        con.close()
    return busy == 0 and Path(f"{_db3(folder)}-wal").stat().st_size == 0


def _compressed_files(count: int) -> Callable[[Path], bool]:
    """Kill once ``count`` split files are compressed (.zstd) and their uncompressed originals gone."""
    return lambda folder: len([p for p in folder.glob("*.zstd") if not p.with_suffix("").exists()]) >= count


@dataclass(frozen=True)
class Recorder:
    """`ros2 bag record` options; stopped with SIGINT, or with SIGKILL once ``kill_when(folder)``."""

    options: tuple[str, ...]
    kill_when: Callable[[Path], bool] | None = None


RESILIENT = ("-s", "sqlite3", "--storage-preset-profile", "resilient")  # WAL mode
ZSTD_FILES = ("--compression-mode", "file", "--compression-format", "zstd")
RECORDERS = {
    "humble": {
        "mcap": Recorder(("-s", "mcap")),
        "sqlite3": Recorder(("-s", "sqlite3")),
        "split": Recorder(("-s", "mcap", "--max-bag-duration", "1")),
        "mcap_killed": Recorder(("-s", "mcap"), _size_at_least(2_500_000)),
        "wal_killed": Recorder(RESILIENT, _all_frames_in_the_db),
        "empty_wal_killed": Recorder(RESILIENT, _wal_truncated),
        "zstd_split_killed": Recorder(("-s", "sqlite3", *ZSTD_FILES, "--max-bag-duration", "1"),
                                      _compressed_files(2)),
    },
    "jazzy": {
        "mcap": Recorder(()),  # Jazzy's default storage
        "sqlite3": Recorder(("-s", "sqlite3")),
        "zstd_fast": Recorder(("-s", "mcap", "--storage-preset-profile", "zstd_fast")),
        "sqlite3_zstd": Recorder(("-s", "sqlite3", *ZSTD_FILES)),
        "zstd_fast_killed": Recorder(("-s", "mcap", "--storage-preset-profile", "zstd_fast"), _size_at_least(500_000)),
    },
}


def _record(env: dict[str, str], folder: Path, distro: str) -> dict[str, Path]:
    """Every recorder of ``distro`` records the camera at once; each recording is then stopped or killed."""
    recorders = RECORDERS[distro]
    qos = folder / "record_qos.yaml"  # keep every frame under load: the recordings are compared frame by frame
    qos.write_text(KEEP_ALL.format(topic=TOPIC, durability="volatile") + KEEP_ALL.format(topic=STATUS,
                                                                                         durability="volatile"))
    topics = [TOPIC, STATUS] if distro == "humble" else ["--topics", TOPIC, STATUS]  # positional: deprecated
    launched = {name: ros2_stack.Launched(env, ["ros2", "bag", "record", "-o", str(folder / name), *r.options,
                                                "--qos-profile-overrides-path", str(qos), *topics],
                                          folder / f"{name}.log") for name, r in recorders.items()}
    try:
        spec = folder / "camera.json"
        spec.write_text(json.dumps({"topic": TOPIC, "string_topic": STATUS, "count": FRAMES, "width": WIDTH,
                                        "height": HEIGHT, "period_s": 0.1, "subscribers": len(recorders)}))
        done = ros2_stack.run(env, sys.executable, str(HERE / "bag_camera.py"), str(spec), timeout=180)
        assert done.returncode == 0 and f'"published": {FRAMES}' in done.stdout, done.stdout + done.stderr[-3000:]
        for name, recorder in recorders.items():
            if recorder.kill_when is None:
                assert launched[name].stop() == 0, launched[name].output()[-3000:]
                continue
            wait_until(lambda r=recorder, n=name: r.kill_when(folder / n), f"{distro} {name} ready to be killed")
            os.killpg(launched[name].process.pid, signal.SIGKILL)
            launched[name].process.wait()
    finally:
        for process in launched.values():
            if process.running:
                os.killpg(process.process.pid, signal.SIGKILL)
                process.process.wait()
            process.stop()
    return {name: folder / name for name in recorders}


@pytest.fixture(scope="session")
def ros2_envs(tmp_path_factory) -> Callable[[str], dict[str, str]]:
    """distro -> the environment of its shared tree (with ros2_ws built), made once; a skip saying how to
    get one where the tree is missing."""
    made: dict[str, dict[str, str]] = {}

    def get(distro: str) -> dict[str, str]:
        if distro not in made:
            try:
                made[distro] = ros2_stack.environment(tmp_path_factory.mktemp(f"ros2_ws_{distro}"), distro)
            except ros2_stack.Ros2UnavailableError as missing:
                pytest.skip(str(missing))
        return made[distro]

    return get


@pytest.fixture(scope="session")
def recordings(ros2_envs, tmp_path_factory) -> Callable[[str], dict[str, Path]]:
    """distro -> {recorder name: bag folder}, recorded once per test run: with pytest-xdist the first worker
    that needs them records into a folder all workers of the run share, under a lock, and the others read
    that (the xdist_group mark alone does not keep these tests on one worker with pytest 9.2, xdist issue
    #1386)."""
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # this run's pytest-N folder, above each worker's own
    made: dict[str, dict[str, Path] | BaseException] = {}

    def get(distro: str) -> dict[str, Path]:
        if distro not in made:
            try:
                made[distro] = _recorded_once(lambda: ros2_envs(distro), shared / f"bag_recordings_{distro}", distro)
            except (AssertionError, OSError, subprocess.SubprocessError) as failed:  # reported by every test
                made[distro] = failed
        if isinstance(made[distro], BaseException):
            raise made[distro]
        return made[distro]

    return get


def _recorded_once(env: Callable[[], dict[str, str]], folder: Path, distro: str) -> dict[str, Path]:
    """The recordings of ``distro`` in ``folder``, made there unless another process of this run did."""
    done = folder.with_suffix(".done")
    with open(folder.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            _record(env(), folder, distro)
            done.write_text("recorded\n")
    return {name: folder / name for name in RECORDERS[distro]}


def _assert_published_prefix(messages: list, at_least: int = 1) -> None:
    """The messages are frames 0, 1, 2, ... as published: pixels, stamps and frame ids."""
    assert at_least <= len(messages) <= FRAMES
    for i, message in enumerate(messages):
        assert message.index == i and message.stamp_ns == START_NS + i * PERIOD_NS
        assert message.msg.header.frame_id == f"frame {i}"
        np.testing.assert_array_equal(decode_message(message.msg), frame_pixels(i, WIDTH, HEIGHT))


def _notes(caplog, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


def _image_count(info: str) -> int:
    """The image topic's count in `ros2 bag info` output."""
    (count,) = re.findall(rf"Topic: {TOPIC} \| Type: sensor_msgs/msg/Image \| Count: (\d+)", info)
    return int(count)


# ---- issue 18: recordings killed mid-way ---------------------------------------------------------------


@pytest.mark.parametrize("distro, name", [("humble", "mcap_killed"), ("jazzy", "zstd_fast_killed")])
def test_a_killed_mcap_recording_reads_every_intact_chunk(recordings, ros2_envs, distro, name, caplog, tmp_path):
    """No footer, no summary, the last chunk cut short (zstd-compressed on Jazzy): every complete chunk and
    every complete message of the cut one are read; at least what rosbag2's own reader finds in it."""
    bag = recordings(distro)[name]
    (mcap,) = bag.iterdir()
    messages = read(bag, TOPIC)
    _assert_published_prefix(messages)
    (note,) = _notes(caplog, "the recorder did not close this file")
    assert re.fullmatch(rf"{mcap}: the recorder did not close this file \(no mcap summary at its end\); read \d+ "
                        rf"messages from its \d+ complete chunks( and the chunk it was writing, which is cut short "
                        rf"\(\d+ messages read from it, [\d,]+ bytes of its messages lost\)|; its last [\d,]+ bytes, "
                        rf"an incomplete record, are skipped)?", note), note  # the cut lands where the kill does
    info = ros2_stack.run(ros2_envs(distro), "ros2", "bag", "info", "-s", "mcap", str(mcap))
    assert info.returncode == 0, info.stderr
    assert len(messages) >= _image_count(info.stdout) > 0
    assert bag_cli("extract", bag, "--topic", TOPIC, "--out", tmp_path / "ds") == 0
    assert len((tmp_path / "ds" / "annotations.jsonl").read_text().splitlines()) == len(messages)


def _mcap_index(mcap: Path) -> tuple[list, int, int]:
    """(chunks, image channel id, summary start) from the summary of a closed mcap, read by rosbags."""
    from rosbags.rosbag2.storage_mcap import McapReader

    reader = McapReader(mcap)
    reader.open()
    try:
        (image,) = [c.id for c in reader.connections if c.topic == TOPIC]
        return list(reader.chunks), image, reader.data_end
    finally:
        reader.close()


@pytest.mark.parametrize("distro, name", [("humble", "mcap"), ("jazzy", "zstd_fast")])
def test_an_mcap_cut_anywhere_reads_the_chunks_before_the_cut(recordings, distro, name, tmp_path, caplog):
    """A closed recording cut where a crash could cut it; what each cut must give comes from the file's own
    chunk index: at a chunk's start, the frames of the chunks before; inside a chunk, those and some of its
    own; before the summary, all of them. A complete chunk that does not check out stops the reading there."""
    (mcap,) = recordings(distro)[name].glob("*.mcap")
    chunks, image, summary_start = _mcap_index(mcap)
    assert len(chunks) >= 4
    before = np.cumsum([0] + [c.channel_count.get(image, 0) for c in chunks])  # frames in the chunks before j
    data = mcap.read_bytes()
    for j in (1, len(chunks) // 2, len(chunks) - 1):
        start, length = chunks[j].chunk_start_offset, chunks[j].chunk_length
        for at, fewest, most in ((start, before[j], before[j]), (start + length // 2, before[j], before[j + 1] - 1)):
            cut = tmp_path / f"cut_{at}.mcap"
            cut.write_bytes(data[:at])
            caplog.clear()
            messages = read(cut, TOPIC)
            _assert_published_prefix(messages, at_least=0)
            assert fewest <= len(messages) <= most, (j, at)
            (note,) = _notes(caplog, "the recorder did not close this file")
            assert f"from its {j} complete chunk" in note and ("cut short" in note) == (at > start), note
    damaged = bytearray(data[:summary_start])  # a complete chunk whose declared size is off by one: damage
    j = len(chunks) // 2
    size_field = chunks[j].chunk_start_offset + 9 + 16  # after the opcode, length, start and end times
    damaged[size_field:size_field + 8] = (chunks[j].uncompressed_size + 1).to_bytes(8, "little")
    cut = tmp_path / "damaged.mcap"
    cut.write_bytes(bytes(damaged))
    caplog.clear()
    assert len(read(cut, TOPIC)) == before[j]
    assert f"complete chunks; the chunk at byte {chunks[j].chunk_start_offset:,} does not check out (size, CRC or " \
           f"compression): it and the {len(damaged) - chunks[j].chunk_start_offset:,} bytes after it are skipped" \
           in caplog.text
    cut = tmp_path / "no_summary.mcap"
    cut.write_bytes(data[:summary_start])
    _assert_published_prefix(read(cut, TOPIC), at_least=FRAMES)
    assert f"{cut}: the recorder did not close this file (no mcap summary at its end); read {2 * FRAMES} messages " \
           f"from its {len(chunks)} complete chunks; only its summary is missing, no message was lost" in caplog.text


def test_a_killed_recording_reads_the_messages_in_its_wal(recordings, caplog):
    caplog.set_level(logging.INFO)
    bag = recordings("humble")["wal_killed"]
    assert Path(f"{_db3(bag)}-wal").stat().st_size > 0 and not (bag / "metadata.yaml").exists()
    _assert_published_prefix(read(bag, TOPIC), at_least=FRAMES)
    assert _notes(caplog, "-wal") == [f"{_db3(bag)}: read with the messages in {_db3(bag).name}-wal (the recording "
                                      f"was not closed cleanly)"]


def test_an_empty_wal_is_not_announced(recordings, caplog):
    """A WAL truncated to 0 bytes holds no messages: nothing to announce (it used to say it read them)."""
    caplog.set_level(logging.INFO)
    bag = recordings("humble")["empty_wal_killed"]
    assert Path(f"{_db3(bag)}-wal").stat().st_size == 0
    _assert_published_prefix(read(bag, TOPIC), at_least=FRAMES)
    assert _notes(caplog, "-wal") == []


def test_a_killed_compressed_split_recording_is_read_whole(recordings, caplog, tmp_path, capsys):
    """Split files compressed as they closed (.db3.zstd), the current one not, no metadata.yaml: the folder
    reads them all in order (it used to read only the .db3), and a .db3.zstd alone reads (it used to say
    "pass the bag folder, whose metadata.yaml ..." of a folder without one)."""
    bag = recordings("humble")["zstd_split_killed"]
    compressed = sorted(bag.glob("*.db3.zstd"))
    assert len(compressed) >= 2 and not (bag / "metadata.yaml").exists()
    files = sorted(compressed + list(bag.glob("*.db3")), key=lambda p: int(p.name.split("_")[-1].split(".")[0]))
    messages = read(bag, TOPIC)
    _assert_published_prefix(messages)
    assert _notes(caplog, "no metadata.yaml") == [f"{bag}: no metadata.yaml (the recording was not closed); reading "
                                                  f"its {len(files)} storage files in recording order: "
                                                  f"{', '.join(p.name for p in files)}"]
    per_file = [len(read(path, TOPIC)) for path in files]
    assert sum(per_file) == len(messages) and all(per_file[:len(compressed)])
    assert bag_cli("extract", compressed[0], "--topic", TOPIC, "--out", tmp_path / "ds") == 0
    assert f"wrote {per_file[0]} frames of {per_file[0]} messages" in capsys.readouterr().out


# ---- issue 18: small defects ----------------------------------------------------------------------------


def _copy(storage: Path, to: Path) -> Path:
    to.write_bytes(storage.read_bytes())
    return to


def test_a_sqlite3_bag_named_mcap_is_read_as_sqlite3(recordings, tmp_path, caplog, capsys):
    misnamed = _copy(_db3(recordings("humble")["sqlite3"]), tmp_path / "recording.mcap")
    assert bag_cli("extract", misnamed, "--topic", TOPIC, "--out", tmp_path / "ds") == 0
    assert _notes(caplog, "storage although") == [f"{misnamed}: holds sqlite3 storage although its name says mcap; "
                                                  f"reading it as sqlite3"]
    assert "mcap recover" not in caplog.text + capsys.readouterr().err
    _assert_published_prefix(read(misnamed, TOPIC), at_least=FRAMES)


def test_a_topic_with_an_image_and_another_type_reads_the_images(recordings, tmp_path, caplog):
    """rosbag2 itself refuses such a topic (`ros2 bag convert`: "more than one type"), but bags merged by other
    tools hold one: here the recording's /status messages moved onto the camera topic."""
    mixed = _copy(_db3(recordings("humble")["sqlite3"]), tmp_path / "mixed.db3")
    sqlite_edit(mixed, f"UPDATE topics SET name = '{TOPIC}' WHERE name = '{STATUS}'")
    _assert_published_prefix(read(mixed, TOPIC), at_least=FRAMES)
    assert _notes(caplog, "another type") == [f"{mixed}: topic {TOPIC} also holds messages of another type, "
                                              f"skipped: {FRAMES} of type std_msgs/msg/String"]


def test_type_names_in_errors_are_written_as_in_topic_lists(recordings, tmp_path, capsys):
    """An early ROS 2 spelling (std_msgs/String) is named std_msgs/msg/String in the error, as in the list."""
    early = _copy(_db3(recordings("humble")["sqlite3"]), tmp_path / "early.db3")
    sqlite_edit(early, f"UPDATE topics SET type = 'std_msgs/String' WHERE name = '{STATUS}'")
    capsys.readouterr()
    assert bag_cli("extract", early, "--topic", STATUS, "--out", tmp_path / "ds") == 2
    assert bag_cli("extract", early, "--topic", "/nope", "--out", tmp_path / "ds") == 2
    wrong_type, missing = capsys.readouterr().err.splitlines()
    assert wrong_type == (f"blip-lora bag: error: {early}: topic {STATUS} has message type std_msgs/msg/String, "
                          f"expected sensor_msgs/msg/Image or sensor_msgs/msg/CompressedImage")
    assert f"{STATUS} (std_msgs/msg/String)" in missing


def test_warnings_are_said_once(recordings, tmp_path, tiny_model_dir, caplog):
    """`bag caption` opens the bag twice (a check before the model loads, then the replay): each note once."""
    split = recordings("humble")["split"]
    first = sorted(split.glob("*.mcap"))[0]
    killed = recordings("humble")["mcap_killed"]
    for bag, text in ((first, "reading only this file"), (killed, "the recorder did not close this file")):
        caplog.clear()
        out = tmp_path / f"{bag.name}.jsonl"
        assert bag_cli("caption", bag, "--topic", TOPIC, "--model", tiny_model_dir, "--max-new-tokens", "2",
                       "--max-rate-hz", "1", "--out", out) == 0
        assert len(_notes(caplog, text)) == 1, caplog.text


def _caption_counts(stdout: str) -> dict[str, int]:
    """The numbers of `bag caption`'s summary line."""
    (line,) = [x for x in stdout.splitlines() if x.startswith("wrote ")]
    numbers = re.fullmatch(r"wrote (\d+) captions of (\d+) frames on \S+ to \S+ \((\d+) replaced by newer frames, "
                           r"(?:(\d+) repeats of the last caption not published \(--on-change\), )?(\d+) undecodable, "
                           r"(\d+) model failures\)", line)
    assert numbers, line
    keys = ("captions", "frames", "replaced", "repeats", "undecodable", "failures")
    return {k: int(v or 0) for k, v in zip(keys, numbers.groups(), strict=True)}


def test_every_frame_is_captioned_or_counted_under_a_rate_limit(recordings, tmp_path, tiny_model_dir, capsys):
    """The frame still waiting for the rate limit at the end is captioned (it used to vanish from the counts)."""
    bag = recordings("humble")["sqlite3"]
    captions, report = replay(bag, TOPIC, max_rate_hz=2.0)
    assert report.captions + report.dropped == report.messages == FRAMES
    assert captions[-1].image_stamp == pytest.approx((START_NS + (FRAMES - 1) * PERIOD_NS) / 1e9)
    assert bag_cli("caption", bag, "--topic", TOPIC, "--model", tiny_model_dir, "--max-new-tokens", "2",
                   "--max-rate-hz", "2", "--out", tmp_path / "c.jsonl") == 0
    counts = _caption_counts(capsys.readouterr().out)
    assert counts["captions"] + counts["replaced"] == counts["frames"] == FRAMES


def test_on_change_repeats_are_counted(recordings, tmp_path, tiny_model_dir, capsys):
    bag = recordings("humble")["mcap"]
    captions, report = replay(bag, TOPIC, caption_fn=lambda image: "a cube", publish_on_change_only=True)
    assert len(captions) == 1 and report.unchanged == FRAMES - 1 and report.dropped == 0
    assert bag_cli("caption", bag, "--topic", TOPIC, "--model", tiny_model_dir, "--max-new-tokens", "2",
                   "--on-change", "--out", tmp_path / "c.jsonl") == 0
    counts = _caption_counts(capsys.readouterr().out)
    lines = (tmp_path / "c.jsonl").read_text().splitlines()
    assert counts["captions"] == len(lines) and counts["captions"] + counts["repeats"] == FRAMES


def test_no_model_and_no_network_is_one_line_at_once(recordings, tmp_path):
    """The default model is a hub id: without a network and not cached, one line, no retries (it used to print
    40 retry lines over 55 s). The hub is a local port that refuses connections."""
    bag = recordings("humble")["sqlite3"]
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE" and "proxy" not in k.lower()}
    with socket.socket() as closed, unchanged(bag):
        closed.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{closed.getsockname()[1]}"
        env.update(HF_HOME=str(tmp_path / "hf_home"), HF_ENDPOINT=endpoint)
        done = subprocess.run([sys.executable, "-m", "blip_lora_training.cli", "bag", "caption", str(bag),
                               "--topic", TOPIC, "--out", str(tmp_path / "c.jsonl")], env=env, capture_output=True,
                              text=True, timeout=300)
    assert done.returncode == 2 and done.stderr.splitlines() == [
        f"blip-lora bag: error: cannot load BLIP model 'Salesforce/blip-image-captioning-large': it is not in the "
        f"Hugging Face cache on this machine and {endpoint} cannot be reached ([Errno 111] Connection refused); use a "
        f"local model folder, or connect once to download it"]
    assert not (tmp_path / "c.jsonl").exists()


# ---- issue 20: each distribution's recorder, and the captions read by both --------------------------------

PRESETS = [("humble", "mcap", "mcap"), ("humble", "sqlite3", "sqlite3"), ("jazzy", "mcap", "mcap"),
           ("jazzy", "sqlite3", "sqlite3"), ("jazzy", "zstd_fast", "mcap"), ("jazzy", "sqlite3_zstd", "sqlite3")]


@pytest.mark.parametrize("distro, name, storage", PRESETS)
def test_each_recorder_preset_goes_through_extract_and_caption(recordings, distro, name, storage, tmp_path,
                                                               tiny_model_dir, capsys):
    bag = recordings(distro)[name]
    info = yaml.safe_load((bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert info["storage_identifier"] == storage and info["version"] == {"humble": 5, "jazzy": 9}[distro]
    assert bool(info["compression_mode"]) == name.endswith("_zstd")
    assert bag_cli("extract", bag, "--topic", TOPIC, "--out", tmp_path / "ds") == 0
    rows = [json.loads(line) for line in (tmp_path / "ds" / "annotations.jsonl").read_text().splitlines()]
    assert [r["ros_stamp"] for r in rows] == [{"sec": (START_NS + i * PERIOD_NS) // 10**9,
                                               "nanosec": (START_NS + i * PERIOD_NS) % 10**9} for i in range(FRAMES)]
    for i, row in enumerate(rows):  # the published pixels, exactly: the same JPEG as PIL makes of them
        expected = io.BytesIO()
        Image.fromarray(frame_pixels(i, WIDTH, HEIGHT)).save(expected, "JPEG", quality=95)
        assert (tmp_path / "ds" / row["image"]).read_bytes() == expected.getvalue(), row
    capsys.readouterr()
    assert bag_cli("caption", bag, "--topic", TOPIC, "--model", tiny_model_dir, "--max-new-tokens", "2",
                   "--max-rate-hz", "2", "--out", tmp_path / "captions") == 0
    counts = _caption_counts(capsys.readouterr().out)
    assert len(read_topic(tmp_path / "captions", CAPTIONS)) == counts["captions"] > 0
    assert counts["captions"] + counts["replaced"] == FRAMES


PLAY_QOS = KEEP_ALL.format(topic=CAPTIONS, durability="transient_local")  # bag_listener.py subscribes so


def _info_and_play(env: dict[str, str], bag: Path, expected: list[str], folder: Path) -> None:
    """`ros2 bag info` shows the captions; `ros2 bag play` plays exactly them to a listener."""
    storage = [] if bag.is_dir() else ["-s", {".mcap": "mcap", ".db3": "sqlite3"}[bag.suffix]]
    info = ros2_stack.run(env, "ros2", "bag", "info", *storage, str(bag))
    assert info.returncode == 0, info.stdout + info.stderr
    assert re.search(rf"Topic: {CAPTIONS} \| Type: std_msgs/msg/String \| Count: {len(expected)} ", info.stdout)
    qos = folder / "play_qos.yaml"
    qos.write_text(PLAY_QOS)
    player = ros2_stack.Launched(env, ["ros2", "bag", "play", *storage, str(bag), "--start-paused",
                                       "--qos-profile-overrides-path", str(qos)], folder / f"play_{time.time_ns()}.log")
    try:
        heard = ros2_stack.run(env, sys.executable, str(HERE / "bag_listener.py"), CAPTIONS, str(len(expected)),
                               timeout=120)
        assert heard.returncode == 0, heard.stderr[-3000:]
        assert json.loads(heard.stdout.strip().splitlines()[-1]) == {"received": expected, "matched": True}
        assert player.process.wait(60) == 0, player.output()[-3000:]
    finally:
        player.stop()


@pytest.mark.parametrize("recorded_by, out_name, storage", [("humble", "captions", "mcap"),
                                                            ("humble", "captions.db3", "sqlite3"),
                                                            ("jazzy", "captions", "sqlite3"),
                                                            ("jazzy", "captions.mcap", "mcap")])
def test_captions_are_read_by_both_distributions(recordings, ros2_envs, recorded_by, out_name, storage, tmp_path,
                                                 tiny_model_dir):
    """A bag recorded by each distribution's recorder, captioned, then read by Humble's and Jazzy's own
    `ros2 bag info` and `ros2 bag play` (Humble cannot read metadata version 9, which `bag caption` used to
    write): as a bag folder and as a single storage file, mcap and sqlite3."""
    bag = recordings(recorded_by)["mcap"]
    out = tmp_path / out_name
    assert bag_cli("caption", bag, "--topic", TOPIC, "--model", tiny_model_dir, "--max-new-tokens", "3",
                   "--max-rate-hz", "3", "--storage", storage, "--out", out) == 0
    expected = [m.data for _, m in read_topic(out, CAPTIONS)]
    assert len(expected) >= 9
    for distro in ("humble", "jazzy"):
        _info_and_play(ros2_envs(distro), out, expected, tmp_path)
