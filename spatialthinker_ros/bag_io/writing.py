"""Replay's output writers: the result bag is always closed readable (never rosbags' abort);
JSONL reaches the file a whole line at a time; annotated frames get unique names and never
overwrite a file."""

from __future__ import annotations

import io
import os
import re
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys.store import Typestore

from ..core.files import write_atomic
from ..core.text import one_line, safe_text
from .errors import OutputError, ReplayError

FRAME_FILE = re.compile(r"\d+_-?\d+(_[A-Za-z0-9_.]+)?\.png$")  # FrameSaver's names


@dataclass(frozen=True)
class OutputPaths:
    out_bag: Path
    jsonl: Path | None = None
    save_frames: Path | None = None

    def named(self) -> list[tuple[str, Path]]:
        pairs = [("--out", self.out_bag), ("--jsonl", self.jsonl)]
        pairs.append(("--save-frames", self.save_frames))
        return [(flag, Path(p)) for flag, p in pairs if p is not None]


class _Deferred:
    requested = False


@contextmanager
def sigint_deferred(raise_after: bool = True) -> Iterator[_Deferred]:
    """Ctrl-C held back while the block runs (opening or closing the output bag: a
    KeyboardInterrupt inside rosbags' writer leaves a bag without its index or metadata);
    raised after it (`raise_after`), or left in `.requested` for the caller. Main thread only
    (elsewhere the block just runs)."""
    state = _Deferred()
    if threading.current_thread() is not threading.main_thread():
        yield state
        return
    previous = signal.getsignal(signal.SIGINT)
    if previous is not signal.default_int_handler:  # ignored, or someone else's: leave it
        yield state
        return

    def hold(_signum, _frame) -> None:
        state.requested = True

    signal.signal(signal.SIGINT, hold)
    try:
        yield state
    finally:
        signal.signal(signal.SIGINT, previous)
    if state.requested and raise_after:
        raise KeyboardInterrupt


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
        self.close_failed = False  # closing failed (disk full): the bag lacks its index

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
            self.close_failed = True
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
    """Annotated frames as `<index>_<stamp ns>.png`, or `<index>_<stamp ns>_<camera>.png` (the
    camera name's "/" as "."), the index counting the saved frames of every camera (stamps may
    repeat). A PNG is written to a temporary file, then linked to its name (never overwriting
    a file), so the directory only holds complete PNGs, also after a failed write or a kill."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ReplayError(f"cannot create --save-frames {directory}: {exc.strerror}") from exc
        self.count = 0

    def save(self, rgb: np.ndarray, stamp_ns: int, camera: str = "") -> Path:
        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(rgb).save(buffer, format="PNG")
        data = buffer.getbuffer()
        suffix = "_" + re.sub(r"[^A-Za-z0-9_]", ".", camera) if camera else ""
        path = self.directory / f"{self.count:06d}_{stamp_ns}{suffix}.png"
        try:  # a temporary file linked to the name: never overwrites, never a part PNG
            write_atomic(path, data, overwrite=False)
        except OSError as exc:
            raise OutputError(f"cannot write frame {path}: {exc.strerror or exc}") from exc
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
        with sigint_deferred():
            try:
                if self.jsonl is not None:
                    self.jsonl.close()
            finally:
                self.bag.close()

    def __enter__(self) -> ReplayOutputs:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
