"""One evaluation run: items -> engine -> scored records, in input order, appended to the
results file as they come; items already there are not asked again. With a backend that takes
concurrent requests (a remote server), N requests stay in flight (`core.concurrency`)."""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any

from tqdm import tqdm

from ..core.concurrency import ordered_map
from ..core.engine import EngineConfig, EngineError, GenerationStopped, SpatialThinkerEngine
from ..core.prompt import PROMPT_VERSION
from ..core.text import one_line, safe_text
from .benchmarks import EvalItem, InputSet, SkippedItem
from .report import Report, RunFacts, build_report
from .results import ResultsLog
from .scoring import score_output

DUPLICATE = "duplicate item (same benchmark and id as an earlier one)"


@dataclass(frozen=True)
class EvalOptions:
    limit: int = 0  # evaluate only the first N items of the input (0: all)
    concurrency: int = 1  # requests in flight (> 1 only for backends that take them)
    progress: bool = True  # progress bar on stderr (when it is a terminal)
    max_consecutive_errors: int = 8  # stop early: the server is down or misconfigured


@dataclass(frozen=True)
class _Failed:
    message: str


Outcome = dict[str, Any] | SkippedItem | _Failed


def eval_settings(config: EngineConfig) -> dict[str, Any]:
    """What makes two answers comparable; recorded with every result (resume checks it)."""
    model = (config.api_model or config.model) if config.backend == "openai" else config.model
    return {
        "model": model,
        "prompt_style": config.prompt_style.value,
        "prompt_version": PROMPT_VERSION,
        "min_pixels": config.min_pixels,
        "max_pixels": config.max_pixels,
        "max_new_tokens": config.max_new_tokens,
        # only when on: results files written before the option existed still resume
        **({"quantization": config.quantization} if config.quantization != "none" else {}),
    }


def _answer(
    engine: SpatialThinkerEngine, item: EvalItem, settings: dict[str, Any], stop: threading.Event
) -> Outcome:
    """Answer and score one item (runs on a worker thread when concurrency > 1)."""
    try:
        image = item.load_image()
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for bad bytes
        return SkippedItem("unreadable image", item.source, one_line(exc))
    try:  # what the engine would refuse before asking the model is bad input, not an error
        prepared = engine.prepare_image(image)
        engine.prompt_for(prepared, item.prompt)
    except EngineError as exc:
        return SkippedItem("refused by the engine", item.source, one_line(exc))
    t0 = time.perf_counter()
    try:  # the prepared image is already at the model's size: the engine does not resize again
        result = engine.answer(prepared.image, item.prompt, should_stop=stop.is_set)
    except GenerationStopped:
        return _Failed("stopped")
    except EngineError as exc:
        return _Failed(f"{item.source}: {one_line(exc)}")
    latency_s = time.perf_counter() - t0
    score = score_output(result.raw, item.choices, item.gold)
    return {
        "key": item.key,
        "benchmark": item.benchmark,
        "task": item.task,
        "source": safe_text(item.source),
        "gold": item.gold_letter,
        "predicted": score.predicted,
        "outcome": score.outcome.value,
        "answer_text": safe_text(score.answer_text),
        "letter_text_disagree": score.letter_text_disagree,
        "status": result.reasoning.status.value,
        "prompt_tokens": result.prompt_tokens,
        "generated_tokens": result.generated_tokens,
        "latency_s": round(latency_s, 4),
        "raw_output": safe_text(result.raw),
        "settings": settings,
    }


def evaluate(
    engine: SpatialThinkerEngine, inputs: InputSet, log: ResultsLog, options: EvalOptions
) -> Report:
    """Run the evaluation; Ctrl-C ends it early with a report of what was answered."""
    facts = RunFacts(
        files=[str(f.path) for f in inputs.files],
        settings=log.settings,
        ignored_files=list(inputs.ignored),
        notes=list(log.notes),
        concurrency=options.concurrency,
    )
    records: list[dict[str, Any]] = []
    correct = 0  # running count for the progress bar
    total = min(inputs.rows, options.limit) if options.limit else inputs.rows
    bar = tqdm(
        total=total,
        unit="item",
        desc="eval",
        disable=not (options.progress and sys.stderr.isatty()),
    )
    stop = threading.Event()

    def todo() -> Iterator[EvalItem]:
        """Items still to answer; counts skipped, duplicate and already answered ones."""
        entries = inputs.entries()
        seen: set[str] = set()
        for entry in islice(entries, options.limit) if options.limit else entries:
            if isinstance(entry, SkippedItem):
                facts.skipped[entry.reason] += 1
            elif entry.key in seen:
                facts.skipped[DUPLICATE] += 1
            elif entry.key in log.done:
                seen.add(entry.key)
                keep(log.done[entry.key])
                facts.resumed += 1
            else:
                seen.add(entry.key)
                yield entry
                continue
            bar.update()

    def keep(record: dict[str, Any]) -> None:
        nonlocal correct
        records.append(record)
        correct += record["outcome"] == "correct"
        bar.set_postfix_str(f"accuracy {correct / len(records):.1%}", refresh=False)

    def answer(item: EvalItem) -> Outcome:
        return _answer(engine, item, log.settings, stop)

    consecutive_errors = 0
    t0 = time.perf_counter()
    results = ordered_map(answer, todo(), options.concurrency, stop=stop)
    try:
        with contextlib.closing(results):
            for outcome in results:
                bar.update()
                if isinstance(outcome, SkippedItem):
                    facts.skipped[outcome.reason] += 1
                    continue
                if isinstance(outcome, _Failed):
                    facts.errors += 1
                    facts.first_error = facts.first_error or outcome.message
                    consecutive_errors += 1
                    if consecutive_errors >= options.max_consecutive_errors:
                        facts.aborted = f"{consecutive_errors} inference errors in a row"
                        break
                    continue
                consecutive_errors = 0
                log.append(outcome)
                keep(outcome)
                facts.answered_now += 1
    except KeyboardInterrupt:
        facts.interrupted = True
    finally:
        facts.wall_s = time.perf_counter() - t0
        bar.close()
    return build_report(records, facts)
