"""Read an mcap file that its recorder never closed: no footer, no summary, and maybe a last chunk cut short.

rosbag2's mcap writer collects messages in a chunk in memory and writes each chunk whole; at close it adds the
indexes, a summary and a footer. A recorder that is killed leaves the header, the complete chunks and part of
the chunk it was writing. This reads the records from the start up to the first incomplete one (or the
summary), the messages of every complete chunk, and the complete messages at the start of the cut chunk (its
compressed stream is decoded as far as it goes), and reports how much was lost. Records as in the mcap
specification (https://mcap.dev/spec): opcode (u8), length (u64), content; little endian.
"""

from __future__ import annotations

import struct
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

try:  # the standard library's zstd from Python 3.14, the backport (a rosbags dependency) before
    from compression import zstd  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the Python version
    from backports import zstd  # type: ignore[import-not-found,no-redef]

MAGIC = b"\x89MCAP0\r\n"
HEADER, FOOTER, SCHEMA, CHANNEL, MESSAGE, CHUNK, DATA_END = 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x0F
_RECORD = struct.Struct("<BQ")  # opcode, content length
_CHUNK = struct.Struct("<QQQI")  # message start time, end time, uncompressed size, uncompressed crc
_MESSAGE = struct.Struct("<HIQQ")  # channel id, sequence, log time, publish time


@dataclass(frozen=True)
class ChannelExt:
    serialization_format: str


@dataclass(frozen=True)
class Channel:
    """A channel (one topic with one message type), shaped like the rosbags connections the bag reader uses."""

    id: int
    topic: str
    msgtype: str
    msgcount: int
    ext: ChannelExt


@dataclass
class Salvage:
    """What a scan found: records read up to byte ``intact_end`` of ``size``, complete ``chunks``, and where it
    stopped: the summary, a chunk cut short at the end (``cut_messages`` read from it, ``cut_lost`` bytes of its
    records missing, None when its header is cut too), or a complete chunk that does not check out."""

    size: int
    intact_end: int = len(MAGIC)
    chunks: int = 0
    summary_reached: bool = False
    cut_chunk: bool = False
    cut_messages: int = 0
    cut_lost: int | None = None
    damaged_chunk: bool = False
    counts: Counter = field(default_factory=Counter)  # channel id -> messages

    def describe(self) -> str:
        """One sentence: what was read and what was lost."""
        total = sum(self.counts.values())
        text = f"read {total} messages from its {self.chunks} complete chunk{'' if self.chunks == 1 else 's'}"
        if self.summary_reached:
            return text + "; only its summary is missing, no message was lost"
        if self.cut_chunk:
            lost = "" if self.cut_lost is None else f", {self.cut_lost:,} bytes of its messages lost"
            return text + f" and the chunk it was writing, which is cut short ({self.cut_messages} messages read " \
                          f"from it{lost})"
        if self.damaged_chunk:
            return text + f"; the chunk at byte {self.intact_end:,} does not check out (size, CRC or compression): " \
                          f"it and the {self.size - self.intact_end:,} bytes after it are skipped"
        if self.intact_end < self.size:
            return text + f"; its last {self.size - self.intact_end:,} bytes, an incomplete record, are skipped"
        return text


class UnclosedMcapReader:
    """A storage reader (``connections``, ``messages``, ``close``) over the intact records of an mcap file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.connections: list[Channel] = []
        self.salvage = Salvage(0)
        self._bio: BinaryIO | None = None

    def open(self) -> None:
        self._bio = self.path.open("rb")
        scan = _Scan(self._bio)
        for _ in scan.messages():
            pass
        self.salvage = scan.salvage
        self.connections = [Channel(cid, topic, msgtype, scan.salvage.counts[cid], ChannelExt(encoding))
                            for cid, (topic, msgtype, encoding) in sorted(scan.channels.items())]

    def messages(self, connections: list[Channel]) -> Iterator[tuple[Channel, int, bytes]]:
        """(channel, log time ns, serialized message) of ``connections``' messages, in file order."""
        assert self._bio is not None
        wanted = {c.id: c for c in connections}
        for cid, log_time, data in _Scan(self._bio).messages():
            if cid in wanted:
                yield wanted[cid], log_time, data

    def close(self) -> None:
        if self._bio is not None:
            self._bio.close()
            self._bio = None


class _Scan:
    """One pass over the file's records; ``channels`` and ``salvage`` fill in as ``messages()`` goes."""

    def __init__(self, bio: BinaryIO) -> None:
        self.bio = bio
        self.size = bio.seek(0, 2)
        self.salvage = Salvage(self.size)
        self.schemas: dict[int, str] = {}
        self.channels: dict[int, tuple[str, str, str]] = {}  # id -> topic, message type, encoding
        self._parsed = 0

    def messages(self) -> Iterator[tuple[int, int, bytes]]:
        """(channel id, log time, data) of every complete message, top level or in a chunk, in file order."""
        self.bio.seek(0)
        if self.bio.read(len(MAGIC)) != MAGIC:
            raise ValueError("not an mcap file (no mcap magic at its start)")
        pos = len(MAGIC)
        while pos + _RECORD.size <= self.size:
            self.bio.seek(pos)
            opcode, length = _RECORD.unpack(self.bio.read(_RECORD.size))
            start, end = pos + _RECORD.size, pos + _RECORD.size + length
            if opcode in (DATA_END, FOOTER):
                self.salvage.summary_reached = True
                return
            if end > self.size:
                if opcode == CHUNK:
                    yield from self._cut_chunk(self.bio.read(self.size - start))
                return
            content = self.bio.read(length)
            if opcode == CHUNK:
                records = _chunk_records(content)
                if records is None:  # complete, but it does not decode or check out: damage, stop before it
                    self.salvage.damaged_chunk = True
                    return
                yield from self._records(records)
                self.salvage.chunks += 1
            else:
                yield from self._records(_RECORD.pack(opcode, length) + content)
            pos = self.salvage.intact_end = end

    def _cut_chunk(self, content: bytes) -> Iterator[tuple[int, int, bytes]]:
        """The complete messages at the start of a chunk whose end is missing."""
        self.salvage.cut_chunk = True
        header = _chunk_header(content)
        if header is None:
            return
        uncompressed_size, compression, offset = header
        records = _decompress_prefix(content[offset:], compression)
        for message in self._records(records):
            self.salvage.cut_messages += 1
            yield message
        self.salvage.cut_lost = max(0, uncompressed_size - self._parsed)

    def _records(self, data: bytes) -> Iterator[tuple[int, int, bytes]]:
        """The complete message records in ``data`` (schemas and channels are noted on the way); ``_parsed``
        is where the complete records end."""
        pos = self._parsed = 0
        while pos + _RECORD.size <= len(data):
            opcode, length = _RECORD.unpack_from(data, pos)
            start, end = pos + _RECORD.size, pos + _RECORD.size + length
            if end > len(data):
                return
            if opcode == SCHEMA:
                self._schema(data[start:end])
            elif opcode == CHANNEL:
                self._channel(data[start:end])
            elif opcode == MESSAGE and length >= _MESSAGE.size:
                cid, _, log_time, _ = _MESSAGE.unpack_from(data, start)
                if cid in self.channels:
                    self.salvage.counts[cid] += 1
                    yield cid, log_time, data[start + _MESSAGE.size:end]
            pos = self._parsed = end

    def _schema(self, content: bytes) -> None:
        (sid,) = struct.unpack_from("<H", content)
        name, _ = _string(content, 2)
        self.schemas[sid] = name

    def _channel(self, content: bytes) -> None:
        cid, sid = struct.unpack_from("<HH", content)
        topic, pos = _string(content, 4)
        encoding, _ = _string(content, pos)
        self.channels.setdefault(cid, (topic, self.schemas.get(sid, ""), encoding))


def _string(data: bytes, pos: int) -> tuple[str, int]:
    (length,) = struct.unpack_from("<I", data, pos)
    return data[pos + 4:pos + 4 + length].decode("utf-8", "replace"), pos + 4 + length


def _chunk_header(content: bytes) -> tuple[int, str, int] | None:
    """(uncompressed size, compression, offset of the compressed records) of a chunk, None if cut before."""
    try:
        _, _, uncompressed_size, _ = _CHUNK.unpack_from(content)
        compression, pos = _string(content, _CHUNK.size)
        struct.unpack_from("<Q", content, pos)
    except struct.error:
        return None
    return uncompressed_size, compression, pos + 8


def _chunk_records(content: bytes) -> bytes | None:
    """The records of a complete chunk, decompressed and checked against its size and CRC; None if they fail."""
    header = _chunk_header(content)
    if header is None:
        return None
    uncompressed_size, compression, pos = header
    (length,) = struct.unpack_from("<Q", content, pos - 8)
    crc = _CHUNK.unpack_from(content)[3]
    try:
        records = _decompress(content[pos:pos + length], compression)
    except (zstd.ZstdError, RuntimeError, ValueError):
        return None
    if len(records) != uncompressed_size or (crc and zlib.crc32(records) != crc):
        return None
    return records


def _decompress(data: bytes, compression: str) -> bytes:
    if compression == "":
        return data
    if compression == "zstd":
        return zstd.decompress(data)
    if compression == "lz4":
        import lz4.frame  # a rosbags dependency, as zstd

        return lz4.frame.decompress(data)
    raise ValueError(f"unknown chunk compression {compression!r}")


def _decompress_prefix(data: bytes, compression: str) -> bytes:
    """As much of a cut compressed stream as decodes (a stream decoder stops where the data ends)."""
    try:
        if compression == "":
            return data
        if compression == "zstd":
            return zstd.ZstdDecompressor().decompress(data)
        if compression == "lz4":
            import lz4.frame

            return lz4.frame.LZ4FrameDecompressor().decompress(data)
    except (zstd.ZstdError, RuntimeError, ValueError):
        pass
    return b""
