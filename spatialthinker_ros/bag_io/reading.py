"""Bag input of replay (no rclpy): a rosbag2 directory (with or without metadata.yaml) or a bare
`.mcap` / `.db3` file; whole file (`.zstd`), per-chunk (zstd, lz4) or per-message (zstd)
compressed; type names spelled `pkg/msg/Type` or `pkg/Type` (older recorders; rosbag2 plays
both); an MCAP cut short (recorder killed) is read up to the cut (`mcap_stream`)."""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import zstandard
from rosbags.rosbag2 import Reader

from ..core.files import input_file_problem
from ..core.text import one_line
from .errors import ReplayError
from .mcap_stream import MCAP_MAGIC, McapStream

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"

SQLITE_MAGIC = b"SQLite format 3\x00"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"  # a CDR message starts with 0x00: never confused with this
_STORAGE_SUFFIX = {"mcap": ".mcap", "sqlite3": ".db3"}
_BAG_FILE = re.compile(r".+\.(mcap|db3)(\.zstd)?$")
_MAX_LISTED_TOPICS = 40


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
    if not path.is_dir():  # a bare bag file: never a FIFO or device (reading would block)
        problem = input_file_problem(path)
        if problem is not None:
            raise ReplayError(f"input bag {problem}")
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
        stream = McapStream(file)
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
