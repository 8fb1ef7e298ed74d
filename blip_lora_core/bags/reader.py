"""Read camera frames from ROS 2 bags and write outputs whole, without ROS (through ``rosbags``).

A bag is a rosbag2 folder (metadata.yaml plus .db3 or .mcap files), a bare ``.db3`` / ``.mcap`` file, or a
folder without metadata.yaml that holds exactly one storage file (a recording that was cut short).
Every failure is raised as ``BagError`` naming the file; third-party exceptions never leak out.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from ..atomic import fsync_dir
from ..errors import BagError

IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_TYPE = "sensor_msgs/msg/CompressedImage"
CAMERA_TYPES = (IMAGE_TYPE, COMPRESSED_TYPE)
STRING_TYPE = "std_msgs/msg/String"
STORAGE_SUFFIXES = {".db3": "sqlite3", ".mcap": "mcap"}
TYPESTORE = get_typestore(Stores.ROS2_HUMBLE)  # sensor_msgs and std_msgs are the same in every ROS 2 distro
_HINT = "the file may be truncated or corrupt (try `ros2 bag reindex` or `mcap recover`)"


@dataclass(frozen=True)
class BagMessage:
    """One camera message: its 0-based index on the topic, receive time and stamp (ns), and the message.

    ``stamp_ns`` is the header stamp, or the bag receive time when the header stamp is zero
    (``stamp_source`` says which).
    """

    index: int
    time_ns: int
    stamp_ns: int
    stamp_source: str
    msg: Any


def resolve_bag(path: str | os.PathLike) -> Path:
    """The path rosbags should open: a bag folder, a .db3/.mcap file, or the one storage file of a bare folder."""
    path = Path(path)
    if path.is_file():
        if path.suffix not in STORAGE_SUFFIXES:
            raise BagError(f"{path}: not a ROS 2 bag (expected a .db3 or .mcap file or a bag folder)")
        return path
    if not path.is_dir():
        raise BagError(f"{path}: no such bag file or folder")
    if (path / "metadata.yaml").is_file():
        return path
    found = sorted(p for p in path.iterdir() if p.suffix in STORAGE_SUFFIXES and p.is_file())
    if len(found) != 1:
        raise BagError(f"{path}: folder has no metadata.yaml and {len(found)} .db3/.mcap files (need exactly 1)")
    return found[0]


@contextmanager
def open_bag(path: str | os.PathLike) -> Iterator[Reader]:
    """An open rosbags Reader; any failure to open becomes a BagError naming the file."""
    resolved = resolve_bag(path)
    try:
        reader = Reader(resolved)
        reader.open()
    except Exception as exc:  # rosbags, apsw and OSError failures all mean "cannot read this bag"
        raise BagError(f"{resolved}: cannot open bag: {exc}; {_HINT}") from exc
    try:
        yield reader
    finally:
        reader.close()


def bag_topics(reader: Reader) -> dict[str, str]:
    """Topic -> message type (types joined by " | " when connections disagree), sorted by topic."""
    types: dict[str, set[str]] = {}
    for conn in reader.connections:
        types.setdefault(conn.topic, set()).add(conn.msgtype)
    return {topic: " | ".join(sorted(types[topic])) for topic in sorted(types)}


def camera_connections(reader: Reader, topic: str, path: str | os.PathLike) -> list[Any]:
    """The connections of ``topic``; BagError if it is missing or does not carry camera images."""
    conns = [c for c in reader.connections if c.topic == topic]
    if not conns:
        listing = ", ".join(f"{t} ({m})" for t, m in bag_topics(reader).items()) or "none"
        raise BagError(f"{path}: topic {topic} not found; topics present: {listing}")
    bad = sorted({c.msgtype for c in conns if c.msgtype not in CAMERA_TYPES})
    if bad:
        raise BagError(f"{path}: topic {topic} has message type {', '.join(bad)}, "
                       f"expected {' or '.join(CAMERA_TYPES)}")
    return conns


def check_camera_topic(path: str | os.PathLike, topic: str) -> int:
    """Open the bag and check that ``topic`` carries camera images; returns its message count (cheap)."""
    with open_bag(path) as reader:
        return sum(c.msgcount for c in camera_connections(reader, topic, reader.path))


def read_camera(path: str | os.PathLike, topic: str) -> Iterator[BagMessage]:
    """Camera messages on ``topic`` in bag (receive time) order; BagError on a missing topic or corrupt data."""
    with open_bag(path) as reader:
        conns = camera_connections(reader, topic, path)
        where = reader.path
        for index, item in enumerate(_raw_messages(reader, conns, where)):
            time_ns, msgtype, raw = item
            msg = _deserialize(raw, msgtype, where, topic, index)
            yield _bag_message(index, time_ns, msg)


def _raw_messages(reader: Reader, conns: list[Any], where: Any) -> Iterator[tuple[int, str, bytes]]:
    """(receive ns, msgtype, raw bytes); storage failures and missing messages raise BagError.

    The count read must match the count the bag's index declares: a damaged index that silently drops
    messages is an error, not a shorter recording.
    """
    messages, topic = reader.messages(conns), conns[0].topic
    count, expected = 0, sum(c.msgcount for c in conns)
    while True:
        try:
            conn, time_ns, raw = next(messages)
        except StopIteration:
            break
        except Exception as exc:  # apsw / mcap / zstd failures part-way through the file
            raise BagError(f"{where}: cannot read message {count} on {topic}: {exc}; {_HINT}") from exc
        count += 1
        yield time_ns, conn.msgtype, raw
    if expected and count != expected:
        raise BagError(f"{where}: read {count} messages on {topic} but the bag index declares {expected}; {_HINT}")


def _deserialize(raw: bytes, msgtype: str, where: Any, topic: str, index: int) -> Any:
    try:
        return TYPESTORE.deserialize_cdr(raw, msgtype)
    except Exception as exc:  # malformed CDR raises struct/index/unicode errors
        raise BagError(f"{where}: message {index} on {topic} ({msgtype}) cannot be deserialised: "
                       f"{type(exc).__name__}: {exc}; {_HINT}") from exc


def _bag_message(index: int, time_ns: int, msg: Any) -> BagMessage:
    stamp = getattr(getattr(msg, "header", None), "stamp", None)
    stamp_ns = int(stamp.sec) * 10**9 + int(stamp.nanosec) if stamp is not None else 0
    if stamp_ns > 0:
        return BagMessage(index, time_ns, stamp_ns, "header", msg)
    return BagMessage(index, time_ns, time_ns, "receive", msg)


def stamp_parts(stamp_ns: int) -> dict[str, int]:
    """ns -> {"sec": ..., "nanosec": ...} as in builtin_interfaces/Time."""
    return {"sec": stamp_ns // 10**9, "nanosec": stamp_ns % 10**9}


def stamp_seconds(stamp_ns: int) -> float:
    """ns -> seconds as a float (sec + nanosec / 1e9)."""
    return stamp_ns // 10**9 + (stamp_ns % 10**9) / 1e9


# ---- outputs that appear whole ------------------------------------------------------------------------


def check_output(out: Path, force: bool, looks_right: Callable[[Path], bool], what: str) -> None:
    """Refuse to replace an existing non-empty ``out`` unless ``force``; even then only if it ``looks_right``."""
    if not (out.exists() or out.is_symlink()):
        return
    if out.is_dir() and not any(out.iterdir()):
        return
    if not force:
        raise BagError(f"{out} exists and is not empty; pass --force to replace it")
    if out.is_symlink() or not looks_right(out):
        raise BagError(f"{out} does not look like {what}; refusing to replace it even with --force "
                       f"(remove it yourself)")


@contextmanager
def staged_output(out: Path) -> Iterator[Path]:
    """A path in a temporary sibling folder of ``out`` to create (file or folder) in place of ``out``.

    On success it is renamed over ``out``; on any failure it is removed and ``out`` is left untouched.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    holder = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        yield holder / out.name
        _replace(holder / out.name, out)
    finally:
        shutil.rmtree(holder, ignore_errors=True)


def _replace(staged: Path, out: Path) -> None:
    """Put staged at out: the old out (file or folder) is moved aside first and deleted after."""
    trash = None
    if out.exists():
        trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
        os.replace(out, trash / out.name)
    try:
        os.replace(staged, out)
    except OSError as exc:
        if trash is not None:
            os.replace(trash / out.name, out)
        raise BagError(f"could not move the output into place at {out}: {exc}") from exc
    finally:
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
    fsync_dir(out.parent)


def looks_like_bag(path: Path) -> bool:
    """A bag folder (metadata.yaml) or a .db3/.mcap file: something --force may replace."""
    return (path / "metadata.yaml").is_file() if path.is_dir() else path.suffix in STORAGE_SUFFIXES


def write_strings(out: Path, topic: str, items: list[tuple[int, str]], *, storage: str = "mcap",
                  force: bool = False) -> None:
    """Write (time ns, text) pairs as std_msgs/String on ``topic`` into a new bag.

    ``out`` ending in .mcap or .db3 gives that single storage file; otherwise a bag folder with the
    given storage ("mcap" or "sqlite3"). The output appears whole, or not at all.
    """
    single = out.suffix in STORAGE_SUFFIXES
    check_output(out, force, looks_like_bag, "a ROS 2 bag")
    with staged_output(out) as staged:
        folder = staged.with_name("bag") if single else staged
        _write_bag(folder, topic, items, STORAGE_SUFFIXES.get(out.suffix, storage))
        if single:
            os.replace(next(p for p in folder.iterdir() if p.suffix == out.suffix), staged)


def _write_bag(folder: Path, topic: str, items: list[tuple[int, str]], storage: str) -> None:
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    string = TYPESTORE.types[STRING_TYPE]
    try:
        with Writer(folder, version=9, storage_plugin=plugin) as writer:
            conn = writer.add_connection(topic, STRING_TYPE, typestore=TYPESTORE)
            for time_ns, text in items:
                writer.write(conn, time_ns, bytes(TYPESTORE.serialize_cdr(string(data=text), STRING_TYPE)))
    except Exception as exc:  # rosbags WriterError, OSError (disk full), ...
        raise BagError(f"could not write bag {folder}: {exc}") from exc
