"""MCAP files rosbags cannot open, read record by record: cut short (recorder killed: no footer,
no summary), the cut possibly inside a chunk, whose complete records are still recovered (a
compressed chunk decompressed as far as its data goes)."""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import lz4.frame
import zstandard
from mcap.data_stream import ReadDataStream
from mcap.opcode import Opcode
from mcap.records import Channel, McapRecord, Message, Schema

from ..core.text import safe_text
from .errors import BagCutShort, ReplayError

MCAP_MAGIC = b"\x89MCAP0\r\n"


class McapStream:
    """An MCAP read record by record with mcap's record parsers, for files rosbags cannot open:
    without footer or summary (cut short), and with the cut inside a chunk (the chunk's complete
    records are recovered, a compressed one decompressed as far as its data goes)."""

    def __init__(self, path: Path):
        self.path = path
        self.counts: dict[int, int] = {}
        self.channels: dict[int, tuple[str, str]] = {}
        try:
            for record in self._records(self.channels):
                if isinstance(record, Message):
                    self.counts[record.channel_id] = self.counts.get(record.channel_id, 0) + 1
        except Exception:  # noqa: BLE001 - the scan ends where the file's data ends
            pass

    def topics(self) -> list[tuple[str, str, int]]:
        return [(t, m, self.counts.get(i, 0)) for i, (t, m) in self.channels.items()]

    def messages(self, topics: set[str]) -> Iterator[tuple[str, str, int, bytes]]:
        channels: dict[int, tuple[str, str]] = {}
        for record in self._records(channels):
            if isinstance(record, Message) and record.channel_id in channels:
                topic, msgtype = channels[record.channel_id]
                if topic in topics:
                    yield topic, msgtype, record.log_time, record.data

    def _records(self, channels: dict[int, tuple[str, str]]) -> Iterator[McapRecord]:
        """Messages in file order; `channels` (id -> topic, schema name) is filled on the way.
        Raises BagCutShort where the file ends early."""
        schemas: dict[int, str] = {}
        for record in _mcap_records(self.path):
            if isinstance(record, Schema):
                schemas[record.id] = record.name
            elif isinstance(record, Channel):
                channels[record.id] = (record.topic, schemas.get(record.schema_id, ""))
            elif isinstance(record, Message):
                yield record

    def close(self) -> None:
        pass


def _mcap_records(path: Path) -> Iterator[McapRecord]:
    """Schema, Channel and Message records, chunked or not, up to the footer or the cut."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if f.read(len(MCAP_MAGIC)) != MCAP_MAGIC:
            raise ReplayError(f"{path} is not an MCAP file")
        while True:
            start = f.tell()
            head = f.read(9)
            if len(head) < 9:
                raise BagCutShort(f"{path.name} ends at byte {start} without a footer (cut short)")
            opcode, length = struct.unpack("<BQ", head)
            body = f.read(min(length, size - f.tell()))
            if opcode == Opcode.CHUNK:
                yield from _records_in(_chunk_data(body))
            elif len(body) == length and (record := _parse_record(opcode, body)) is not None:
                yield record
            if len(body) < length:
                raise BagCutShort(
                    f"{path.name} ends inside a record at byte {start} of {size} (cut short)"
                )
            if opcode == Opcode.FOOTER:
                return


_CHUNK_HEAD = struct.Struct("<QQQII")  # start time, end time, uncompressed size, crc, name length


def _chunk_data(body: bytes) -> bytes:
    """A chunk's records, decompressed; of a cut chunk, as much as its data decodes to."""
    if len(body) < _CHUNK_HEAD.size:
        return b""
    *_, name_length = _CHUNK_HEAD.unpack_from(body)
    start = _CHUNK_HEAD.size + name_length + 8
    if len(body) < start:
        return b""
    compression = body[_CHUNK_HEAD.size : start - 8].decode("utf-8", "replace")
    (data_length,) = struct.unpack_from("<Q", body, start - 8)
    data = body[start : start + data_length]
    if not compression:
        return data
    if compression == "zstd":  # a cut frame still yields its complete blocks
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    if compression == "lz4":
        return lz4.frame.LZ4FrameDecompressor().decompress(data)
    raise ReplayError(f"unsupported MCAP chunk compression {safe_text(compression)!r}")


def _records_in(data: bytes) -> Iterator[McapRecord]:
    """The complete records in a chunk's data (a cut last record is dropped)."""
    offset = 0
    while offset + 9 <= len(data):
        opcode, length = struct.unpack_from("<BQ", data, offset)
        offset += 9
        if offset + length > len(data):
            return
        record = _parse_record(opcode, data[offset : offset + length])
        offset += length
        if record is not None:
            yield record


def _parse_record(opcode: int, body: bytes) -> McapRecord | None:
    stream = ReadDataStream(io.BytesIO(body))
    if opcode == Opcode.MESSAGE:
        return Message.read(stream, len(body))
    if opcode == Opcode.CHANNEL:
        return Channel.read(stream)
    if opcode == Opcode.SCHEMA:
        return Schema.read(stream)
    return None  # indexes, statistics, attachments, metadata: not needed to replay
