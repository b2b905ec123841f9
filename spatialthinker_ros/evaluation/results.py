"""The per-item results file: one JSON object per line, appended and flushed per item, so an
interrupted run resumes where it stopped (items whose key is already there are not asked again).

Every record carries the settings it was made with; resuming with other settings is refused
(the file would mix two evaluations). A last line cut off by a kill is dropped before appending.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from ..core.text import one_line, safe_text
from .benchmarks import InputError


class ResultsError(InputError):
    """The results file cannot be resumed (unreadable, other settings)."""


@dataclass
class ResultsLog:
    path: Path | None
    settings: dict[str, Any]
    done: dict[str, dict[str, Any]] = field(default_factory=dict)  # key -> record
    notes: list[str] = field(default_factory=list)
    _file: IO[str] | None = None

    def append(self, record: dict[str, Any]) -> None:
        """Write one record as one line and flush it (a kill loses at most this line)."""
        self.done[record["key"]] = record
        if self._file is not None:
            self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def open_results(path: Path | None, settings: dict[str, Any]) -> ResultsLog:
    """Read what an earlier run recorded (if anything) and open the file for appending."""
    log = ResultsLog(path, settings)
    if path is None:
        return log
    if path.exists():
        _read_existing(log, path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        log._file = path.open("a", encoding="utf-8")
    except OSError as exc:
        raise ResultsError(f"cannot write {path}: {one_line(exc)}") from exc
    return log


def _read_existing(log: ResultsLog, path: Path) -> None:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ResultsError(f"cannot read {path}: {one_line(exc)}") from exc
    complete = data.rfind(b"\n") + 1
    if complete < len(data):  # a record cut off mid-write by a kill: drop it
        try:
            with path.open("r+b") as f:
                f.truncate(complete)
        except OSError as exc:
            raise ResultsError(f"cannot repair {path}: {one_line(exc)}") from exc
        log.notes.append(f"dropped an incomplete last line of {path.name} (interrupted write)")
    unreadable = 0
    for number, line in enumerate(data[:complete].splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict) or not isinstance(record.get("key"), str):
            unreadable += 1
            continue
        if record.get("settings") != log.settings:
            raise ResultsError(
                f"{path} line {number} was made with other settings "
                f"({_difference(record.get('settings'), log.settings)}): pass the same "
                "settings to resume, or another --results file"
            )
        log.done[record["key"]] = record
    if unreadable:
        log.notes.append(f"ignored {unreadable} unreadable line(s) in {path.name}")


def _difference(recorded: object, current: dict[str, Any]) -> str:
    if not isinstance(recorded, dict):
        return "no settings recorded"
    for name, value in current.items():
        if recorded.get(name) != value:
            return f"{name} {safe_text(one_line(recorded.get(name), 80))}, now {value}"
    return "unknown setting " + ", ".join(sorted(set(recorded) - set(current)))
