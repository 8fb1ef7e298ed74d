"""Read camera frames from ROS 2 bags without ROS (through ``rosbags``).

A bag is a rosbag2 folder (metadata.yaml plus .db3 or .mcap files), a bare ``.db3`` / ``.mcap`` file, or a
folder without metadata.yaml that holds exactly one storage file (a recording that was cut short).
Types are accepted in both ROS 2 spellings (``sensor_msgs/msg/Image`` and early ``sensor_msgs/Image``).
Every failure is raised as ``BagError`` naming the file; third-party exceptions never leak out.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rosbags.typesys import Stores, get_typestore

from ..errors import BagError
from .storage import OpenBag, corrupt_hint, message_payloads, open_storage, reason

log = logging.getLogger(__name__)

IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_TYPE = "sensor_msgs/msg/CompressedImage"
CAMERA_TYPES = (IMAGE_TYPE, COMPRESSED_TYPE)
STRING_TYPE = "std_msgs/msg/String"
TYPESTORE = get_typestore(Stores.ROS2_HUMBLE)  # sensor_msgs and std_msgs are the same in every ROS 2 distro
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


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


def ros2_type(name: str) -> str:
    """``pkg/Type`` (Ardent to Dashing) -> ``pkg/msg/Type``; other names unchanged."""
    parts = name.split("/")
    return f"{parts[0]}/msg/{parts[1]}" if len(parts) == 2 else name


def bag_topics(bag: OpenBag) -> dict[str, str]:
    """Topic -> message type (types joined by " | " when connections disagree), sorted by topic."""
    types: dict[str, set[str]] = {}
    for conn in bag.connections:
        types.setdefault(conn.topic, set()).add(ros2_type(conn.msgtype))
    return {topic: " | ".join(sorted(types[topic])) for topic in sorted(types)}


def camera_connections(bag: OpenBag, topic: str) -> list[Any]:
    """The connections of ``topic``; BagError if it is missing or does not carry CDR camera images."""
    conns = [c for c in bag.connections if c.topic == topic]
    if not conns:
        listing = ", ".join(f"{t} ({m})" for t, m in bag_topics(bag).items()) or "none"
        raise BagError(f"{bag.path}: topic {topic} not found; topics present: {listing}")
    bad = sorted({c.msgtype for c in conns if ros2_type(c.msgtype) not in CAMERA_TYPES})
    if bad:
        raise BagError(f"{bag.path}: topic {topic} has message type {', '.join(bad)}, "
                       f"expected {' or '.join(CAMERA_TYPES)}")
    formats = sorted({fmt for c in conns if (fmt := getattr(c.ext, "serialization_format", "cdr")) != "cdr"})
    if formats:
        raise BagError(f"{bag.path}: topic {topic} is serialised as {', '.join(formats)}; only cdr is supported")
    _check_declared_count(bag, topic, sum(c.msgcount for c in conns))
    return conns


def _check_declared_count(bag: OpenBag, topic: str, held: int) -> None:
    """Compare what metadata.yaml declares with what the storage files hold (read them either way)."""
    declared = bag.info.declared.get(topic) if bag.info is not None else None
    if declared is None or declared == held:
        return
    if held < declared:
        raise BagError(f"{bag.info.metadata}: declares {declared} messages on {topic} but its storage files hold "
                       f"{held}: {declared - held} are missing from the bag")
    log.warning("%s: declares %d messages on %s but its storage files hold %d (a recording that was not "
                "closed cleanly?); reading all %d (`ros2 bag reindex` rewrites %s)", bag.info.metadata, declared,
                topic, held, held, bag.info.metadata.name)


def check_camera_topic(path: str | os.PathLike, topic: str) -> int:
    """Open the bag and check that ``topic`` carries camera images; returns its message count (cheap)."""
    with open_storage(path) as bag:
        return sum(c.msgcount for c in camera_connections(bag, topic))


def read_camera(path: str | os.PathLike, topic: str) -> Iterator[BagMessage]:
    """Camera messages on ``topic`` in bag (receive time) order; BagError on a missing topic or corrupt data."""
    with open_storage(path) as bag:
        conns = camera_connections(bag, topic)
        for index, (where, msgtype, time_ns, raw) in enumerate(_raw_messages(bag, conns, topic)):
            yield _bag_message(index, time_ns, _deserialize(raw, msgtype, where, topic, index))


def _raw_messages(bag: OpenBag, conns: list[Any], topic: str) -> Iterator[tuple[Path, str, int, bytes]]:
    """(storage file, msgtype, receive ns, raw bytes); storage failures and missing messages raise BagError.

    Each file must yield as many messages as its own index declares: a damaged index that silently drops
    messages is an error, not a shorter recording.
    """
    counts = {id(c): 0 for c in conns}
    for where, conn, time_ns, raw in message_payloads(bag, conns, topic):
        counts[id(conn)] += 1
        yield where, conn.msgtype, time_ns, raw
    for named, storage in bag.storages:
        for conn in (c for c in storage.connections if id(c) in counts and counts[id(c)] != c.msgcount):
            raise BagError(f"{named}: read {counts[id(conn)]} messages on {topic} but the file's index declares "
                           f"{conn.msgcount}; {corrupt_hint(named)}")


def _deserialize(raw: bytes, msgtype: str, where: Path, topic: str, index: int) -> Any:
    try:
        return TYPESTORE.deserialize_cdr(raw, ros2_type(msgtype))
    except Exception as exc:  # malformed CDR raises struct/index/unicode errors
        if raw[:4] == _ZSTD_MAGIC:
            raise BagError(f"{where}: message {index} on {topic} is zstd-compressed (recorded with "
                           f"--compression-mode message); pass the bag folder with its metadata.yaml") from exc
        raise BagError(f"{where}: message {index} on {topic} ({msgtype}) cannot be deserialised: "
                       f"{type(exc).__name__}: {reason(exc)}; {corrupt_hint(where)}") from exc


def _bag_message(index: int, time_ns: int, msg: Any) -> BagMessage:
    stamp = getattr(getattr(msg, "header", None), "stamp", None)
    stamp_ns = int(stamp.sec) * 10**9 + int(stamp.nanosec) if stamp is not None else 0
    if stamp_ns > 0:
        return BagMessage(index, time_ns, stamp_ns, "header", msg)
    return BagMessage(index, time_ns, time_ns, "receive", msg)


def stamp_parts(stamp_ns: int) -> dict[str, int]:
    """ns -> {"sec": ..., "nanosec": ...} as in builtin_interfaces/Time."""
    return {"sec": stamp_ns // 10**9, "nanosec": stamp_ns % 10**9}


def ns_to_seconds(stamp_ns: int) -> float:
    """ns -> seconds as a float (sec + nanosec / 1e9)."""
    return stamp_ns // 10**9 + (stamp_ns % 10**9) / 1e9
