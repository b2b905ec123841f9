"""Parser worst case: `parse_output` time per adversarial output shape at 8, 16, 32 and 64 KB.

Linear time shows as a ratio of about 2 per doubling of the size (the `x64/32` column); the
target (issue 10) is under 50 ms for any 64 KB output on one core. `--stream` also feeds every
64 KB shape to `StreamParser` in 4-character deltas (the generation's pace) and finishes it.
The shapes are in `spatialthinker_ros/testing/parser_inputs.py`. Times are the minimum over
the repeats of the process's CPU time (`--clock cpu`, the default: on a shared machine the wall
clock also counts the time other processes hold the core) or of the wall clock.

    PYTHONPATH=. .venv/bin/python bench/parser_worst_case.py [--repeats 7] [--stream]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

from _common import Stats, ms, pin_to_one_core, print_table

from spatialthinker_ros.core.parsing import StreamParser, parse_output
from spatialthinker_ros.testing.parser_inputs import SHAPES, generate

CHOICES = ("in front of", "behind", "left of", "right of")
SIZES = (8192, 16384, 32768, 65536)
DELTA = 4


def measure(call, repeats: int, clock) -> Stats:
    call()  # warm up
    samples = []
    for _ in range(repeats):
        start = clock()
        call()
        samples.append(clock() - start)
    return Stats(tuple(samples))


def parse(text: str) -> None:
    parse_output(text, CHOICES)


def stream(text: str) -> None:
    parser = StreamParser()
    for start in range(0, len(text), DELTA):
        parser.feed(text[start : start + DELTA])
    parser.finish(CHOICES)


def main() -> int:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--repeats", type=int, default=7)
    args.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    args.add_argument("--shapes", default="", help="only shapes whose name contains this")
    args.add_argument("--stream", action="store_true", help="also time StreamParser at 64 KB")
    options = args.parse_args()
    core = pin_to_one_core()
    clock = time.process_time if options.clock == "cpu" else time.perf_counter
    print(
        f"# parser_worst_case  {time.strftime('%Y-%m-%d %H:%M')}  {platform.machine()}, "
        f"python {platform.python_version()}, pinned to core {core}, "
        f"min {options.clock} time of {options.repeats}, load average {os.getloadavg()[0]:.1f}"
    )
    names = [n for n in SHAPES if options.shapes in n]
    rows, worst = [], [0.0] * len(SIZES)
    stream_rows = []
    for name in names:
        times = []
        for i, size in enumerate(SIZES):
            text = generate(name, size)
            seconds = measure(lambda text=text: parse(text), options.repeats, clock).min
            times.append(seconds)
            worst[i] = max(worst[i], seconds)
        ratio = times[-1] / times[-2] if times[-2] > 0 else float("nan")
        rows.append([name, *(ms(t) for t in times), f"{ratio:.2f}"])
        if options.stream:
            text = generate(name, SIZES[-1])
            repeats = max(1, options.repeats // 2)
            seconds = measure(lambda text=text: stream(text), repeats, clock).min
            stream_rows.append([name, ms(seconds)])
    rows.sort(key=lambda row: -float(row[-2]))
    headers = ["shape (sorted by 64 KB time)", *(f"{s // 1024} KB ms" for s in SIZES), "x64/32"]
    print_table(headers, [*rows, ["WORST", *(ms(t) for t in worst), ""]])
    if stream_rows:
        print()
        stream_rows.sort(key=lambda row: -float(row[1]))
        print_table([f"shape, 64 KB in {DELTA}-char deltas", "feed + finish ms"], stream_rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
