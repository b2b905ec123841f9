"""Benchmark files as evaluation items: a generic JSONL, CV-Bench and BLINK parquet files as
they are distributed, a folder of such files, or a hub dataset id.

- JSONL: one item per line, `image` (path relative to the file), `question`, `choices` (list),
  `answer` (letter), optional `task`, `id`, `benchmark` (default: the file's stem) and
  `prompt` (the exact question text; default: the question followed by `(A) ... (B) ...`).
- CV-Bench (`nyu-visionx/CV-Bench`, `test_2d.parquet` / `test_3d.parquet`): the `image`
  column holds the encoded image; the model reads the `prompt` column (question and options, as
  the paper's evaluation sent it); benchmark `CV-Bench 2D|3D` from `type`, task from `task`.
- BLINK (`BLINK-Benchmark/BLINK`, `<Sub_Task>/val-*.parquet`): `image_1`..`image_4`, `prompt`,
  `choices`, `answer`; benchmark `BLINK`, task from `sub_task`. Spatial_Relation and
  Relative_Depth (the paper's two) are single-image; items with more than one image (Jigsaw,
  Multi-view, ...) are skipped with a counted reason, as are the test split's hidden answers.

A bad item (missing column, no choices, a gold letter outside the choices) becomes a
`SkippedItem` with its reason; a file that cannot be read or has the wrong format raises
`InputError` (one line for the user).
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from ..core.files import MAX_IMAGE_FILE_BYTES, input_file_problem, read_capped
from ..core.prompt import MAX_CHOICES, question_text
from ..core.text import loads_json, one_line, safe_text
from .paper import PAPER_FILES
from .scoring import letter, parse_gold

PARQUET_BATCH_ROWS = 16
_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(?::.+)?$")
BLINK_IMAGES = ("image_1", "image_2", "image_3", "image_4")


class InputError(Exception):
    """A benchmark input that cannot be used at all (missing, unreadable, wrong format)."""


@dataclass(frozen=True)
class EvalItem:
    key: str  # stable across runs: "<benchmark>#<id>" (resume skips keys already answered)
    benchmark: str
    task: str
    prompt: str  # the question as the model reads it, options included
    choices: tuple[str, ...]
    gold: int  # index into choices
    source: str  # file it came from (for messages)
    image_bytes: bytes | None = None
    image_path: Path | None = None

    @property
    def gold_letter(self) -> str:
        return letter(self.gold)

    def load_image(self) -> Image.Image:
        """The decoded RGB image; raises (OSError, ValueError, PIL errors) when unreadable."""
        data = self.image_bytes
        if data is None:
            if self.image_path is None:
                raise ValueError("no image")
            data = read_capped(self.image_path, MAX_IMAGE_FILE_BYTES)  # never a FIFO or device
        with Image.open(io.BytesIO(data)) as image:
            return image.convert("RGB")


@dataclass(frozen=True)
class SkippedItem:
    reason: str  # a short category, counted in the summary
    source: str
    detail: str = ""


Entry = EvalItem | SkippedItem


@dataclass(frozen=True)
class BenchmarkFile:
    path: Path
    kind: str  # "jsonl" | "cv-bench" | "blink"
    rows: int

    def entries(self) -> Iterator[Entry]:
        readers = {"jsonl": _jsonl_entries, "cv-bench": _cv_bench_entries, "blink": _blink_entries}
        try:
            yield from readers[self.kind](self.path)
        except (OSError, ValueError) as exc:  # pyarrow's errors are OSError/ValueError too
            raise InputError(f"cannot read {self.path}: {one_line(exc)}") from exc


@dataclass
class InputSet:
    files: list[BenchmarkFile]
    # Files met in folders that are not benchmark files we know (name, why): reported, skipped.
    ignored: list[tuple[str, str]] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return sum(f.rows for f in self.files)

    def entries(self) -> Iterator[Entry]:
        for f in self.files:
            yield from f.entries()


# ----------------------------------------------------------------------------------- opening


def open_inputs(inputs: Sequence[str]) -> InputSet:
    """Resolve paths, folders and hub ids into benchmark files; InputError when unusable."""
    result = InputSet([])
    for spec in inputs:
        path = Path(spec)
        if not path.exists():
            if _HUB_ID_RE.match(spec) and path.suffix not in (".jsonl", ".parquet"):
                path = download_hub_dataset(spec)
            else:
                raise InputError(f"{spec}: no such file or folder")
        if path.is_dir():
            _add_folder(path, result)
        else:
            problem = input_file_problem(path)  # a FIFO or device would block or never end
            if problem is not None:
                raise InputError(problem)
            result.files.append(_detect(path))
    if not result.files:
        raise InputError("no benchmark files (.jsonl or .parquet) in " + ", ".join(inputs))
    return result


def _add_folder(folder: Path, result: InputSet) -> None:
    candidates = sorted(
        p
        for p in folder.rglob("*")
        if p.suffix in (".jsonl", ".parquet")
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    for path in candidates:
        try:
            result.files.append(_detect(path))
        except _UnknownLayout as exc:
            result.ignored.append((str(path), str(exc)))


class _UnknownLayout(InputError):
    """A readable file that is not a benchmark file we know (skipped inside folders)."""


def _detect(path: Path) -> BenchmarkFile:
    if path.suffix == ".jsonl":
        return BenchmarkFile(path, "jsonl", _jsonl_rows(path))
    if path.suffix == ".parquet":
        columns, rows = _parquet_schema(path)
        if "image_1" in columns:
            return BenchmarkFile(path, "blink", rows)
        if "image" in columns:
            return BenchmarkFile(path, "cv-bench", rows)
        raise _UnknownLayout(
            f"{path}: neither CV-Bench (an image column) nor BLINK (image_1 ... columns); "
            f"its columns: {', '.join(columns[:12])}"
        )
    raise InputError(f"{path}: not a benchmark file (.jsonl or .parquet)")


def _jsonl_rows(path: Path) -> int:
    """Number of non-blank lines; checks that the first is a JSON object with our fields."""
    try:
        with path.open("rb") as f:
            rows, first = 0, None
            for line in f:
                if line.strip():
                    rows += 1
                    first = line if first is None else first
    except OSError as exc:
        raise InputError(f"cannot read {path}: {one_line(exc)}") from exc
    if first is None:
        return 0
    try:
        record = loads_json(first)
    except ValueError as exc:
        raise InputError(f"{path}: not JSON Lines (line 1: {one_line(exc)})") from exc
    if not isinstance(record, dict) or not {"image", "question"} & record.keys():
        raise _UnknownLayout(f"{path}: line 1 has neither an image nor a question field")
    return rows


def _parquet_schema(path: Path) -> tuple[list[str], int]:
    pq = _pyarrow_parquet()
    try:
        meta = pq.ParquetFile(path)
        return list(meta.schema_arrow.names), meta.metadata.num_rows
    except Exception as exc:  # noqa: BLE001 - ArrowInvalid & co: any unreadable file is one line
        raise InputError(f"cannot read {path} as parquet: {one_line(exc)}") from exc


def _pyarrow_parquet():
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise InputError(
            "reading parquet needs pyarrow: pip install 'spatialthinker_ros[eval]'"
        ) from exc
    return pq


def download_hub_dataset(spec: str) -> Path:
    """`org/name[:glob,glob]` -> local folder with the dataset's files (huggingface_hub cache).

    Without globs: the files the paper evaluated (`paper.PAPER_FILES`), else every parquet."""
    repo_id, _, globs = spec.partition(":")
    patterns = [g for g in globs.split(",") if g] or list(
        PAPER_FILES.get(repo_id, ("*.parquet", "**/*.parquet"))
    )
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:
        raise InputError(f"{spec}: hub datasets need huggingface_hub installed") from exc
    try:
        return Path(snapshot_download(repo_id, repo_type="dataset", allow_patterns=patterns))
    except Exception as exc:  # noqa: BLE001 - offline, no such repo, network: one line
        raise InputError(
            f"{spec}: no such file or folder, and not fetched as a hub dataset "
            f"({type(exc).__name__}: {one_line(exc, 160)}); download it with `hf download` and "
            "pass the folder (README: Check a deployment against the paper)"
        ) from exc


# ----------------------------------------------------------------------------------- reading


def _item(
    *,
    source: str,
    benchmark: object,
    task: object,
    item_id: object,
    prompt: object,
    question: object,
    choices: object,
    answer: object,
    missing: str,
    image_bytes: bytes | None = None,
    image_path: Path | None = None,
) -> Entry:
    """Validate one item's fields; `missing` names a field that was absent ("" when none)."""
    if missing:
        return SkippedItem(missing, source)
    if not isinstance(choices, (list, tuple)):
        return SkippedItem("choices is not a list", source)
    if not choices:
        return SkippedItem("no choices", source)
    if len(choices) > MAX_CHOICES:
        return SkippedItem(f"more than {MAX_CHOICES} choices", source)
    if not all(_scalar_text(c) is not None for c in choices):
        return SkippedItem("a choice is not text or a number", source)
    choice_texts = tuple(safe_text(_scalar_text(c)).strip() for c in choices)
    if not all(_scalar_text(v) is not None for v in (benchmark, task, item_id)):
        return SkippedItem("benchmark, task or id is not text or a number", source)
    benchmark, task, item_id = (_scalar_text(v) for v in (benchmark, task, item_id))
    if isinstance(answer, str) and answer.strip().lower() == "hidden":
        return SkippedItem("no gold answer (hidden test split)", source)
    gold = parse_gold(answer, choice_texts)
    if gold is None:
        return SkippedItem("gold answer names no choice", source, one_line(answer, 60))
    if isinstance(prompt, str) and prompt.strip():
        text = prompt.strip()
    elif isinstance(question, str) and question.strip():
        text = question_text(question, choice_texts)
    else:
        return SkippedItem("empty question", source)
    benchmark, task = safe_text(benchmark).strip(), safe_text(task).strip()
    return EvalItem(
        key=f"{benchmark}#{safe_text(item_id)}",
        benchmark=benchmark,
        task=task,
        prompt=safe_text(text),
        choices=choice_texts,
        gold=gold,
        source=source,
        image_bytes=image_bytes,
        image_path=image_path,
    )


def _scalar_text(value: object) -> str | None:
    """Text of a string or a number (a file may store counts as numbers); None for anything
    else (null, lists, objects, booleans), which an item must not turn into "None" or "['x']"."""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return None


def _jsonl_entries(path: Path) -> Iterator[Entry]:
    with path.open("rb") as f:
        number = 0
        for raw in f:
            if not raw.strip():
                continue
            number += 1
            source = f"{path.name}:{number}"
            try:
                record = loads_json(raw)
            except ValueError:
                yield SkippedItem("line is not valid JSON", source)
                continue
            if not isinstance(record, dict):
                yield SkippedItem("line is not a JSON object", source)
                continue
            missing = next(
                (f"missing field '{k}'" for k in ("image", "choices", "answer") if k not in record),
                "",
            )
            if not missing and "question" not in record and "prompt" not in record:
                missing = "missing field 'question'"
            image = record.get("image")
            if not missing and not isinstance(image, str):
                missing = "field 'image' is not a path"
            yield _item(
                source=source,
                benchmark=record.get("benchmark") or path.stem,
                task=record.get("task") or "",
                item_id=record.get("id", number),
                prompt=record.get("prompt"),
                question=record.get("question"),
                choices=record.get("choices"),
                answer=record.get("answer"),
                missing=missing,
                image_path=path.parent / image if isinstance(image, str) else None,
            )


def _parquet_rows(path: Path, wanted: Sequence[str]) -> Iterator[tuple[int, dict[str, Any], set]]:
    """(row number, row, columns present) in batches; only the columns we use are read."""
    pq = _pyarrow_parquet()
    reader = pq.ParquetFile(path)
    present = set(reader.schema_arrow.names)
    columns = [c for c in wanted if c in present]
    number = 0
    for batch in reader.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=columns):
        for row in batch.to_pylist():
            yield number, row, present
            number += 1


def _image_value(value: object, folder: Path) -> tuple[bytes | None, Path | None]:
    """A datasets `Image` feature cell ({"bytes", "path"}), raw bytes or a path."""
    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
        if isinstance(data, (bytes, bytearray)) and data:
            return bytes(data), None
        if isinstance(path, str) and path:
            return None, folder / path
        return None, None
    if isinstance(value, (bytes, bytearray)):
        return bytes(value), None
    if isinstance(value, str) and value:
        return None, folder / value
    return None, None


def _missing(present: set, row: dict[str, Any], required: Sequence[str]) -> str:
    for name in required:
        if name not in present:
            return f"missing column '{name}'"
        if row.get(name) is None:
            return f"empty {name}"
    return ""


_CV_BENCH_COLUMNS = ("idx", "type", "task", "image", "prompt", "question", "choices", "answer")


def _cv_bench_entries(path: Path) -> Iterator[Entry]:
    for number, row, present in _parquet_rows(path, _CV_BENCH_COLUMNS):
        source = f"{path.name}:{number + 1}"
        missing = _missing(present, row, ("image", "choices", "answer"))
        image_bytes, image_path = _image_value(row.get("image"), path.parent)
        if not missing and image_bytes is None and image_path is None:
            missing = "empty image"
        kind = str(row.get("type") or "").strip()
        yield _item(
            source=source,
            benchmark=f"CV-Bench {kind}" if kind else "CV-Bench",
            task=str(row.get("task") or ""),
            item_id=str(row["idx"]) if row.get("idx") is not None else f"{path.name}:{number}",
            prompt=row.get("prompt"),
            question=row.get("question"),
            choices=row.get("choices"),
            answer=row.get("answer"),
            missing=missing,
            image_bytes=image_bytes,
            image_path=image_path,
        )


def _blink_entries(path: Path) -> Iterator[Entry]:
    wanted = ("idx", "sub_task", *BLINK_IMAGES, "prompt", "question", "choices", "answer")
    for number, row, present in _parquet_rows(path, wanted):
        source = f"{path.parent.name}/{path.name}:{number + 1}"
        images = [row.get(c) for c in BLINK_IMAGES if row.get(c) is not None]
        if len(images) > 1:
            yield SkippedItem("multi-image item (not supported)", source)
            continue
        missing = _missing(present, row, ("image_1", "choices", "answer"))
        image_bytes, image_path = _image_value(row.get("image_1"), path.parent)
        if not missing and image_bytes is None and image_path is None:
            missing = "empty image_1"
        task = str(row.get("sub_task") or path.parent.name)
        yield _item(
            source=source,
            benchmark="BLINK",
            task=task,
            item_id=str(row.get("idx") or f"{task}:{path.stem}:{number}"),
            prompt=row.get("prompt"),
            question=row.get("question"),
            choices=row.get("choices"),
            answer=row.get("answer"),
            missing=missing,
            image_bytes=image_bytes,
            image_path=image_path,
        )
