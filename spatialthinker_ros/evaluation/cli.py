"""`spatialthinker-ros eval`: accuracy of a deployment on CV-Bench, BLINK or a JSONL benchmark,
next to the paper's numbers."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..arguments import concurrency_problem, engine_config_from_args, fail
from ..core.engine import SpatialThinkerEngine
from ..core.text import one_line
from .benchmarks import InputError, open_inputs
from .paper import PAPER_EVAL
from .report import format_report, report_to_json
from .results import open_results
from .runner import EvalOptions, eval_settings, evaluate

EVAL_TIMEOUT_S = 600.0  # per request: a busy server answering 2048-token outputs is slow

DESCRIPTION = f"""\
Answer benchmark items and report accuracy overall, by benchmark and by task next to the
paper's numbers, parse failures, tokens per answer and latency. INPUT: a JSONL file (image,
question, choices, answer), CV-Bench or BLINK parquet files as distributed, a folder of such
files, or a hub dataset id (org/name[:glob,...]) when the network allows.

Defaults reproduce the authors' evaluation where it differs from the node's [node]:
  --prompt-style {PAPER_EVAL.prompt_style} [card]
  --max-pixels {PAPER_EVAL.max_pixels} (full resolution) [1003520]
  --max-new-tokens {PAPER_EVAL.max_new_tokens} [1024]
  --timeout {EVAL_TIMEOUT_S:g} s per request [60]
Greedy everywhere. Sources: docs/model.md, "Evaluation settings"."""


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """Eval's own options, and the paper's defaults for engine options already added."""
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="file, folder or hub id")
    parser.add_argument("--limit", type=int, default=0, metavar="N", help="first N items only")
    parser.add_argument(
        "--results",
        type=Path,
        metavar="FILE.jsonl",
        help="append per-item results here; a rerun skips the items already in it (resume)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=1,
        metavar="N",
        help="requests in flight (--backend openai only: the server batches them)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(
        prompt_style=PAPER_EVAL.prompt_style,
        min_pixels=PAPER_EVAL.min_pixels,
        max_pixels=PAPER_EVAL.max_pixels,
        max_new_tokens=PAPER_EVAL.max_new_tokens,
        timeout_s=EVAL_TIMEOUT_S,
    )


def eval_main(args: argparse.Namespace) -> int:
    if args.concurrency < 1 or args.limit < 0:
        return fail("--concurrency must be >= 1 and --limit >= 0")
    try:
        inputs = open_inputs(args.inputs)  # bad input fails before the model loads
    except InputError as exc:
        return fail(str(exc))
    if inputs.rows == 0:
        return fail("no items to evaluate: " + ", ".join(str(f.path) for f in inputs.files)
                    + " hold no lines or rows")
    config = engine_config_from_args(args)
    engine = SpatialThinkerEngine(config)
    problem = concurrency_problem(args.concurrency, engine.backend)
    if problem is not None:
        return fail(problem)
    try:
        log = open_results(args.results, eval_settings(config), [f.path for f in inputs.files])
    except InputError as exc:
        return fail(str(exc))
    try:
        engine.load()
        options = EvalOptions(args.limit, args.concurrency, progress=not args.quiet)
        report = evaluate(engine, inputs, log, options)
    except InputError as exc:  # a file that turns out unreadable half-way
        return fail(str(exc))
    except OSError as exc:  # disk full, read-only, denied: the file holds whole lines only
        fail(f"cannot write --results {args.results}: {exc.strerror or one_line(exc)} (the "
             "items written so far are kept; rerun the same command to resume)")
        return 1
    finally:
        log.close()
        engine.unload()
    if args.json:
        print(json.dumps(report_to_json(report), indent=2, ensure_ascii=False))
    else:
        print(format_report(report))
    if report.facts.interrupted:
        return 130
    return 0 if report.complete else 1
