"""Synthetic benchmark files in every format `eval` reads (tests, benchmarks, demos).

Small noise images, questions about a cube, three choices (left, right, above); the gold
letters are the caller's, so the accuracy of a model that always answers `(A) left` (the fitted
tiny model) is known exactly. The parquet layouts follow the published files: CV-Bench
(`image` struct of bytes and path, `prompt`, `choices`, `answer` "(A)", `type`, `task`, `idx`)
and BLINK (`image_1`..`image_4`, `sub_task`, `prompt`, `choices`, `answer`, `idx`).
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path

CHOICES = ("left", "right", "above")
IMAGE_SIZE = (64, 48)  # small: the fitted model answers fast and the engine keeps it tiny


def noise_png(seed: int, size: tuple[int, int] = IMAGE_SIZE) -> bytes:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def question(n: int) -> str:
    return f"Where is the cube number {n} relative to the ball?"


def prompt(n: int, choices: Sequence[str] = CHOICES) -> str:
    """The benchmark's `prompt` column: question and options, CV-Bench style."""
    options = "\n".join(f"({chr(65 + i)}) {c}" for i, c in enumerate(choices))
    return f"{question(n)} Select from the following choices.\n{options}"


def write_jsonl(
    path: Path,
    golds: Sequence[str],
    *,
    task: str = "relation",
    first: int = 0,
    size: tuple[int, int] = IMAGE_SIZE,
) -> Path:
    """One line per gold letter; `size` images written next to the file (`images/`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.parent / "images").mkdir(exist_ok=True)
    lines = []
    for i, gold in enumerate(golds, first):
        image = f"images/{path.stem}_{i}.png"
        (path.parent / image).write_bytes(noise_png(i, size))
        record = {
            "id": f"q{i}",
            "image": image,
            "question": question(i),
            "choices": list(CHOICES),
            "answer": gold,
            "task": task,
        }
        lines.append(json.dumps(record))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _image_struct(data: bytes | None, name: str) -> dict | None:
    return None if data is None else {"bytes": data, "path": name}


def write_cv_bench(
    path: Path,
    golds: Sequence[str],
    *,
    kind: str = "2D",
    task: str = "Relation",
    drop: Sequence[str] = (),
) -> Path:
    """A CV-Bench-like parquet (`test_2d.parquet` layout); `drop` removes columns."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = {
        "idx": list(range(len(golds))),
        "type": [kind] * len(golds),
        "task": [task] * len(golds),
        "image": [_image_struct(noise_png(100 + i), f"img/{i}.png") for i in range(len(golds))],
        "question": [question(i) for i in range(len(golds))],
        "choices": [list(CHOICES)] * len(golds),
        "answer": [f"({g})" for g in golds],
        "prompt": [prompt(i) for i in range(len(golds))],
        "source": ["synthetic"] * len(golds),
    }
    for column in drop:
        rows.pop(column)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(rows), path)
    return path


def write_blink(
    path: Path, golds: Sequence[str], *, sub_task: str = "Spatial_Relation", images: int = 1
) -> Path:
    """A BLINK-like parquet (`<Sub_Task>/val-00000-of-00001.parquet` layout); `images` per
    item (more than one: a multi-image task such as Jigsaw); gold "hidden" as in the test split."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = len(golds)
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    columns = {
        "idx": pa.array([f"val_{sub_task}_{i + 1}" for i in range(n)]),
        "question": pa.array([question(i) for i in range(n)]),
        "sub_task": pa.array([sub_task] * n),
    }
    for k in range(1, 5):
        cells = [
            _image_struct(noise_png(200 + 10 * i + k), f"{i}_{k}.png") if k <= images else None
            for i in range(n)
        ]
        columns[f"image_{k}"] = pa.array(cells, type=image_type)
    columns["choices"] = pa.array([list(CHOICES)] * n)
    columns["answer"] = pa.array([g if g == "hidden" else f"({g})" for g in golds])
    columns["prompt"] = pa.array([prompt(i) for i in range(n)])
    columns["explanation"] = pa.array([""] * n)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)
    return path
