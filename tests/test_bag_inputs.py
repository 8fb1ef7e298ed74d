"""Bags as real ROS 2 recorders leave them (Foxy, Humble, Jazzy, early ROS 2, killed recordings), inputs that
must never be modified, and the exact one-line messages for what cannot be read."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from bag_fixtures import (
    TYPESTORE,
    Frame,
    bag_cli_lines,
    camera_frames,
    edit_metadata,
    extract,
    noise_images,
    read_frames,
    replay,
    sqlite_edit,
    storage_file,
    unchanged,
    undecodable_msg,
    write_distro_bag,
)

from blip_lora_core.bags.extract import ExtractOptions
from blip_lora_core.errors import BagError

TOPIC = "/camera/image_raw"
IMAGE = "sensor_msgs/msg/Image"


def _bag(path: Path, distro: str = "humble", storage: str = "sqlite3", n: int = 6, **kwargs) -> Path:
    return write_distro_bag(path, camera_frames(noise_images(n), ["rgb8", "bgr8"], TOPIC), distro, storage, **kwargs)


def _assert_frames(frames: list[np.ndarray], expected: list[np.ndarray]) -> None:
    assert len(frames) == len(expected)
    for frame, image in zip(frames, expected, strict=True):
        np.testing.assert_array_equal(frame, image)


# ---- every distro's recorder ------------------------------------------------------------------------------


@pytest.mark.parametrize("distro, storage", [("foxy", "sqlite3"), ("humble", "sqlite3"), ("humble", "mcap"),
                                             ("jazzy", "sqlite3"), ("jazzy", "mcap")])
@pytest.mark.parametrize("as_file", [False, True])
def test_each_distro_reads_pixel_for_pixel(tmp_path, distro, storage, as_file):
    bag = _bag(tmp_path / distro, distro, storage)
    _assert_frames(read_frames(storage_file(bag) if as_file else bag, TOPIC), noise_images())


# ---- 1. never destroy an input -----------------------------------------------------------------------------


def _forms(tmp_path: Path) -> dict[str, tuple[str, str]]:
    """form -> (bag argument, --out argument), relative to tmp_path (the working folder)."""
    rec = _bag(tmp_path / "rec", "jazzy", "mcap")
    (tmp_path / "link").symlink_to(rec, target_is_directory=True)
    (tmp_path / "file_link.mcap").symlink_to(storage_file(rec))
    name = storage_file(rec).name
    return {
        "same folder": ("rec", "rec"),
        "same folder, absolute out": ("rec", str(rec)),
        "same folder, trailing ./": ("./rec", "rec/."),
        "same file": (f"rec/{name}", f"rec/{name}"),
        "file, out is its bag folder": (f"rec/{name}", "rec"),
        "out inside the folder": ("rec", "rec/sub"),
        "out inside, through ..": ("rec", "rec/../rec/captions"),
        "out contains the folder": ("rec", "."),
        "out is a symlink to the folder": ("rec", "link"),
        "bag is a symlink, out the real folder": ("link", str(rec)),
        "out is a symlink to the file": (f"rec/{name}", "file_link.mcap"),
    }


@pytest.mark.parametrize("force", [False, True])
@pytest.mark.parametrize("command", ["caption", "extract"])
def test_an_output_that_is_inside_or_around_the_input_is_refused(tmp_path, monkeypatch, capsys, command, force):
    monkeypatch.chdir(tmp_path)
    forms = _forms(tmp_path)
    for form, (bag, out) in forms.items():
        extra = ["--force"] if force else []
        if command == "caption":
            extra += ["--model", tmp_path / "no_model"]
        code, err = bag_cli_lines(capsys, command, bag, "--topic", TOPIC, "--out", out, *extra)
        assert code == 2 and len(err) == 1, form
        assert "the input bag" in err[0] and "refusing to write there, even with --force" in err[0], form
    assert sorted(p.name for p in (tmp_path / "rec").iterdir()) == ["metadata.yaml", "rec.mcap"]
    _assert_frames(read_frames(tmp_path / "rec", TOPIC), noise_images())


@pytest.mark.parametrize("as_file", [False, True])
def test_caption_with_a_real_model_and_force_keeps_the_recording(tmp_path, capsys, tiny_model_dir, as_file):
    """The reported data loss: `bag caption REC --force --out REC` used to replace the camera recording."""
    bag = _bag(tmp_path / "rec", "jazzy", "mcap")
    source = storage_file(bag) if as_file else bag
    code, err = bag_cli_lines(capsys, "caption", source, "--topic", TOPIC, "--out", source, "--force",
                     "--model", tiny_model_dir, "--max-new-tokens", "2")
    assert code == 2 and err == [f"blip-lora bag: error: {source} is the input bag {source}; refusing to write "
                                 f"there, even with --force (choose another --out)"]
    _assert_frames(read_frames(bag, TOPIC), noise_images())


def test_the_api_refuses_too(tmp_path):
    from blip_lora_core.bags.caption import write_captions

    bag = _bag(tmp_path / "rec", "humble", "sqlite3")
    with pytest.raises(BagError, match="is the input bag"):
        extract(bag, bag, ExtractOptions(TOPIC))
    captions, _ = replay(bag, TOPIC, lambda image: "x")
    with pytest.raises(BagError, match="lies inside the input bag"):
        write_captions(bag / "c.jsonl", captions, source=bag, force=True)
    with pytest.raises(BagError, match="contains the input bag"):
        write_captions(tmp_path, captions, source=storage_file(bag), force=True)
    (tmp_path / "old.jsonl").write_text("{}\n")  # an unrelated existing output beside a file given alone
    alone = tmp_path / "alone.db3"
    alone.write_bytes(storage_file(bag).read_bytes())
    write_captions(tmp_path / "old.jsonl", captions, source=alone, force=True)
    hard = tmp_path / "hard.db3"  # another name for the same file
    os.link(alone, hard)
    with pytest.raises(BagError, match="is the input bag"):
        write_captions(hard, captions, source=alone, force=True)


# ---- 2. an output path that cannot be created --------------------------------------------------------------


@pytest.mark.parametrize("command", ["caption", "extract"])
@pytest.mark.parametrize("out", ["notes.txt/sub", "notes.txt/sub/deeper/captions.jsonl"])
def test_out_under_an_existing_file_is_one_line_before_any_work(tmp_path, capsys, command, out):
    bag = _bag(tmp_path / "rec")
    (tmp_path / "notes.txt").write_text("mine")
    extra = ["--model", tmp_path / "no_model"] + (["--precaption"] if command == "extract" else [])
    code, err = bag_cli_lines(capsys, command, bag, "--topic", TOPIC, "--out", tmp_path / out, *extra)
    # the model is never looked for: the output is checked first
    assert code == 2 and err == [f"blip-lora bag: error: {tmp_path / out}: cannot create it, "
                                 f"{tmp_path / 'notes.txt'} is a file, not a folder"]
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "rec"]
    with pytest.raises(BagError, match="is a file, not a folder"):
        extract(bag, tmp_path / out, ExtractOptions(TOPIC))


# ---- 3. a recording that was not closed: messages still in the -wal file -----------------------------------


_KILLED_WRITER = textwrap.dedent("""
    import os, signal, sqlite3, sys
    con = sqlite3.connect(sys.argv[1])
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA wal_autocheckpoint=0")  # rosbag2's writer never got to checkpoint
    with con:
        for i, name in enumerate(sys.argv[2:]):
            with open(name, "rb") as f:
                con.execute("INSERT INTO messages (topic_id, timestamp, data) VALUES (1, ?, ?)",
                            (1_700_000_000_603_000_000 + i * 100_000_000, f.read()))
    os.kill(os.getpid(), signal.SIGKILL)
""")


def _killed_recording(tmp_path: Path) -> Path:
    """A Humble sqlite3 bag whose first 6 frames were checkpointed into the .db3 and whose last 6 are only in
    the -wal file of a writer that was SIGKILLed (metadata.yaml written for the first 6)."""
    bag = _bag(tmp_path / "rec", "humble", "sqlite3")
    late = camera_frames(noise_images(12)[6:], ["rgb8"], TOPIC, start_ns=1_700_000_000_600_000_000)
    blobs = []
    for i, frame in enumerate(late):
        blobs.append(tmp_path / f"m{i}.cdr")
        blobs[-1].write_bytes(bytes(TYPESTORE.serialize_cdr(frame.msg, IMAGE)))
    done = subprocess.run([sys.executable, "-c", _KILLED_WRITER, storage_file(bag), *blobs], check=False)
    assert done.returncode == -9
    assert (bag / "rec.db3-wal").stat().st_size > 0
    return bag


def test_messages_in_the_wal_of_a_killed_recording_are_read(tmp_path, caplog):
    bag = _killed_recording(tmp_path)
    images = noise_images(6) + noise_images(12)[6:]
    _assert_frames(read_frames(storage_file(bag), TOPIC), images)  # the .db3 alone: its -wal is read too
    bare = tmp_path / "bare"  # as `ros2 bag record` leaves it when killed before writing metadata.yaml
    bare.mkdir()
    for name in ("rec.db3", "rec.db3-wal", "rec.db3-shm"):
        (bare / name).write_bytes((bag / name).read_bytes())
    _assert_frames(read_frames(bare, TOPIC), images)
    caplog.clear()
    _assert_frames(read_frames(bag, TOPIC), images)  # metadata.yaml says 6: out of date, reindexing fixes that
    assert f"{bag / 'metadata.yaml'}: declares 6 messages on {TOPIC} but its storage files hold 12" in caplog.text
    assert "`ros2 bag reindex` rewrites metadata.yaml" in caplog.text
    assert (bag / "rec.db3-wal").stat().st_size > 0  # the WAL was not folded into the input


def test_messages_missing_from_storage_say_so_without_a_reindex_hint(tmp_path, capsys):
    bag = _bag(tmp_path / "rec", "humble", "sqlite3")
    edit_metadata(bag, lambda info: info["topics_with_message_count"][0].update(message_count=9))
    code, err = bag_cli_lines(capsys, "extract", bag, "--topic", TOPIC, "--out", tmp_path / "ds")
    assert code == 2 and err == [f"blip-lora bag: error: {bag / 'metadata.yaml'}: declares 9 messages on {TOPIC} "
                                 f"but its storage files hold 6: 3 are missing from the bag"]


def test_a_damaged_mcap_index_suggests_mcap_recover_not_reindex(tmp_path, capsys):
    bag = _bag(tmp_path / "rec", "jazzy", "mcap")
    data = bytearray(storage_file(bag).read_bytes())
    for i in range(len(data) // 4, len(data) // 2):
        data[i] ^= 0x5A
    broken = tmp_path / "broken.mcap"
    broken.write_bytes(bytes(data))
    code, err = bag_cli_lines(capsys, "extract", broken, "--topic", TOPIC, "--out", tmp_path / "ds", "--strict")
    assert code == 2 and len(err) == 1 and str(broken) in err[0]
    assert "`mcap recover`" in err[0] and "reindex" not in err[0] and ".;" not in err[0]


# ---- 4. early ROS 2 type names ------------------------------------------------------------------------------


def _dashing_bag(tmp_path: Path) -> Path:
    """Metadata version 3 and a schema without QoS, with the type spelled ``sensor_msgs/Image`` as Ardent to
    Dashing stored it."""
    bag = _bag(tmp_path / "dashing", "foxy", "sqlite3")
    sqlite_edit(storage_file(bag), "ALTER TABLE topics DROP COLUMN offered_qos_profiles",
                "UPDATE topics SET type = 'sensor_msgs/Image'")

    def edit(info):
        info["version"] = 3
        for topic in info["topics_with_message_count"]:
            topic["topic_metadata"]["type"] = "sensor_msgs/Image"
            topic["topic_metadata"].pop("offered_qos_profiles")

    edit_metadata(bag, edit)
    return bag


@pytest.mark.parametrize("as_file", [False, True])
def test_early_ros2_type_names_are_read(tmp_path, capsys, as_file):
    bag = _dashing_bag(tmp_path)
    source = storage_file(bag) if as_file else bag
    _assert_frames(read_frames(source, TOPIC), noise_images())
    code, _ = bag_cli_lines(capsys, "extract", source, "--topic", TOPIC, "--out", tmp_path / "ds")
    assert code == 0 and len((tmp_path / "ds" / "annotations.jsonl").read_text().splitlines()) == 6


# ---- 5. QoS text in metadata.yaml that differs from the storage file's -------------------------------------

_QOS_V5 = ("- history: 3\n  depth: 0\n  reliability: 1\n  durability: 2\n  deadline:\n    sec: 2147483647\n"
           "    nsec: 4294967295\n  lifespan:\n    sec: 2147483647\n    nsec: 4294967295\n  liveliness: 1\n"
           "  liveliness_lease_duration:\n    sec: 2147483647\n    nsec: 4294967295\n"
           "  avoid_ros_namespace_conventions: false")
_QOS_V9 = [{"history": "unknown", "depth": 0, "reliability": "reliable", "durability": "volatile",
            "deadline": {"sec": 9223372036, "nsec": 854775807}, "lifespan": {"sec": 9223372036, "nsec": 854775807},
            "liveliness": "automatic", "liveliness_lease_duration": {"sec": 9223372036, "nsec": 854775807},
            "avoid_ros_namespace_conventions": False}]


@pytest.mark.parametrize("distro, storage", [("humble", "sqlite3"), ("humble", "mcap"), ("jazzy", "mcap")])
def test_a_folder_reads_its_storage_even_when_metadata_qos_text_differs(tmp_path, distro, storage):
    bag = _bag(tmp_path / "rec", distro, storage)
    qos = _QOS_V9 if distro == "jazzy" else _QOS_V5
    edit_metadata(bag, lambda info: info["topics_with_message_count"][0]["topic_metadata"].update(
        offered_qos_profiles=qos))
    _assert_frames(read_frames(bag, TOPIC), noise_images())
    _assert_frames(read_frames(storage_file(bag), TOPIC), noise_images())


# ---- 6. messages that do not mislead ------------------------------------------------------------------------


def _v1_metadata(info: dict) -> None:
    """Metadata as Ardent to Crystal wrote it: ``topic_and_type`` and a bag-wide ``storage_format``."""
    for key in ("compression_format", "compression_mode"):
        info.pop(key, None)
    info.update(version=1, storage_format="cdr")
    for topic in info["topics_with_message_count"]:
        meta = topic.pop("topic_metadata")
        topic["topic_and_type"] = {"name": meta["name"], "type": meta["type"]}


def test_version_1_metadata_is_read(tmp_path):
    bag = _bag(tmp_path / "crystal", "foxy", "sqlite3")
    edit_metadata(bag, _v1_metadata)
    _assert_frames(read_frames(bag, TOPIC), noise_images())


def _json_topic(info: dict) -> None:
    info["topics_with_message_count"][0]["topic_metadata"]["serialization_format"] = "json"


@pytest.mark.parametrize("case", ["version 42", "json", "garbage yaml", "not a mapping"])
def test_metadata_problems_are_one_line_without_a_corruption_hint(tmp_path, capsys, case):
    bag = _bag(tmp_path / "rec", "jazzy", "sqlite3")
    meta = bag / "metadata.yaml"
    if case == "version 42":
        edit_metadata(bag, lambda info: info.update(version=42))
        expected = f"{meta}: metadata version 42 is not one this tool reads (1 to 9)"
    elif case == "json":
        edit_metadata(bag, _json_topic)
        sqlite_edit(storage_file(bag), "UPDATE topics SET serialization_format = 'json'")
        expected = f"{bag}: topic {TOPIC} is serialised as json; only cdr is supported"
    elif case == "garbage yaml":
        meta.write_text("rosbag2_bagfile_information: [\n  version: {\n")
        expected = f"{meta}: not valid YAML at line 3, column 1 (expected the node content, but found '<stream end>')"
    else:
        meta.write_text("- 1\n- 2\n")
        expected = f"{meta}: not a rosbag2 metadata.yaml (no rosbag2_bagfile_information mapping)"
    code, err = bag_cli_lines(capsys, "extract", bag, "--topic", TOPIC, "--out", tmp_path / "ds")
    assert code == 2 and err == [f"blip-lora bag: error: {expected}"]


def test_message_compressed_storage_given_alone_says_pass_the_folder(tmp_path, capsys):
    bag = _bag(tmp_path / "rec", "humble", "sqlite3", compression="message")
    _assert_frames(read_frames(bag, TOPIC), noise_images())
    code, err = bag_cli_lines(capsys, "extract", storage_file(bag), "--topic", TOPIC, "--out", tmp_path / "ds")
    assert code == 2 and err == [f"blip-lora bag: error: {storage_file(bag)}: its messages are zstd-compressed "
                                 f"(compression_mode message in {bag / 'metadata.yaml'}); pass the bag folder {bag}"]
    alone = tmp_path / "alone.db3"  # moved away from its metadata.yaml: the data itself says so
    alone.write_bytes(storage_file(bag).read_bytes())
    code, err = bag_cli_lines(capsys, "extract", alone, "--topic", TOPIC, "--out", tmp_path / "ds")
    assert code == 2 and err == [f"blip-lora bag: error: {alone}: message 0 on {TOPIC} is zstd-compressed (recorded "
                                 f"with --compression-mode message); pass the bag folder with its metadata.yaml"]


def test_metadata_given_as_the_bag_says_pass_the_folder_and_a_compressed_file_is_read(tmp_path, capsys):
    bag = _bag(tmp_path / "rec", "humble", "sqlite3", compression="file")
    _assert_frames(read_frames(bag, TOPIC), noise_images())
    code, err = bag_cli_lines(capsys, "extract", bag / "metadata.yaml", "--topic", TOPIC, "--out", tmp_path / "ds")
    assert code == 2 and err == [f"blip-lora bag: error: {bag / 'metadata.yaml'}: pass the bag folder {bag}, not its "
                                 f"metadata.yaml"]
    _assert_frames(read_frames(bag / "rec.db3.zstd", TOPIC), noise_images())  # it used to say "pass the folder"


def _split_bag(tmp_path: Path) -> Path:
    """One recording split into two sqlite3 files (``--max-bag-size``), frames 0-2 and 3-5."""
    images = noise_images()
    frames = camera_frames(images, ["rgb8"], TOPIC)
    first = write_distro_bag(tmp_path / "a", frames[:3], "humble")
    second = write_distro_bag(tmp_path / "b", frames[3:], "humble")
    storage_file(first).rename(first / "a_0.db3")
    storage_file(second).rename(first / "a_1.db3")

    def edit(info):
        info["relative_file_paths"] = ["a_0.db3", "a_1.db3"]
        info["files"] = [dict(info["files"][0], path="a_0.db3"), dict(info["files"][0], path="a_1.db3")]
        info["message_count"] = 6
        info["topics_with_message_count"][0]["message_count"] = 6

    edit_metadata(first, edit)
    return first


def test_one_file_of_a_split_bag_says_it_reads_only_that_file(tmp_path, caplog):
    bag = _split_bag(tmp_path)
    _assert_frames(read_frames(bag, TOPIC), noise_images())
    caplog.clear()
    _assert_frames(read_frames(bag / "a_1.db3", TOPIC), noise_images()[3:])
    assert (f"{bag / 'a_1.db3'}: reading only this file, 2 of the 2 files of the split bag {bag}; "
            f"pass the folder to read them all") in caplog.text


def test_a_missing_model_folder_says_it_does_not_exist(tmp_path, capsys):
    bag = _bag(tmp_path / "rec")
    code, err = bag_cli_lines(capsys, "caption", bag, "--topic", TOPIC, "--out", tmp_path / "c.jsonl",
                     "--model", tmp_path / "no_model")
    assert code == 2 and err == [f"blip-lora bag: error: cannot load BLIP model '{tmp_path / 'no_model'}': "
                                 f"the folder does not exist"]


def _undecodable_bag(tmp_path: Path) -> Path:
    frames = [Frame(TOPIC, undecodable_msg(10**9 + i), 10**9 + i) for i in range(3)]
    return write_distro_bag(tmp_path / "bad", frames, "jazzy", "mcap")


def test_caption_and_extract_both_exit_2_when_no_frame_decodes(tmp_path, capsys, tiny_model_dir):
    bag = _undecodable_bag(tmp_path)
    code, err = bag_cli_lines(capsys, "extract", bag, "--topic", TOPIC, "--out", tmp_path / "ds")
    assert code == 2 and err[-1].startswith(f"blip-lora bag: error: {bag}: no frames extracted from {TOPIC}")
    code, err = bag_cli_lines(capsys, "caption", bag, "--topic", TOPIC, "--out", tmp_path / "c.jsonl",
                     "--model", tiny_model_dir, "--max-new-tokens", "2")
    assert code == 2 and err[-1].startswith(f"blip-lora bag: error: {storage_file(bag).parent}: no frames captioned "
                                            f"from {TOPIC} (3 messages, all undecodable); first: ")
    assert "unsupported encoding" in err[-1] and not (tmp_path / "c.jsonl").exists()


# ---- the guard itself ---------------------------------------------------------------------------------------

_GUARDED = {"main", "extract_frames", "replay_captions", "read_camera", "check_camera_topic"}
_WRAPPERS = {"bag_cli", "extract", "read", "replay"}
_BAG_TESTS = ("test_bags.py", "test_bag_inputs.py", "test_bag_recorders.py")


@pytest.mark.parametrize("name", _BAG_TESTS)
def test_bag_tests_run_every_command_through_the_input_guard(name):
    """The bag tests call a command on a bag only through the wrappers of bag_fixtures, which run it inside
    ``unchanged(bag)``."""
    tree = ast.parse((Path(__file__).parent / name).read_text())
    called = sorted(f"{n.lineno} {_name(n.func)}" for n in ast.walk(tree)
                    if isinstance(n, ast.Call) and _name(n.func) in _GUARDED)
    assert called == []
    fixtures = ast.parse((Path(__file__).parent / "bag_fixtures.py").read_text())
    wrappers = {f.name: f for f in ast.walk(fixtures) if isinstance(f, ast.FunctionDef) and f.name in _WRAPPERS}
    assert sorted(wrappers) == sorted(_WRAPPERS)
    for wrapper in wrappers.values():
        guards = [w for w in ast.walk(wrapper) if isinstance(w, ast.With)
                  and any(_name(item.context_expr.func) == "unchanged" for item in w.items
                          if isinstance(item.context_expr, ast.Call))]
        assert len(guards) == 1, wrapper.name
        assert any(isinstance(n, ast.Call) and _name(n.func) in _GUARDED for n in ast.walk(guards[0])), wrapper.name


def _name(func: ast.expr) -> str:
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""


def test_the_guard_sees_a_modified_input(tmp_path):
    bag = _bag(tmp_path / "rec")
    with pytest.raises(AssertionError, match="was modified"), unchanged(bag):
        (bag / "rec.db3-shm").write_bytes(b"")  # even a new companion file counts
    with pytest.raises(AssertionError, match="was modified"), unchanged(storage_file(bag)):
        os.utime(storage_file(bag))
        storage_file(bag).write_bytes(storage_file(bag).read_bytes() + b"x")
