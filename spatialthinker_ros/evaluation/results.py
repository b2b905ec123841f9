"""The per-item results file: one JSON object per line, appended and flushed per item, so an
interrupted run resumes where it stopped (items whose key is already there are not asked again).

Every record carries the settings it was made with; resuming with other settings is refused
(the file would mix two evaluations). A last line cut off by a kill is dropped before appending.
A file that is not a results file (an input, anything else with lines but no record) is refused
untouched: the command never truncates or appends to a file it did not write.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.files import LineFile, output_file_problem, read_capped
from ..core.text import loads_json, one_line, safe_text
from .benchmarks import InputError
from .scoring import Outcome

_OUTCOMES = {o.value for o in Outcome}
MAX_RESULTS_BYTES = 4 * 2**30  # ~1 KB a record: millions of items
_RECORD_START = b'{"key": '  # json.dumps of a record: "key" comes first


class ResultsError(InputError):
    """The results file cannot be resumed (unreadable, other settings)."""


@dataclass
class ResultsLog:
    path: Path | None
    settings: dict[str, Any]
    done: dict[str, dict[str, Any]] = field(default_factory=dict)  # key -> record
    notes: list[str] = field(default_factory=list)
    _file: LineFile | None = None

    def append(self, record: dict[str, Any]) -> None:
        """Write one record as one line, unbuffered (a kill or a full disk loses at most this
        line, and never leaves part of it); OSError when it could not be written."""
        self.done[record["key"]] = record
        if self._file is not None:
            self._file.write_line(json.dumps(record, ensure_ascii=False))

    def close(self) -> None:
        """Close the file; never raises (every line is already written)."""
        if self._file is not None:
            with suppress(OSError):
                self._file.close()
            self._file = None


def open_results(
    path: Path | None, settings: dict[str, Any], inputs: Iterable[Path] = ()
) -> ResultsLog:
    """Read what an earlier run recorded (if anything) and open the file for appending.
    `inputs`: the benchmark files read; the results file must not be one of them."""
    log = ResultsLog(path, settings)
    if path is None:
        return log
    for source in inputs:
        with suppress(OSError):
            if os.path.samefile(path, source):
                raise ResultsError(
                    f"--results {path} is the input {source}: choose another file"
                )
    problem = output_file_problem(path)
    if problem is not None:
        raise ResultsError(f"--results {problem}")
    if path.exists():
        _read_existing(log, path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        log._file = LineFile(path, append=True)
    except OSError as exc:
        raise ResultsError(f"cannot write {path}: {one_line(exc)}") from exc
    return log


def _read_existing(log: ResultsLog, path: Path) -> None:
    try:
        data = read_capped(path, MAX_RESULTS_BYTES)
    except OSError as exc:
        raise ResultsError(f"cannot read {path}: {one_line(exc)}") from exc
    complete = data.rfind(b"\n") + 1
    cut = data[complete:]
    if cut.strip() and not cut.startswith(_RECORD_START):
        raise ResultsError(
            f"{path} is not a results file (its last line is neither complete nor a record "
            "cut off): choose another --results file"
        )
    unreadable = ours = 0
    for number, line in enumerate(data[:complete].splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = loads_json(line)
        except ValueError:
            record = None
        if not (isinstance(record, dict) and isinstance(record.get("key"), str)
                and "settings" in record):
            unreadable += 1  # not a line of ours at all
            continue
        ours += 1
        if record.get("settings") != log.settings:
            raise ResultsError(
                f"{path} line {number} was made with other settings "
                f"({_difference(record.get('settings'), log.settings)}): pass the same "
                "settings to resume, or another --results file"
            )
        if not _is_record(record):  # edited or damaged: asked again
            unreadable += 1
            continue
        log.done[record["key"]] = record
    if unreadable and not ours:
        raise ResultsError(
            f"{path} is not a results file (none of its {unreadable} line(s) is a result "
            "record): choose another --results file"
        )
    if unreadable:
        log.notes.append(f"ignored {unreadable} unreadable line(s) in {path.name}")
    if cut:  # a record cut off mid-write by a kill: drop it
        try:
            with path.open("r+b") as f:
                f.truncate(complete)
        except OSError as exc:
            raise ResultsError(f"cannot repair {path}: {one_line(exc)}") from exc
        log.notes.append(f"dropped an incomplete last line of {path.name} (interrupted write)")


def _is_record(record: object) -> bool:
    """A line this command wrote: the fields the report reads, of the types it wrote."""
    if not isinstance(record, dict):
        return False
    number = (int, float)
    tokens, latency = record.get("generated_tokens", 0), record.get("latency_s", 0.0)
    return (
        isinstance(record.get("key"), str)
        and record.get("outcome") in _OUTCOMES
        and isinstance(record.get("benchmark"), str)
        and isinstance(record.get("task", ""), str)
        and isinstance(tokens, int) and not isinstance(tokens, bool) and tokens >= 0
        and isinstance(latency, number) and not isinstance(latency, bool)
        and math.isfinite(latency)
    )


def _difference(recorded: object, current: dict[str, Any]) -> str:
    if not isinstance(recorded, dict):
        return "no settings recorded"
    for name, value in current.items():
        if recorded.get(name) != value:
            return f"{name} {safe_text(one_line(recorded.get(name), 80))}, now {value}"
    return "unknown setting " + ", ".join(sorted(set(recorded) - set(current)))
