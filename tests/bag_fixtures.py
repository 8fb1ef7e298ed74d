"""What the bag tests share: small ROS 2 bags built with rosbags' Writer (real message types, sqlite3 or mcap
storage, as each distro's recorder writes them), message builders, and the commands run on a bag, each
inside ``unchanged(bag)`` (tests/test_bag_inputs.py checks that no bag test calls a command another way)."""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

TYPESTORE = get_typestore(Stores.ROS2_HUMBLE)
IMAGE = "sensor_msgs/msg/Image"
COMPRESSED = "sensor_msgs/msg/CompressedImage"
STRING = "std_msgs/msg/String"
_STORAGE = {"sqlite3": StoragePlugin.SQLITE3, "mcap": StoragePlugin.MCAP}


@dataclass(frozen=True)
class Frame:
    """One message to write: topic, message object, receive time (ns)."""

    topic: str
    msg: Any
    time_ns: int


def _header(stamp_ns: int, frame_id: str = "camera") -> Any:
    types = TYPESTORE.types
    stamp = types["builtin_interfaces/msg/Time"](sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9)
    return types["std_msgs/msg/Header"](stamp=stamp, frame_id=frame_id)


def image_msg(rgb: np.ndarray, encoding: str = "rgb8", stamp_ns: int = 0, pad: int = 0) -> Any:
    """(H, W, 3) uint8 RGB -> sensor_msgs/Image in rgb8 or bgr8, rows padded by ``pad`` bytes."""
    height, width = rgb.shape[:2]
    pixels = rgb if encoding == "rgb8" else np.ascontiguousarray(rgb[..., ::-1])
    step = width * 3 + pad
    rows = np.zeros((height, step), np.uint8)
    rows[:, : width * 3] = pixels.reshape(height, width * 3)
    rows[:, width * 3:] = 0xAB  # padding garbage that must never leak into the decoded image
    return TYPESTORE.types[IMAGE](header=_header(stamp_ns), height=height, width=width, encoding=encoding,
                                  is_bigendian=0, step=step, data=rows.reshape(-1))


def raw_msg(height: int, width: int, encoding: str, step: int, data: bytes, stamp_ns: int = 0) -> Any:
    """A sensor_msgs/Image with arbitrary fields (for bad-encoding tests)."""
    return TYPESTORE.types[IMAGE](header=_header(stamp_ns), height=height, width=width, encoding=encoding,
                                  is_bigendian=0, step=step, data=np.frombuffer(data, np.uint8).copy())


def undecodable_msg(stamp_ns: int = 0) -> Any:
    """A 2x2 sensor_msgs/Image in yuv444, an encoding the decoder refuses."""
    return raw_msg(2, 2, "yuv444", 6, bytes(12), stamp_ns)


def noise_images(n: int = 6, seed: int = 0, shape: tuple[int, int] = (6, 8)) -> list[np.ndarray]:
    """``n`` seeded random (H, W, 3) uint8 RGB images."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*shape, 3), dtype=np.uint8) for _ in range(n)]


def compressed_msg(rgb: np.ndarray, fmt: str = "png", stamp_ns: int = 0) -> Any:
    """(H, W, 3) uint8 RGB -> sensor_msgs/CompressedImage encoded as png or jpeg."""
    ok, buf = cv2.imencode(".png" if fmt == "png" else ".jpg", np.ascontiguousarray(rgb[..., ::-1]))
    assert ok
    return TYPESTORE.types[COMPRESSED](header=_header(stamp_ns), format=fmt, data=buf.reshape(-1))


def string_msg(text: str) -> Any:
    return TYPESTORE.types[STRING](data=text)


def write_bag(path: Path, frames: Iterable[Frame], storage: str = "sqlite3") -> Path:
    """Write frames into a new bag folder at path (one connection per topic and type); returns path."""
    connections: dict[tuple[str, str], Any] = {}
    with Writer(path, version=9, storage_plugin=_STORAGE[storage]) as writer:
        for frame in frames:
            key = (frame.topic, frame.msg.__msgtype__)
            if key not in connections:
                connections[key] = writer.add_connection(frame.topic, key[1], typestore=TYPESTORE)
            data = TYPESTORE.serialize_cdr(frame.msg, key[1])
            writer.write(connections[key], frame.time_ns, bytes(data))
    return path


def storage_file(bag: Path) -> Path:
    """The single .db3 or .mcap file inside a bag folder."""
    (found,) = [p for p in bag.iterdir() if p.suffix in (".db3", ".mcap")]
    return found


def read_topic(bag: Path, topic: str) -> list[tuple[int, Any]]:
    """(receive time ns, message) of every message on topic, in bag order."""
    from rosbags.rosbag2 import Reader

    with Reader(bag) as reader:
        conns = [c for c in reader.connections if c.topic == topic]
        return [(t, TYPESTORE.deserialize_cdr(raw, c.msgtype)) for c, t, raw in reader.messages(conns)]


@functools.cache
def _seed_frames(seed_blocks: Path, per_scene: int, size: tuple[int, int]) -> tuple[np.ndarray, ...]:
    from PIL import Image

    images = sorted((seed_blocks / "image_train").glob("*.jpg"))
    scenes: dict[str, list[Path]] = {}
    for image in images:
        scenes.setdefault(image.stem.rsplit("_", 1)[0], []).append(image)
    picked = [p for group in scenes.values() for p in group[:per_scene]]
    frames = tuple(np.asarray(Image.open(p).convert("RGB").resize(size, Image.BILINEAR)) for p in picked)
    for frame in frames:
        frame.flags.writeable = False  # shared between tests
    return frames


def seed_frames(seed_blocks: Path, per_scene: int = 3, size: tuple[int, int] = (96, 54)) -> list[np.ndarray]:
    """The first ``per_scene`` photos of each seed_blocks scene, resized to size (W, H), as RGB arrays."""
    return list(_seed_frames(seed_blocks, per_scene, size))


def camera_frames(images: Sequence[np.ndarray], kinds: Sequence[str], topic: str = "/camera/image_raw",
                  start_ns: int = 1_700_000_000 * 10**9, period_ns: int = 100_000_000,
                  stamped: bool = True) -> list[Frame]:
    """One message per image on topic, kinds cycling over rgb8/bgr8/rgb8_pad/bgr8_pad/png/jpeg, one per period.

    Each message is received 3 ms after its header stamp; ``stamped=False`` leaves the header stamp zero.
    """
    frames = []
    for i, rgb in enumerate(images):
        kind, stamp = kinds[i % len(kinds)], start_ns + i * period_ns
        header_ns = stamp if stamped else 0
        if kind in ("png", "jpeg"):
            msg = compressed_msg(rgb, kind, header_ns)
        else:
            msg = image_msg(rgb, kind.removesuffix("_pad"), header_ns, pad=5 if kind.endswith("_pad") else 0)
        frames.append(Frame(topic, msg, stamp + 3_000_000))
    return frames


# ---- bags as each ROS 2 distro's recorder writes them -------------------------------------------------

METADATA_VERSION = {"foxy": 4, "humble": 5, "jazzy": 9}
_V8_ONLY_KEYS = {4: ("files", "custom_data", "ros_distro"), 5: ("custom_data", "ros_distro")}
STORES = {"foxy": Stores.ROS2_FOXY, "humble": Stores.ROS2_HUMBLE, "jazzy": Stores.ROS2_JAZZY}


def write_distro_bag(path: Path, frames: Iterable[Frame], distro: str, storage: str = "sqlite3",
                     compression: str | None = None) -> Path:
    """A bag folder as ``distro``'s ``ros2 bag record`` writes it: messages serialised with that distro's
    typestore and metadata.yaml in its version (Foxy 4, Humble 5, Jazzy 9, with their keys only).

    ``compression`` "file" or "message" compresses with zstd like ``--compression-mode``.
    """
    from rosbags.rosbag2 import CompressionFormat, CompressionMode
    from rosbags.typesys import get_typestore

    store, version = get_typestore(STORES[distro]), METADATA_VERSION[distro]
    connections: dict[tuple[str, str], Any] = {}
    writer = Writer(path, version=9 if version == 9 else 8, storage_plugin=_STORAGE[storage])
    if compression:
        writer.set_compression(CompressionMode[compression.upper()], CompressionFormat.ZSTD)
    with writer:
        for frame in frames:
            key = (frame.topic, frame.msg.__msgtype__)
            if key not in connections:
                connections[key] = writer.add_connection(frame.topic, key[1], typestore=store)
            writer.write(connections[key], frame.time_ns, bytes(store.serialize_cdr(frame.msg, key[1])))
    if version < 8:
        edit_metadata(path, lambda info: _downgrade(info, version))
    if storage == "sqlite3" and not compression:
        sqlite_edit(storage_file(path), *_SQLITE_SCHEMA_EDITS[distro])
    return path


# what rosbags' sqlite schema (4, Jazzy) has that the older recorders' schemas did not
_SQLITE_SCHEMA_EDITS = {
    "foxy": ("DROP TABLE schema", "DROP TABLE metadata", "DROP TABLE message_definitions",
             "ALTER TABLE topics DROP COLUMN type_description_hash"),
    "humble": ("UPDATE schema SET schema_version = 3, ros_distro = 'humble'", "DROP TABLE message_definitions",
               "ALTER TABLE topics DROP COLUMN type_description_hash"),
    "jazzy": ("UPDATE schema SET ros_distro = 'jazzy'",),
}


def _downgrade(info: dict, version: int) -> None:
    info["version"] = version
    for key in _V8_ONLY_KEYS[version]:
        info.pop(key, None)
    for topic in info["topics_with_message_count"]:
        topic["topic_metadata"].pop("type_description_hash", None)


def edit_metadata(bag: Path, edit: Any) -> None:
    """Apply ``edit(info)`` to the rosbag2_bagfile_information mapping of bag/metadata.yaml."""
    import yaml

    data = yaml.safe_load((bag / "metadata.yaml").read_text())
    edit(data["rosbag2_bagfile_information"])
    (bag / "metadata.yaml").write_text(yaml.safe_dump(data, sort_keys=False))


def sqlite_edit(db3: Path, *statements: str) -> None:
    """Run SQL statements on a .db3 being built (never on a bag under test)."""
    import sqlite3

    con = sqlite3.connect(db3)
    with con:
        for statement in statements:
            con.execute(statement)
    con.close()


def file_digests(bag: Path) -> dict[str, str]:
    """sha256 of every file of an input bag: a folder's files, or a storage file with its companions
    (``-wal``, ``-shm``) and the metadata.yaml beside it. New or vanished files show as changed keys."""
    import hashlib

    bag = Path(os.path.realpath(bag))
    if bag.is_dir():
        files = [p for p in bag.rglob("*") if p.is_file()]
    else:
        files = [p for p in bag.parent.iterdir() if p.name.startswith(bag.name) or p.name == "metadata.yaml"]
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(files)}


@contextmanager
def unchanged(bag: Any) -> Iterator[None]:
    """Assert that the input ``bag`` is byte for byte the same after the block, even if the block raises."""
    before = file_digests(Path(bag)) if Path(bag).exists() else None
    try:
        yield
    finally:
        if before is not None:
            assert file_digests(Path(bag)) == before, f"the input bag {bag} was modified"


# ---- the commands, run on a bag only through these (the input must come out byte for byte unchanged) -------


def bag_cli(*args: Any) -> int:
    """`blip-lora bag ACTION BAG ...`: ``args`` after "bag", the bag second; the exit code."""
    from blip_lora_training.cli import main

    with unchanged(args[1]):
        return main(["bag", *map(str, args)])


def bag_cli_lines(capsys: Any, *args: Any) -> tuple[int, list[str]]:
    """``bag_cli`` with stderr captured: (exit code, stderr lines)."""
    capsys.readouterr()
    code = bag_cli(*args)
    return code, capsys.readouterr().err.splitlines()


def extract(bag: Any, out: Any, options: Any, **kwargs: Any) -> Any:
    """``extract_frames`` (its report)."""
    from blip_lora_core.bags.extract import extract_frames

    with unchanged(bag):
        return extract_frames(bag, out, options, **kwargs)


def read(bag: Any, topic: str) -> list:
    """Every ``BagMessage`` of ``read_camera``."""
    from blip_lora_core.bags.reader import read_camera

    with unchanged(bag):
        return list(read_camera(bag, topic))


def read_frames(bag: Any, topic: str) -> list[np.ndarray]:
    """Every frame on ``topic`` decoded to (H, W, 3) uint8 RGB."""
    from blip_lora_core.runtime.image_msgs import decode_message

    return [decode_message(m.msg) for m in read(bag, topic)]


def mean_caption(image: np.ndarray) -> str:
    """A caption that differs between frames, without a model."""
    return f"mean {image.mean():.3f}"


def replay(bag: Any, topic: str, caption_fn: Any = mean_caption, **options: Any) -> tuple[list, Any]:
    """``replay_captions`` with ``ReplayOptions(topic, **options)``: (captions, report)."""
    from blip_lora_core.bags.caption import ReplayOptions, replay_captions

    with unchanged(bag):
        return replay_captions(bag, caption_fn, ReplayOptions(topic, **options))
