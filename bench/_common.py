"""Helpers shared by the bench scripts: timing statistics, tables, test images, machine facts.

Bench scripts are run from the repository root, e.g. `PYTHONPATH=. .venv/bin/python
bench/prefix_reuse.py`; they never download anything (HF_HUB_OFFLINE is forced on).
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


@dataclass(frozen=True)
class Stats:
    """Seconds over repeats."""

    samples: tuple[float, ...]

    @property
    def min(self) -> float:
        return min(self.samples)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)


def measure(call: Callable[[], object], repeats: int, warmup: int = 1) -> Stats:
    """Run `call` warmup + repeats times; keep the repeats' wall times."""
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        samples.append(time.perf_counter() - t0)
    return Stats(tuple(samples))


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f}"


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A Markdown table (pastes into bench/README.md as is)."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")


def noise_rgb(width: int, height: int, seed: int = 0):
    """H x W x 3 uint8 noise (the worst case for any compression or resampling shortcut)."""
    import numpy as np

    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def machine_line() -> str:
    """One line naming the machine, for the records in bench/README.md."""
    import torch

    cores = os.cpu_count()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{platform.machine()}, {cores} cores, {gpu}, torch {torch.__version__}, "
        f"python {platform.python_version()}"
    )


def pin_to_one_core() -> int | None:
    """Pin this process to one core (the per-core overhead figure); returns it, or None."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    core = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {core})
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    return core


def card_snippet(
    model, processor, image, question: str, max_new_tokens: int, force_length: bool = True
) -> list[int]:
    """The model card's usage code (its README 'Usage'), with min_new_tokens added so both sides
    generate the same number of tokens (`force_length`; off where the caller removed the end
    token instead, see gpu.py). Returns the generated ids (without the prompt)."""
    from spatialthinker_ros.core.prompt import INSTRUCTION

    width, height = image.size
    template = f"""{INSTRUCTION}

Image size: {width} x {height}"""
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image", "image": image},
                {"type": "text", "text": template + "\n\n" + question},
            ],
        }
    ]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = processor(text=[text], images=[image], return_tensors="pt").to(model.device)
    length = {"min_new_tokens": max_new_tokens} if force_length else {}
    generated_ids = model.generate(**inputs, max_new_tokens=max_new_tokens, **length)
    processor.batch_decode(generated_ids, skip_special_tokens=True)[0]
    return generated_ids[0, inputs["input_ids"].shape[1] :].tolist()


def require_loopback_only() -> None:
    """Exit 2 unless this process is in a network namespace with only `lo` (the benchmarks start
    rclpy or local servers: `unshare -rn sh -c 'ip link set lo up && ...'`)."""
    import socket

    if sorted(name for _, name in socket.if_nameindex()) != ["lo"]:
        print("run inside a loopback-only network namespace: unshare -rn sh -c "
              "'ip link set lo up && ...'", file=sys.stderr)
        raise SystemExit(2)
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
