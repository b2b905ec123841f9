"""The files commands read and write, one rule for all (`ask`, `replay`, `eval`,
`make-sample-bag`, `make-test-model`).

Checked before a model loads: what is read is a regular file, read at most up to a cap; what
is written is a regular file or an absent one whose folder takes new entries (a real probe:
permission bits do not bind root, a read-only mount does). FIFOs, devices (`/dev/stdout`,
`/dev/zero`, `/dev/full`), sockets and directories are refused with one line: opening a FIFO
blocks, a device never ends, and a pipe cannot be left holding whole lines.

Writing: `LineFile` appends whole lines unbuffered (one `write` per line; a failed or
interrupted write is cut off again), so the file only ever holds whole lines and a rerun can
resume from it; `write_atomic` writes a file through a temporary file and a rename, so the
name only ever holds a complete file. Both raise `OSError` (ENOSPC, EROFS, EACCES, ...) for the
caller to turn into its one-line error.
"""

from __future__ import annotations

import os
import stat
import tempfile
from contextlib import suppress
from pathlib import Path

from .text import safe_text

# An image file larger than this is refused unread (a 33 Mpx uncompressed BMP is ~133 MB).
MAX_IMAGE_FILE_BYTES = 256 * 2**20


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a pipe (FIFO)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def input_file_problem(path: Path) -> str | None:
    """Why `path` cannot be read as a file (missing, a directory, a pipe, a device), or None."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return f"{path} does not exist"
    except OSError as exc:
        return f"{path}: {exc.strerror}"
    if not stat.S_ISREG(mode):
        return f"{path} is {_kind(mode)}; a regular file is wanted"
    if not os.access(path, os.R_OK):
        return f"{path} is not readable"
    return None


def _nearest_existing(path: Path) -> Path:
    ancestor = path.absolute().parent
    while not os.path.lexists(ancestor):
        ancestor = ancestor.parent
    return ancestor


def creatable_problem(path: Path, make_parents: bool = True) -> str | None:
    """Why `path` (absent) cannot be created, or None: its folder (or, with `make_parents`,
    the nearest existing ancestor) is a directory that takes new entries."""
    folder = _nearest_existing(path) if make_parents else path.absolute().parent
    if not folder.is_dir():
        if not make_parents and not folder.exists():
            return f"the folder of {path} does not exist"
        return f"{folder} is not a directory"
    try:  # a real probe: permission bits do not bind root, a read-only mount does
        fd, probe = tempfile.mkstemp(prefix=".spatialthinker-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        return f"cannot write in {folder}: {exc.strerror}"
    return None


def output_file_problem(path: Path, make_parents: bool = True) -> str | None:
    """Why a file cannot be written at `path`, or None: an existing regular file we may write,
    or an absent one that can be created."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        if os.path.islink(path):
            return f"{path} is a dangling symbolic link"
        return creatable_problem(path, make_parents)
    except OSError as exc:
        return f"{path}: {exc.strerror}"
    if not stat.S_ISREG(mode):
        return f"{path} is {_kind(mode)}; a regular file is wanted"
    try:  # opened for append: nothing lost if a later check fails
        os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK))
    except OSError as exc:
        return f"{path}: cannot write: {exc.strerror}"
    return None


def output_dir_problem(path: Path) -> str | None:
    """Why `path` cannot be used as an output directory (existing or created), or None."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return creatable_problem(path)
    except OSError as exc:
        return f"{path}: {exc.strerror}"
    if not stat.S_ISDIR(mode):
        return f"{path} is not a directory"
    return creatable_problem(path / "file")


def read_capped(path: Path, limit: int) -> bytes:
    """The bytes of the regular file `path`; OSError when it is not one (checked on the open
    file, without blocking on a FIFO) or holds more than `limit` bytes."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise OSError(f"{_kind(mode)}, not a regular file")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise OSError(f"larger than {limit // 2**20} MiB" if limit >= 2**20 else
                      f"larger than {limit} bytes")
    return data


class LineFile:
    """A text file written a whole line at a time, unbuffered: each line reaches the file in
    one `write` (continued if the kernel takes part of it) and is cut off again if that fails
    or is interrupted, so the file only ever holds complete lines. `append` keeps what is
    there (a resumed run); otherwise the file starts empty."""

    def __init__(self, path: Path, append: bool = False):
        self.path = Path(path)
        # O_APPEND always: after a cut-off line is taken back the next one follows the rest
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | (0 if append else os.O_TRUNC)
        self._fd = os.open(self.path, flags, 0o644)
        if not stat.S_ISREG(os.fstat(self._fd).st_mode):
            os.close(self._fd)
            self._fd = -1
            raise OSError(f"{self.path} is not a regular file")
        self._complete = os.lseek(self._fd, 0, os.SEEK_END)  # bytes of complete lines

    def write_line(self, line: str) -> None:
        """Write `line` (a newline added if it has none); OSError when it could not be."""
        if not line.endswith("\n"):
            line += "\n"
        data = memoryview(safe_text(line).encode("utf-8"))
        written = 0
        try:
            while written < len(data):
                written += os.write(self._fd, data[written:])
        except BaseException:
            with suppress(OSError):  # take back the part that was written
                os.ftruncate(self._fd, self._complete)
            raise
        self._complete += len(data)

    def close(self) -> None:
        """Close the file; every line is already written (an error here is raised once)."""
        if self._fd < 0:
            return
        fd, self._fd = self._fd, -1
        os.close(fd)


def write_atomic(path: Path, data: bytes | memoryview, overwrite: bool = True) -> None:
    """Write `data` to `path` through a temporary file in the same folder and a rename: `path`
    holds the old file or the complete new one, never part of it, even after a kill. Without
    `overwrite` the temporary file is linked to `path` instead (FileExistsError if taken).
    OSError on failure (the temporary file removed)."""
    path = Path(path)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent or ".")
    try:
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide the output from other users
        view = memoryview(data)
        written = 0
        while written < len(view):
            written += os.write(fd, view[written:])
        os.close(fd)
        fd = -1
        if overwrite:
            os.replace(temp, path)
        else:
            os.link(temp, path)
            os.unlink(temp)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with suppress(OSError):
            os.unlink(temp)
        raise
