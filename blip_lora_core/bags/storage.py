"""Open what a ROS 2 recorder wrote: a bag folder's metadata.yaml and each of its storage files, read-only.

Storage files are read one by one with rosbags' storage readers, and their own connections are used, so a
folder reads what its files hold even where metadata.yaml describes a topic differently (its QoS text, say).
What a killed recorder leaves is read as far as it is intact: a ``.db3`` with a ``-wal`` file whole, from a
checkpointed copy (rosbags opens sqlite with ``immutable=1``, which ignores the WAL, and opening the original
normally would write the WAL into it); an ``.mcap`` without its summary up to where it was cut
(``unclosed_mcap``); a folder without metadata.yaml through every storage file in it, compressed or not, in
recording order. A storage file is read as what its first bytes say it is, whatever its name. What the user
should know about the bag is collected in ``OpenBag.notes``, for the caller to say once. Inputs are never
written to.
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import struct
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
from .unclosed_mcap import MAGIC as MCAP_MAGIC
from .unclosed_mcap import UnclosedMcapReader

try:  # rosbags' own zstd: the standard library's from Python 3.14, the backport before
    from compression import zstd  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the Python version
    from backports import zstd  # type: ignore[import-not-found,no-redef]

STORAGE_SUFFIXES = {".db3": "sqlite3", ".mcap": "mcap"}
METADATA = "metadata.yaml"
METADATA_VERSIONS = range(1, 10)  # Ardent (1) to Jazzy and later (9)
CORRUPT_HINT = "the file may be truncated or corrupt"
_RECOVER_HINT = {"mcap": f"{CORRUPT_HINT} (`mcap recover` can save what is left)", "sqlite3": CORRUPT_HINT}
_MAGICS = {b"SQLite format 3\x00": "sqlite3", MCAP_MAGIC: "mcap"}
_SPLIT_INDEX = re.compile(r"^(.*)_(\d+)$")  # rec_0, rec_1, ... as a recorder splits a bag


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
    """A bag opened for reading: ``storages`` are (storage file as named by the bag, open storage reader);
    ``notes`` what the user should know about it (said once by whoever reads it); ``kinds`` the storage of
    each file ("sqlite3" or "mcap", from its content)."""

    path: Path
    info: BagInfo | None
    storages: list[tuple[Path, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    kinds: dict[Path, str] = field(default_factory=dict)

    @property
    def connections(self) -> list[Any]:
        return [conn for _, storage in self.storages for conn in storage.connections]

    def hint(self, named: Path) -> str:
        """What to say about a storage file that fails to read: mcap files can be recovered with the mcap tool."""
        return _RECOVER_HINT.get(self.kinds.get(named, ""), CORRUPT_HINT)


def reason(exc: BaseException) -> str:
    """An exception's text on one line, without a trailing full stop."""
    return " ".join(str(exc).split()).rstrip(".") or type(exc).__name__


def storage_kind_by_name(path: Path) -> str | None:
    """"sqlite3" or "mcap" for a .db3 or .mcap file, compressed (.zstd) or not; None for any other name."""
    return STORAGE_SUFFIXES.get(Path(path.name.removesuffix(".zstd")).suffix)


def resolve_bag(path: str | os.PathLike) -> Path:
    """What to open: a bag folder (with its metadata.yaml, or the storage files a recorder left without one),
    or one storage file (.db3 or .mcap, compressed as .zstd or not)."""
    path = Path(path)
    if path.is_file():
        if path.name == METADATA:
            raise BagError(f"{path}: pass the bag folder {path.parent}, not its {METADATA}")
        if storage_kind_by_name(path) is None:
            raise BagError(f"{path}: not a ROS 2 bag (expected a .db3 or .mcap file, or one compressed as .zstd, "
                           f"or a bag folder)")
        return path
    if not path.is_dir():
        raise BagError(f"{path}: no such bag file or folder")
    return path


@contextmanager
def open_storage(path: str | os.PathLike) -> Iterator[OpenBag]:
    """The bag at ``path`` opened read-only; BagError naming the file if it cannot be."""
    resolved = resolve_bag(path)
    bag = OpenBag(resolved, None)
    with ExitStack() as stack:
        if resolved.is_file():
            _check_single_file(resolved, bag.notes)
            files = [resolved]
        elif (resolved / METADATA).is_file():
            bag.info = read_metadata(resolved)
            files = bag.info.files
        else:
            files = _recorded_files(resolved, bag.notes)
        for named in files:
            real = _unpacked(named, stack) if named.suffix == ".zstd" else named
            bag.kinds[named] = _storage_kind(named, real, bag.notes)
            bag.storages.append((named, stack.enter_context(_opened(named, real, bag.kinds[named], bag.notes))))
        yield bag


def _recorded_files(folder: Path, notes: list[str]) -> list[Path]:
    """The storage files a recorder left in a folder without metadata.yaml (it was killed), in recording order.

    A file compressed while the recorder was killed is read from its uncompressed original, still beside it;
    empty files are skipped.
    """
    found = sorted((p for p in folder.iterdir() if p.is_file() and storage_kind_by_name(p)), key=_recording_order)
    names = {p.name for p in found}
    files = []
    for path in found:
        if path.suffix == ".zstd" and path.stem in names:
            notes.append(f"{path}: skipped, {path.stem} beside it holds the same messages (the recorder stopped "
                         f"while compressing it)")
        elif path.stat().st_size == 0:
            notes.append(f"{path}: skipped, it is empty (0 bytes)")
        else:
            files.append(path)
    if not files:
        raise BagError(f"{folder}: no {METADATA} and no .db3 or .mcap file with data in it (compressed or not)")
    if len(files) > 1 or files[0].suffix == ".zstd":
        notes.append(f"{folder}: no {METADATA} (the recording was not closed); reading its {len(files)} storage "
                     f"files in recording order: {', '.join(p.name for p in files)}")
    return files


def _recording_order(path: Path) -> tuple[str, int, str]:
    """rec_2.db3 before rec_10.db3.zstd: the split index as a number."""
    stem = Path(path.name.removesuffix(".zstd")).stem
    match = _SPLIT_INDEX.match(stem)
    return (match[1], int(match[2]), path.name) if match else (stem, -1, path.name)


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


def _check_single_file(path: Path, notes: list[str]) -> None:
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
        notes.append(f"{path}: reading only this file, {info.files.index(path) + 1} of the {len(info.files)} files "
                     f"of the split bag {path.parent}; pass the folder to read them all")


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


def _storage_kind(named: Path, path: Path, notes: list[str]) -> str:
    """"sqlite3" or "mcap", from the file's first bytes (from its name when they say neither)."""
    try:
        with path.open("rb") as file:
            head = file.read(16)
    except OSError as exc:
        raise BagError(f"{named}: cannot read it: {reason(exc)}") from exc
    if not head:
        raise BagError(f"{named}: the file is empty (0 bytes): the recorder wrote nothing into it")
    by_name = storage_kind_by_name(named)
    by_content = next((kind for magic, kind in _MAGICS.items() if head.startswith(magic)), None)
    if by_content is not None and by_content != by_name:
        notes.append(f"{named}: holds {by_content} storage although its name says {by_name}; reading it as "
                     f"{by_content}")
    return by_content or by_name or "unknown"


@contextmanager
def _opened(named: Path, path: Path, kind: str, notes: list[str]) -> Iterator[Any]:
    """An open storage reader of ``kind`` for ``path`` (``named`` is what error messages call it)."""
    with ExitStack() as stack:
        if kind == "sqlite3":
            if _holds_wal(path):
                path = _checkpointed_copy(named, path, stack, notes)
            storage = _open_reader(Sqlite3Reader(path), named, kind)
        else:
            storage = _open_mcap(named, path, notes)
        try:
            yield storage
        finally:
            storage.close()


def _open_reader(storage: Any, named: Path, kind: str) -> Any:
    try:
        storage.open()
    except Exception as exc:  # apsw, mcap and OSError failures all mean "cannot read this file"
        raise BagError(f"{named}: cannot open it as {kind} storage: {reason(exc)}; {_RECOVER_HINT[kind]}") from exc
    return storage


def _open_mcap(named: Path, path: Path, notes: list[str]) -> Any:
    """rosbags' reader; for a file that ends without mcap's closing magic (its recorder was killed), the
    records up to where it was cut."""
    try:
        return _open_reader(McapReader(path), named, "mcap")
    except BagError:
        with path.open("rb") as file:
            file.seek(max(0, path.stat().st_size - len(MCAP_MAGIC)))
            if file.read() == MCAP_MAGIC:
                raise  # a closed file that does not read: damage, not a cut
    salvaged = UnclosedMcapReader(path)
    try:
        salvaged.open()
    except (OSError, ValueError, struct.error) as exc:
        salvaged.close()
        raise BagError(f"{named}: cannot read it as mcap storage: {reason(exc)}; {_RECOVER_HINT['mcap']}") from exc
    notes.append(f"{named}: the recorder did not close this file (no mcap summary at its end); "
                 f"{salvaged.salvage.describe()}")
    return salvaged


def _holds_wal(db3: Path) -> bool:
    """A -wal file with something in it beside the .db3 (an empty one holds no messages)."""
    wal = _wal(db3)
    return wal.is_file() and wal.stat().st_size > 0


def _wal(db3: Path) -> Path:
    return db3.with_name(db3.name + "-wal")


def _checkpointed_copy(named: Path, db3: Path, stack: ExitStack, notes: list[str]) -> Path:
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
    notes.append(f"{named}: read with the messages in {_wal(named).name} (the recording was not closed cleanly)")
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
                               f"{bag.hint(named)}") from exc
            count += 1
            if bag.info is not None and bag.info.compression == "message":
                raw = _decompressed(named, raw)
            yield named, conn, time_ns, raw


def _decompressed(named: Path, raw: bytes) -> bytes:
    try:
        return zstd.decompress(raw)
    except zstd.ZstdError as exc:
        raise BagError(f"{named}: a message cannot be decompressed: {reason(exc)}; {CORRUPT_HINT}") from exc
