"""What `spatialthinker-ros replay` reads and writes (no rclpy).

Input: a rosbag2 directory (with or without metadata.yaml) or a bare `.mcap` / `.db3` file; whole
file (`.zstd`), per-chunk (zstd, lz4) or per-message (zstd) compressed; type names spelled
`pkg/msg/Type` or `pkg/Type` (older recorders; rosbag2 plays both); an MCAP cut short (recorder
killed) is read up to the cut, the complete records of a cut chunk included.

Output: every path is checked before a model loads and never overlaps an input; the result bag
is always closed readable (never rosbags' abort); JSONL reaches the file a whole line at a time;
annotated frames get unique names and never overwrite a file.
"""

from __future__ import annotations

import io
import os
import re
import struct
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import lz4.frame
import numpy as np
import zstandard
from mcap.data_stream import ReadDataStream
from mcap.opcode import Opcode
from mcap.records import Channel, McapRecord, Message, Schema
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.typesys.store import Typestore

from .core.text import one_line, safe_text

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"

MCAP_MAGIC = b"\x89MCAP0\r\n"
SQLITE_MAGIC = b"SQLite format 3\x00"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"  # a CDR message starts with 0x00: never confused with this
_STORAGE_SUFFIX = {"mcap": ".mcap", "sqlite3": ".db3"}
_BAG_FILE = re.compile(r".+\.(mcap|db3)(\.zstd)?$")
FRAME_FILE = re.compile(r"\d+_-?\d+\.png$")  # FrameSaver's names
_MAX_LISTED_TOPICS = 40


class ReplayError(RuntimeError):
    """A problem with the input bag or an output path, with a message for the user (exit 2)."""


class OutputError(RuntimeError):
    """Writing an output failed mid-run (disk full, ...): the run stops, the outputs closed."""


class BagCutShort(RuntimeError):
    """The input ends inside a record or without its footer (the recorder was killed)."""


def normalize_msgtype(msgtype: str) -> str:
    """`pkg/Type` -> `pkg/msg/Type`; every other spelling unchanged."""
    parts = msgtype.strip().split("/")
    if len(parts) == 2 and all(parts):
        return f"{parts[0]}/msg/{parts[1]}"
    return msgtype


@dataclass(frozen=True)
class Topic:
    name: str
    msgtype: str  # normalised (pkg/msg/Type)
    count: int  # -1 when unknown


class BagMessage(NamedTuple):
    topic: str
    msgtype: str  # normalised
    bag_ns: int
    data: bytes  # CDR, decompressed


# --- input -----------------------------------------------------------------------------------
class _RosbagsReader:
    """rosbags: a rosbag2 directory with metadata.yaml, or one intact .mcap / .db3 file."""

    def __init__(self, path: Path):
        self.reader = Reader(path)
        self.reader.open()

    def topics(self) -> list[tuple[str, str, int]]:
        return [(c.topic, c.msgtype, c.msgcount) for c in self.reader.connections]

    def messages(self, topics: set[str]) -> Iterator[tuple[str, str, int, bytes]]:
        wanted = [c for c in self.reader.connections if c.topic in topics]
        if not wanted:  # rosbags reads every connection when given none
            return
        for conn, bag_ns, raw in self.reader.messages(connections=wanted):
            yield conn.topic, conn.msgtype, bag_ns, raw

    def close(self) -> None:
        self.reader.close()


class _McapStream:
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


def _decompressed(data: bytes) -> bytes:
    """rosbag2's per-message compression (zstd frames) undone; CDR passes through."""
    if bytes(data[:4]) != ZSTD_MAGIC:
        return data
    return zstandard.ZstdDecompressor().decompressobj(read_across_frames=True).decompress(data)


class BagInput:
    """An opened input bag: its topics (type names normalised), storage format and messages."""

    def __init__(
        self,
        path: Path,
        storage: str,
        files: list[Path],
        readers: list,
        temp: tempfile.TemporaryDirectory | None,
    ):
        self.path = path
        self.storage = storage  # "mcap" | "sqlite3": what the bag files are
        self.files = files  # the input's own files (never written)
        self._readers = readers
        self._temp = temp
        self.topics: dict[str, Topic] = {}
        for reader in readers:
            for name, msgtype, count in reader.topics():
                known = self.topics.get(name)
                if known is not None and (known.count < 0 or count < 0):
                    count = -1
                elif known is not None:
                    count += known.count
                self.topics[name] = Topic(name, normalize_msgtype(msgtype), count)

    def messages(self, topics: set[str]) -> Iterator[BagMessage]:
        """Messages on `topics`, file after file; raises where the data ends early or is bad."""
        for reader in self._readers:
            for topic, msgtype, bag_ns, data in reader.messages(topics):
                yield BagMessage(topic, normalize_msgtype(msgtype), bag_ns, _decompressed(data))

    def close(self) -> None:
        for reader in self._readers:
            with suppress(Exception):
                reader.close()
        if self._temp is not None:
            self._temp.cleanup()


def open_bag(path: Path) -> BagInput:
    """Open a rosbag2 directory or a bare bag file, whatever recorder wrote it.

    A directory with metadata.yaml goes to rosbags; if rosbags cannot open it (cut short,
    metadata missing or wrong), each bag file is opened by itself: `.zstd` files decompressed
    to a temporary directory, MCAP that rosbags refuses read with the record stream reader."""
    path = Path(path)
    if not path.exists():
        raise ReplayError(f"input bag {path} does not exist")
    files = _bag_files(path)
    if not files:
        raise ReplayError(f"{path} holds no bag file (.mcap, .db3, or either with .zstd)")
    metadata = path / "metadata.yaml"
    own_files = [*files, metadata] if metadata.is_file() else files
    first_error: Exception | None = None
    if metadata.is_file():
        try:
            reader = _RosbagsReader(path)
        except Exception as exc:  # noqa: BLE001 - read the files one by one instead
            first_error = exc
        else:
            try:
                return BagInput(path, _storage_of(files[0]), own_files, [reader], None)
            except BaseException:
                reader.close()
                raise
    temp = tempfile.TemporaryDirectory(prefix="spatialthinker-replay-")
    readers: list = []
    try:
        storages = []
        for file in files:
            storage, reader = _open_file(file, Path(temp.name), first_error)
            storages.append(storage)
            readers.append(reader)
        return BagInput(path, storages[0], own_files, readers, temp)
    except BaseException as exc:
        for reader in readers:
            with suppress(Exception):
                reader.close()
        temp.cleanup()
        if isinstance(exc, ReplayError) or not isinstance(exc, Exception):
            raise
        raise ReplayError(f"cannot open bag {path}: {one_line(exc)}") from exc


def _bag_files(path: Path) -> list[Path]:
    """The bag files of a directory (split files in their numeric order), or the file itself."""
    if not path.is_dir():
        return [path]
    files = [p for p in path.iterdir() if p.is_file() and _BAG_FILE.match(p.name)]
    return sorted(files, key=_natural_key)


def _natural_key(path: Path) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def _open_file(file: Path, temp: Path, first_error: Exception | None):
    """(storage, reader) of one bag file."""
    storage = _storage_of(file)
    if file.name.endswith(".zstd") or _magic(file, 4) == ZSTD_MAGIC:
        file = _decompress_file(file, temp)
    if storage not in _STORAGE_SUFFIX:
        raise ReplayError(f"{file.name} is neither an MCAP nor a sqlite3 bag file")
    try:
        return storage, _RosbagsReader(_with_suffix(file, _STORAGE_SUFFIX[storage], temp))
    except Exception as exc:  # noqa: BLE001 - an MCAP cut short: stream its records
        if storage != "mcap":
            raise ReplayError(f"cannot open bag file {file.name}: {one_line(exc)}") from exc
        stream = _McapStream(file)
        if not stream.channels:
            reason = first_error or exc
            raise ReplayError(
                f"cannot open bag file {file.name}: {one_line(reason)}; no channel could be "
                "read before the data ends"
            ) from exc
        return storage, stream


def _magic(file: Path, size: int) -> bytes:
    with open(file, "rb") as f:
        return f.read(size)


def _storage_of(file: Path) -> str:
    """ "mcap" | "sqlite3" | "" from the file's first bytes (through zstd)."""
    head = _magic(file, 16)
    if head.startswith(ZSTD_MAGIC):
        with open(file, "rb") as f, zstandard.ZstdDecompressor().stream_reader(f) as z:
            with suppress(zstandard.ZstdError):
                head = z.read(16)
    if head.startswith(MCAP_MAGIC):
        return "mcap"
    if head.startswith(SQLITE_MAGIC):
        return "sqlite3"
    return ""


def _decompress_file(file: Path, temp: Path) -> Path:
    """A whole-file zstd bag file decompressed into `temp` (a cut one as far as it goes)."""
    target = temp / file.name.removesuffix(".zstd")
    decompressor = zstandard.ZstdDecompressor().decompressobj(read_across_frames=True)
    with open(file, "rb") as source, open(target, "wb") as out:
        while block := source.read(1 << 20):
            out.write(decompressor.decompress(block))
    return target


def _with_suffix(file: Path, suffix: str, temp: Path) -> Path:
    """rosbags picks the storage by suffix: link a file that lacks it."""
    if file.suffix == suffix:
        return file
    link = temp / (file.name + suffix)
    link.symlink_to(file.resolve())
    return link


def topic_roles(
    bag: BagInput, image_topic: str, depth_topic: str = "", camera_info_topic: str = ""
) -> dict[str, str]:
    """topic -> "image" | "depth" | "info"; each requested topic must exist with a usable type."""
    names = sorted(bag.topics)
    listed = ", ".join(f"{n} ({bag.topics[n].msgtype})" for n in names[:_MAX_LISTED_TOPICS])
    if len(names) > _MAX_LISTED_TOPICS:
        listed += f", and {len(names) - _MAX_LISTED_TOPICS} more"
    roles = {}
    for role, topic, types in (
        ("image", image_topic, (IMAGE, COMPRESSED)),
        ("depth", depth_topic, (IMAGE,)),
        ("info", camera_info_topic, (CAMERA_INFO,)),
    ):
        if not topic:
            continue
        if topic not in bag.topics:
            raise ReplayError(
                one_line(f"topic {topic} is not in {bag.path}; it has: {listed}", 4000)
            )
        if bag.topics[topic].msgtype not in types:
            raise ReplayError(
                one_line(
                    f"topic {topic} has type {bag.topics[topic].msgtype}, expected "
                    + " or ".join(types)
                )
            )
        roles[topic] = role
    return roles


# --- output paths ----------------------------------------------------------------------------
@dataclass(frozen=True)
class OutputPaths:
    out_bag: Path
    jsonl: Path | None = None
    save_frames: Path | None = None

    def named(self) -> list[tuple[str, Path]]:
        pairs = [("--out", self.out_bag), ("--jsonl", self.jsonl)]
        pairs.append(("--save-frames", self.save_frames))
        return [(flag, Path(p)) for flag, p in pairs if p is not None]


def check_outputs(bag: BagInput, outputs: OutputPaths) -> None:
    """Every output path usable and apart from the input and from each other, else ReplayError.

    Paths are compared resolved (symlinks followed) and existing files by inode (hard links)."""
    named = outputs.named()
    for flag, path in named:
        if _overlaps(path, bag.path) or _same_as_any(path, bag.files):
            raise ReplayError(f"{flag} {path} is or is inside the input bag {bag.path}")
    for i, (flag, path) in enumerate(named):
        for other_flag, other in named[i + 1 :]:
            if _overlaps(path, other) or _overlaps(other, path):
                raise ReplayError(f"{flag} {path} and {other_flag} {other} overlap")
    out = Path(outputs.out_bag)
    if os.path.lexists(out):
        raise ReplayError(f"--out {out} exists (the output bag must be a new directory)")
    _check_creatable("--out", out)
    if outputs.jsonl is not None:
        _check_file_output("--jsonl", Path(outputs.jsonl))
    if outputs.save_frames is not None:
        _check_frames_dir(Path(outputs.save_frames))


def _resolved(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _overlaps(path: Path, container: Path) -> bool:
    """`path` is `container` or lies inside it."""
    p, c = _resolved(path), _resolved(container)
    return p == c or c in p.parents


def _same_as_any(path: Path, files: Iterable[Path]) -> bool:
    if not path.exists():
        return False
    for file in files:
        with suppress(OSError):
            if os.path.samefile(path, file):
                return True
    return False


def _check_creatable(flag: str, path: Path) -> None:
    """The nearest existing ancestor is a directory we can create entries in."""
    ancestor = path.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ReplayError(f"{flag} {path}: {ancestor} is not a directory")
    try:  # a real probe: permission bits do not bind root, a read-only mount does
        os.rmdir(tempfile.mkdtemp(prefix=".spatialthinker-probe-", dir=ancestor))
    except OSError as exc:
        raise ReplayError(f"{flag} {path}: cannot write in {ancestor}: {exc.strerror}") from exc


def _check_file_output(flag: str, path: Path) -> None:
    if path.is_dir():
        raise ReplayError(f"{flag} {path} is a directory; a file is wanted")
    if not path.exists():
        _check_creatable(flag, path)
        return
    try:  # opened for append (nothing lost if a later check fails), never blocking on a FIFO
        os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK))
    except OSError as exc:
        raise ReplayError(f"{flag} {path}: cannot write: {exc.strerror}") from exc


def _check_frames_dir(path: Path) -> None:
    if not path.exists():
        _check_creatable("--save-frames", path)
        return
    if not path.is_dir():
        raise ReplayError(f"--save-frames {path} is not a directory")
    earlier = sorted(p.name for p in path.iterdir() if FRAME_FILE.match(p.name))
    if earlier:
        raise ReplayError(
            f"--save-frames {path} already holds frames of an earlier replay "
            f"({earlier[0]}, ...): choose a new or empty directory"
        )
    _check_creatable("--save-frames", path / "frame.png")


# --- output writers --------------------------------------------------------------------------
class OutputBag:
    """The result bag. `close()` always writes the index and metadata.yaml (rosbags' writer
    would abort, leaving an unreadable bag, if an exception went through it)."""

    def __init__(self, path: Path, storage: str, store: Typestore):
        plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
        self.path = Path(path)
        self._store = store
        self._writer = Writer(self.path, version=9, storage_plugin=plugin)
        try:
            self._writer.open()
        except Exception as exc:  # noqa: BLE001 - WriterError, OSError: the user's to fix
            raise ReplayError(f"cannot create output bag {path}: {one_line(exc)}") from exc
        self._connections: dict[tuple[str, str], object] = {}
        self._open = True

    def write(self, topic: str, msgtype: str, bag_ns: int, data: bytes) -> None:
        try:
            key = (topic, msgtype)
            if key not in self._connections:
                self._connections[key] = self._writer.add_connection(
                    topic, msgtype, typestore=self._store
                )
            self._writer.write(self._connections[key], bag_ns, data)
        except Exception as exc:  # noqa: BLE001 - disk full and kin (OSError, sqlite errors)
            raise OutputError(f"cannot write output bag {self.path}: {one_line(exc)}") from exc

    def close(self) -> None:
        if not self._open:
            return
        self._open = False
        try:
            self._writer.close()
        except Exception as exc:  # noqa: BLE001
            raise OutputError(f"cannot close output bag {self.path}: {one_line(exc)}") from exc


class JsonlSink:
    """A JSON Lines file written a whole line at a time: a line reaches the file in one write
    and is cut off again if that write fails or is interrupted, so the file only ever holds
    complete lines. File-like (`write`, `flush`) for the code that formats the records."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        except OSError as exc:
            raise ReplayError(f"cannot open --jsonl {path}: {exc.strerror}") from exc
        self._complete = 0  # bytes of complete lines written
        self._partial = ""

    def write(self, text: str) -> int:
        *lines, self._partial = (self._partial + text).split("\n")
        for line in lines:
            self._write_line(line + "\n")
        return len(text)

    def flush(self) -> None:
        """Nothing to do: every complete line is already written."""

    def _write_line(self, line: str) -> None:
        data = safe_text(line).encode("utf-8")
        view = memoryview(data)
        written = 0
        try:
            while written < len(data):
                written += os.write(self._fd, view[written:])
        except BaseException as exc:
            with suppress(OSError):  # not possible on a pipe or device: nothing to undo there
                os.ftruncate(self._fd, self._complete)
                os.lseek(self._fd, self._complete, os.SEEK_SET)
            if isinstance(exc, OSError):
                raise OutputError(f"cannot write --jsonl {self.path}: {exc.strerror}") from exc
            raise
        self._complete += len(data)

    def close(self) -> None:
        if self._fd < 0:
            return
        try:
            if self._partial:
                self._write_line(self._partial + "\n")
                self._partial = ""
        finally:
            os.close(self._fd)
            self._fd = -1


class FrameSaver:
    """Annotated frames as `<index>_<stamp ns>.png`, the index counting the saved frames (stamps
    may repeat). A file is created exclusively (never overwrites) and removed if its write
    fails, so the directory only holds complete PNGs."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ReplayError(f"cannot create --save-frames {directory}: {exc.strerror}") from exc
        self.count = 0

    def save(self, rgb: np.ndarray, stamp_ns: int) -> Path:
        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(rgb).save(buffer, format="PNG")
        data = buffer.getbuffer()
        path = self.directory / f"{self.count:06d}_{stamp_ns}.png"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except OSError as exc:
            raise OutputError(f"cannot write frame {path}: {exc.strerror}") from exc
        try:
            written = 0
            while written < len(data):
                written += os.write(fd, data[written:])
        except BaseException as exc:
            os.close(fd)
            with suppress(OSError):
                path.unlink()
            if isinstance(exc, OSError):
                raise OutputError(f"cannot write frame {path}: {exc.strerror}") from exc
            raise
        os.close(fd)
        self.count += 1
        return path


class ReplayOutputs:
    """The opened outputs; closing closes each, the bag in every case."""

    def __init__(self, paths: OutputPaths, storage: str, store: Typestore):
        self.bag = OutputBag(paths.out_bag, storage, store)
        self.jsonl: JsonlSink | None = None
        self.frames: FrameSaver | None = None
        try:
            if paths.jsonl is not None:
                self.jsonl = JsonlSink(paths.jsonl)
            if paths.save_frames is not None:
                self.frames = FrameSaver(paths.save_frames)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        try:
            if self.jsonl is not None:
                self.jsonl.close()
        finally:
            self.bag.close()

    def __enter__(self) -> ReplayOutputs:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
