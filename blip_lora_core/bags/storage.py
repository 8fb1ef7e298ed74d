"""Open what a ROS 2 recorder wrote: a bag folder's metadata.yaml and each of its storage files, read-only.

Storage files are read one by one with rosbags' storage readers, and their own connections are used, so a
folder reads what its files hold even where metadata.yaml describes a topic differently (its QoS text, say).
A ``.db3`` left with a ``-wal`` file by a recorder that was killed is read whole from a checkpointed copy:
rosbags opens sqlite with ``immutable=1``, which ignores the WAL, and opening the original normally would
write the WAL into it. Inputs are never written to.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any

import yaml
from rosbags.rosbag2.storage_mcap import McapReader
from rosbags.rosbag2.storage_sqlite3 import Sqlite3Reader

from ..errors import BagError

try:  # rosbags' own zstd: the standard library's from Python 3.14, the backport before
    from compression import zstd  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the Python version
    from backports import zstd  # type: ignore[import-not-found,no-redef]

log = logging.getLogger(__name__)

STORAGE_SUFFIXES = {".db3": "sqlite3", ".mcap": "mcap"}
METADATA = "metadata.yaml"
METADATA_VERSIONS = range(1, 10)  # Ardent (1) to Jazzy and later (9)
CORRUPT_HINT = "the file may be truncated or corrupt"
_RECOVER_HINT = {"mcap": f"{CORRUPT_HINT} (`mcap recover` can save what is left)", "sqlite3": CORRUPT_HINT}


@dataclass(frozen=True)
class BagInfo:
    """What a bag folder's metadata.yaml says: storage files, compression and messages per topic."""

    metadata: Path
    version: int
    storage: str
    files: list[Path]
    compression: str | None  # None, "file" or "message" (zstd)
    declared: dict[str, int] = field(default_factory=dict)  # topic -> message count


@dataclass
class OpenBag:
    """A bag opened for reading: ``storages`` are (storage file as named by the bag, open rosbags reader)."""

    path: Path
    info: BagInfo | None
    storages: list[tuple[Path, Any]]

    @property
    def connections(self) -> list[Any]:
        return [conn for _, storage in self.storages for conn in storage.connections]


def reason(exc: BaseException) -> str:
    """An exception's text on one line, without a trailing full stop."""
    return " ".join(str(exc).split()).rstrip(".") or type(exc).__name__


def resolve_bag(path: str | os.PathLike) -> Path:
    """What to open: a bag folder, a .db3/.mcap file, or the one storage file of a folder without metadata."""
    path = Path(path)
    if path.is_file():
        if path.name == METADATA:
            raise BagError(f"{path}: pass the bag folder {path.parent}, not its {METADATA}")
        if path.suffix == ".zstd":
            raise BagError(f"{path}: a zstd-compressed storage file; pass the bag folder {path.parent}, "
                           f"whose {METADATA} says how to read it")
        if path.suffix not in STORAGE_SUFFIXES:
            raise BagError(f"{path}: not a ROS 2 bag (expected a .db3 or .mcap file or a bag folder)")
        return path
    if not path.is_dir():
        raise BagError(f"{path}: no such bag file or folder")
    if (path / METADATA).is_file():
        return path
    found = sorted(p for p in path.iterdir() if p.suffix in STORAGE_SUFFIXES and p.is_file())
    if len(found) != 1:
        raise BagError(f"{path}: folder has no {METADATA} and {len(found)} .db3/.mcap files (need exactly 1)")
    return found[0]


@contextmanager
def open_storage(path: str | os.PathLike) -> Iterator[OpenBag]:
    """The bag at ``path`` opened read-only; BagError naming the file if it cannot be."""
    resolved = resolve_bag(path)
    with ExitStack() as stack:
        if resolved.is_dir():
            info = read_metadata(resolved)
            files = [(f, _unpacked(f, stack) if info.compression == "file" else f) for f in info.files]
        else:
            info = None
            _check_single_file(resolved)
            files = [(resolved, resolved)]
        storages = [(named, stack.enter_context(_opened(named, real))) for named, real in files]
        yield OpenBag(resolved, info, storages)


def read_metadata(folder: Path) -> BagInfo:
    """Parse and check folder/metadata.yaml (versions 1 to 9); BagError naming it on one line."""
    path = folder / METADATA
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise BagError(f"{path}: cannot read it: {reason(exc)}") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise BagError(f"{path}: not valid YAML{where} ({getattr(exc, 'problem', None) or 'syntax error'})") from exc
    info = data.get("rosbag2_bagfile_information") if isinstance(data, dict) else None
    if not isinstance(info, dict):
        raise BagError(f"{path}: not a rosbag2 {METADATA} (no rosbag2_bagfile_information mapping)")
    try:
        return _bag_info(path, info)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise BagError(f"{path}: not a valid rosbag2 {METADATA} ({type(exc).__name__}: {reason(exc)})") from exc


def _bag_info(path: Path, info: dict[str, Any]) -> BagInfo:
    version = info["version"]
    if version not in METADATA_VERSIONS:
        raise BagError(f"{path}: metadata version {version} is not one this tool reads "
                       f"({METADATA_VERSIONS[0]} to {METADATA_VERSIONS[-1]})")
    storage = info["storage_identifier"]
    if storage not in STORAGE_SUFFIXES.values():
        raise BagError(f"{path}: storage {storage!r} is not supported (sqlite3 or mcap)")
    mode = str(info.get("compression_mode") or "").lower()
    compression = None if mode in ("", "none") else mode
    if compression not in (None, "file", "message") or (compression and info.get("compression_format") != "zstd"):
        raise BagError(f"{path}: compression {info.get('compression_format')!r} in mode {mode!r} is not "
                       f"supported (zstd, file or message)")
    files = [path.parent / PurePath(name).name for name in info["relative_file_paths"]]
    if missing := [f.name for f in files if not f.is_file()]:
        raise BagError(f"{path}: lists storage file(s) {', '.join(missing)} missing from {path.parent}")
    declared: dict[str, int] = {}
    for entry in info.get("topics_with_message_count") or []:
        topic = entry.get("topic_metadata") or entry["topic_and_type"]  # "topic_and_type" in version 1
        declared[topic["name"]] = declared.get(topic["name"], 0) + int(entry["message_count"])
    return BagInfo(path, version, storage, files, compression, declared)


def _check_single_file(path: Path) -> None:
    """A storage file given alone: refuse message-compressed data, say when it is one file of several."""
    try:
        info = read_metadata(path.parent) if (path.parent / METADATA).is_file() else None
    except BagError:
        return  # the folder's metadata does not matter when the file is read alone
    if info is None or path not in info.files:
        return
    if info.compression == "message":
        raise BagError(f"{path}: its messages are zstd-compressed (compression_mode message in "
                       f"{info.metadata}); pass the bag folder {path.parent}")
    if len(info.files) > 1:
        log.warning("%s: reading only this file, %d of the %d files of the split bag %s; pass the folder to "
                    "read them all", path, info.files.index(path) + 1, len(info.files), path.parent)


def _unpacked(path: Path, stack: ExitStack) -> Path:
    """A zstd-compressed storage file (compression_mode file) decompressed into a temporary folder."""
    folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="blip_lora_bag_")))
    target = folder / path.with_suffix("").name
    try:
        with path.open("rb") as raw, zstd.open(raw, "rb") as packed, target.open("wb") as out:
            shutil.copyfileobj(packed, out)
    except (OSError, zstd.ZstdError, EOFError) as exc:
        raise BagError(f"{path}: cannot decompress it: {reason(exc)}; {CORRUPT_HINT}") from exc
    return target


@contextmanager
def _opened(named: Path, path: Path) -> Iterator[Any]:
    """An open rosbags storage reader for ``path`` (``named`` is what error messages call it)."""
    kind = STORAGE_SUFFIXES.get(path.suffix)
    if kind is None:
        raise BagError(f"{named}: not a .db3 or .mcap storage file")
    with ExitStack() as stack:
        if kind == "sqlite3" and _wal(path).exists():
            path = _checkpointed_copy(named, path, stack)
        storage = Sqlite3Reader(path) if kind == "sqlite3" else McapReader(path)
        try:
            storage.open()
        except Exception as exc:  # apsw, mcap and OSError failures all mean "cannot read this file"
            raise BagError(f"{named}: cannot open it as {kind} storage: {reason(exc)}; {corrupt_hint(named)}") from exc
        try:
            yield storage
        finally:
            storage.close()


def corrupt_hint(named: Path) -> str:
    """What to say about a storage file that fails to read: mcap files can be recovered with the mcap tool."""
    suffix = Path(named.name.removesuffix(".zstd")).suffix
    return _RECOVER_HINT.get(STORAGE_SUFFIXES.get(suffix, ""), CORRUPT_HINT)


def _wal(db3: Path) -> Path:
    return db3.with_name(db3.name + "-wal")


def _checkpointed_copy(named: Path, db3: Path, stack: ExitStack) -> Path:
    """The .db3 with the messages of its -wal file folded in, as a temporary copy (the input stays as it is)."""
    folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="blip_lora_wal_")))
    copy = folder / db3.name
    try:
        for suffix in ("", "-wal", "-shm"):
            if (source := db3.with_name(db3.name + suffix)).exists():
                shutil.copyfile(source, folder / source.name)
        con = sqlite3.connect(copy)
        try:
            con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            con.close()
    except (OSError, sqlite3.Error) as exc:
        raise BagError(f"{named}: cannot read it with its {_wal(named).name}: {reason(exc)}; {CORRUPT_HINT}") from exc
    log.info("%s: read with the messages in %s (the recording was not closed cleanly)", named, _wal(named).name)
    return copy


def message_payloads(bag: OpenBag, conns: list[Any], topic: str) -> Iterator[tuple[Path, Any, int, bytes]]:
    """(storage file, connection, receive ns, CDR bytes) of ``conns``' messages, file by file.

    A failure part-way through a file (apsw, mcap, zstd) raises BagError naming the file.
    """
    wanted, count = {id(c) for c in conns}, 0
    for named, storage in bag.storages:
        mine = [c for c in storage.connections if id(c) in wanted]
        messages = storage.messages(mine) if mine else iter(())
        while True:
            try:
                conn, time_ns, raw = next(messages)
            except StopIteration:
                break
            except Exception as exc:
                raise BagError(f"{named}: cannot read message {count} on {topic}: {reason(exc)}; "
                               f"{corrupt_hint(named)}") from exc
            count += 1
            if bag.info is not None and bag.info.compression == "message":
                raw = _decompressed(named, raw)
            yield named, conn, time_ns, raw


def _decompressed(named: Path, raw: bytes) -> bytes:
    try:
        return zstd.decompress(raw)
    except zstd.ZstdError as exc:
        raise BagError(f"{named}: a message cannot be decompressed: {reason(exc)}; {CORRUPT_HINT}") from exc
