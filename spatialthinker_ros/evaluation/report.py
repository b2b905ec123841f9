"""Per-item records -> accuracy overall, by benchmark and by task next to the paper's numbers,
parse failures, tokens per answer, latency, skipped items: as a table or as JSON."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..core.text import safe_text
from .paper import PAPER, REPORTED_ACCURACY


@dataclass
class Group:
    n: int = 0
    correct: int = 0
    paper: float | None = None  # the paper's accuracy for this group, when it reports one

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else 0.0

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"accuracy": self.accuracy, "n": self.n}
        out["correct"] = self.correct
        if self.paper is not None:
            out["paper"] = self.paper
            out["difference"] = self.accuracy - self.paper
        return out


@dataclass
class RunFacts:
    """What the runner knows besides the per-item records."""

    files: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    skipped: Counter[str] = field(default_factory=Counter)
    ignored_files: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    errors: int = 0
    first_error: str = ""
    answered_now: int = 0
    resumed: int = 0
    wall_s: float = 0.0  # time spent answering in this run
    concurrency: int = 1
    interrupted: bool = False
    aborted: str = ""  # why the run stopped early, when it did


@dataclass
class Report:
    overall: Group
    by_benchmark: dict[str, Group]
    by_task: dict[str, Group]  # "benchmark/task"
    tasks_of: dict[str, list[str]]  # benchmark -> its by_task keys
    no_answer: int
    unmatched: int
    letter_text_disagree: int
    tokens: list[int]
    latencies_s: list[float]
    facts: RunFacts

    @property
    def parse_failures(self) -> int:
        return self.no_answer + self.unmatched

    @property
    def complete(self) -> bool:
        f = self.facts
        return not (f.errors or f.interrupted or f.aborted)


def build_report(records: Iterable[dict[str, Any]], facts: RunFacts) -> Report:
    overall = Group()
    by_benchmark: dict[str, Group] = {}
    by_task: dict[str, Group] = {}
    tasks_of: dict[str, set[str]] = {}
    outcomes: Counter[str] = Counter()
    disagree = 0
    tokens: list[int] = []
    latencies: list[float] = []
    for r in records:
        correct = int(r["outcome"] == "correct")
        groups = [overall, _group(by_benchmark, r["benchmark"])]
        if r.get("task"):
            task_key = f"{r['benchmark']}/{r['task']}"
            groups.append(_group(by_task, task_key))
            tasks_of.setdefault(r["benchmark"], set()).add(task_key)
        for g in groups:
            g.n += 1
            g.correct += correct
        outcomes[r["outcome"]] += 1
        disagree += bool(r.get("letter_text_disagree"))
        tokens.append(int(r.get("generated_tokens", 0)))
        latencies.append(float(r.get("latency_s", 0.0)))
    return Report(
        overall,
        dict(sorted(by_benchmark.items())),
        dict(sorted(by_task.items())),
        {b: sorted(keys) for b, keys in tasks_of.items()},
        outcomes["no_answer"],
        outcomes["unmatched"],
        disagree,
        tokens,
        latencies,
        facts,
    )


def _group(groups: dict[str, Group], name: str) -> Group:
    if name not in groups:
        groups[name] = Group(paper=REPORTED_ACCURACY.get(name))
    return groups[name]


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _spread(values: Sequence[float], digits: int) -> dict[str, float]:
    mean = sum(values) / len(values) if values else 0.0
    return {
        "mean": round(mean, digits),
        "p50": round(percentile(values, 0.5), digits),
        "p95": round(percentile(values, 0.95), digits),
    }


def report_to_json(report: Report) -> dict[str, Any]:
    f = report.facts
    n = report.overall.n
    return {
        "overall": report.overall.to_json(),
        "by_benchmark": {k: g.to_json() for k, g in report.by_benchmark.items()},
        "by_task": {k: g.to_json() for k, g in report.by_task.items()},
        "parse_failures": {
            "no_answer": report.no_answer,
            "unmatched": report.unmatched,
            "rate": report.parse_failures / n if n else 0.0,
        },
        "letter_text_disagree": report.letter_text_disagree,
        "tokens_per_answer": _spread(report.tokens, 1),
        "latency_s": _spread(report.latencies_s, 4),
        "throughput_items_per_s": round(f.answered_now / f.wall_s, 4) if f.wall_s else 0.0,
        "concurrency": f.concurrency,
        "answered_now": f.answered_now,
        "resumed": f.resumed,
        "skipped": dict(sorted(f.skipped.items())),
        "ignored_files": [{"file": p, "why": w} for p, w in f.ignored_files],
        "errors": {"count": f.errors, "first": f.first_error},
        "interrupted": f.interrupted,
        "aborted": f.aborted,
        "complete": report.complete,
        "notes": f.notes,
        "settings": f.settings,
        "files": f.files,
        "paper": PAPER,
    }


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def format_report(report: Report) -> str:
    """The human-readable report (benchmark rows, their tasks indented under them)."""
    f = report.facts
    s = f.settings
    lines = [
        f"model {s.get('model')}, prompt {s.get('prompt_style')}, pixels {s.get('min_pixels')}"
        f"..{s.get('max_pixels')}, max {s.get('max_new_tokens')} new tokens, greedy"
        + (f", quantization {s['quantization']}" if s.get("quantization") else ""),
        "",
    ]
    header = f"{'':<34}{'n':>6}{'correct':>9}{'accuracy':>10}{'paper':>8}{'diff':>8}"
    lines.append(header)
    lines.append(_row("overall", report.overall))
    for name, group in report.by_benchmark.items():
        lines.append(_row(name, group))
        for task_key in report.tasks_of.get(name, ()):
            lines.append(_row("  " + task_key[len(name) + 1 :], report.by_task[task_key]))
    n = report.overall.n
    lines.append("")
    if n:
        lines.append(
            f"parse failures: {report.parse_failures} of {n} ({_pct(report.parse_failures / n)}):"
            f" no answer {report.no_answer}, answer matching no choice {report.unmatched}"
        )
        if report.letter_text_disagree:
            lines.append(
                f"letter and text name different choices: {report.letter_text_disagree} "
                "(scored by the letter; the reference scored by the text)"
            )
        t, lat = _spread(report.tokens, 1), _spread(report.latencies_s, 3)
        lines.append(
            f"tokens per answer: mean {t['mean']:.0f}, p50 {t['p50']:.0f}, p95 {t['p95']:.0f}"
        )
        lines.append(
            f"latency per answer: mean {lat['mean']:.3f} s, p50 {lat['p50']:.3f} s, "
            f"p95 {lat['p95']:.3f} s"
        )
    rate = f" in {f.wall_s:.1f} s ({f.answered_now / f.wall_s:.2f} items/s, " if f.wall_s else " ("
    lines.append(
        f"answered {f.answered_now} now{rate}{f.concurrency} in flight), "
        f"{f.resumed} from the results file"
    )
    if f.skipped:
        reasons = "; ".join(f"{safe_text(k)} {v}" for k, v in sorted(f.skipped.items()))
        lines.append(f"skipped {sum(f.skipped.values())} items: {reasons}")
    for path, why in f.ignored_files:
        lines.append(f"ignored file {safe_text(path)}: {safe_text(why)}")
    for note in f.notes:
        lines.append(safe_text(note))
    if f.errors:
        lines.append(
            f"inference errors: {f.errors} items not scored (rerun with the same --results to "
            f"retry them); first: {safe_text(f.first_error)}"
        )
    if f.aborted:
        lines.append(f"stopped early: {safe_text(f.aborted)}")
    if f.interrupted:
        lines.append("interrupted: rerun the same command with the same --results to resume")
    lines.append(f"paper: {PAPER}; diff in percentage points")
    return "\n".join(lines)


def _row(name: str, group: Group) -> str:
    paper = diff = ""
    if group.paper is not None:
        paper = _pct(group.paper)
        diff = f"{100 * (group.accuracy - group.paper):+.1f}"
    label = safe_text(name)
    label = label if len(label) <= 32 else label[:31] + "\u2026"
    accuracy = _pct(group.accuracy) if group.n else "-"
    return f"{label:<34}{group.n:>6}{group.correct:>9}{accuracy:>10}{paper:>8}{diff:>8}"
