"""Replay's output paths, checked before a model loads: usable, and apart from the input and
from each other (paths resolved, symlinks followed, existing files compared by inode)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from contextlib import suppress
from pathlib import Path

from ..core.files import creatable_problem, output_dir_problem, output_file_problem
from .errors import ReplayError
from .reading import BagInput
from .writing import FRAME_FILE, OutputPaths


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
    problem = creatable_problem(path)
    if problem is not None:
        raise ReplayError(f"{flag} {path}: {problem}")


def _check_file_output(flag: str, path: Path) -> None:
    """A regular file (never a FIFO, device or directory) or an absent, creatable one."""
    problem = output_file_problem(path)
    if problem is not None:
        raise ReplayError(f"{flag} {problem}")


def _check_frames_dir(path: Path) -> None:
    problem = output_dir_problem(path)
    if problem is not None:
        raise ReplayError(f"--save-frames {problem}")
    if not path.exists():
        return
    earlier = sorted(p.name for p in path.iterdir() if FRAME_FILE.match(p.name))
    if earlier:
        raise ReplayError(
            f"--save-frames {path} already holds frames of an earlier replay "
            f"({earlier[0]}, ...): choose a new or empty directory"
        )
