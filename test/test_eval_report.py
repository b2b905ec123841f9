"""Scoring one output, aggregating records into the report, the results file: no model."""

from __future__ import annotations

import json

import pytest

from spatialthinker_ros.evaluation.paper import REPORTED_ACCURACY
from spatialthinker_ros.evaluation.report import (
    RunFacts,
    build_report,
    format_report,
    percentile,
    report_to_json,
)
from spatialthinker_ros.evaluation.results import ResultsError, open_results
from spatialthinker_ros.evaluation.scoring import Outcome, parse_gold, score_output

CHOICES = ("left", "right", "above")


@pytest.mark.parametrize(
    ("answer", "index"),
    [
        ("(A)", 0),
        ("B", 1),
        ("(c)", 2),
        (" ( B ) ", 1),
        ("C.", 2),
        ("right", 1),
        ("(D)", None),
        ("hidden", None),
        ("", None),
        (None, None),
        (3, None),
    ],
)
def test_gold_letters_as_benchmarks_write_them(answer, index):
    assert parse_gold(answer, CHOICES) == index


@pytest.mark.parametrize(
    ("output", "outcome", "predicted", "disagree"),
    [
        ("<answer> (A) left </answer>", Outcome.CORRECT, "A", False),
        ("<answer> (B) right </answer>", Outcome.WRONG, "B", False),
        ("<answer> right </answer>", Outcome.WRONG, "B", False),  # text only
        ("<think>...</think> Answer: (A) left", Outcome.CORRECT, "A", False),
        ("<answer> (A) right </answer>", Outcome.CORRECT, "A", True),  # the letter decides
        ("<answer> a purple elephant </answer>", Outcome.UNMATCHED, "", False),
        ("<answer> (F) nothing </answer>", Outcome.UNMATCHED, "", False),
        ("<observe> no answer at all", Outcome.NO_ANSWER, "", False),
        ("", Outcome.NO_ANSWER, "", False),
    ],
)
def test_one_output_against_gold_a(output, outcome, predicted, disagree):
    score = score_output(output, CHOICES, 0)
    assert (score.outcome, score.predicted, score.letter_text_disagree) == (
        outcome,
        predicted,
        disagree,
    )
    assert score.outcome.parse_failure == (outcome in (Outcome.UNMATCHED, Outcome.NO_ANSWER))


def test_percentiles_interpolate_like_numpy():
    values = [1.0, 2.0, 3.0, 4.0, 10.0]
    assert percentile(values, 0.5) == 3.0
    assert percentile(values, 0.95) == pytest.approx(8.8)
    assert percentile([], 0.5) == 0.0 and percentile([7.0], 0.95) == 7.0


def record(benchmark, task, outcome, tokens=100, latency=1.0, disagree=False):
    return {
        "key": f"{benchmark}#{task}",
        "benchmark": benchmark,
        "task": task,
        "outcome": outcome,
        "generated_tokens": tokens,
        "latency_s": latency,
        "letter_text_disagree": disagree,
    }


def test_groups_paper_numbers_and_failures_add_up():
    records = [
        record("CV-Bench 2D", "Count", "correct", 100, 1.0),
        record("CV-Bench 2D", "Relation", "wrong", 200, 2.0, disagree=True),
        record("CV-Bench 2D", "Relation", "unmatched", 300, 3.0),
        record("BLINK", "Relative_Depth", "no_answer", 400, 4.0),
        record("mine", "", "correct", 500, 5.0),
    ]
    facts = RunFacts(answered_now=5, wall_s=2.5, concurrency=4)
    facts.skipped["no choices"] = 2
    report = report_to_json(build_report(records, facts))
    assert report["overall"] == {"accuracy": 0.4, "n": 5, "correct": 2}
    cv = report["by_benchmark"]["CV-Bench 2D"]
    assert (cv["n"], cv["correct"], cv["paper"]) == (3, 1, REPORTED_ACCURACY["CV-Bench 2D"])
    assert cv["difference"] == pytest.approx(1 / 3 - 0.710)
    assert report["by_task"]["BLINK/Relative_Depth"]["paper"] == 0.669
    assert report["by_task"]["CV-Bench 2D/Relation"] == {"accuracy": 0.0, "n": 2, "correct": 0}
    assert "mine/" not in json.dumps(report["by_task"])  # no task: no task row
    assert report["parse_failures"] == {"no_answer": 1, "unmatched": 1, "rate": 0.4}
    assert report["letter_text_disagree"] == 1
    assert report["tokens_per_answer"] == {"mean": 300.0, "p50": 300.0, "p95": 480.0}
    assert report["throughput_items_per_s"] == 2.0
    assert report["skipped"] == {"no choices": 2}
    for group in [report["overall"], *report["by_benchmark"].values()]:
        assert 0.0 <= group["accuracy"] <= 1.0


def test_the_table_puts_tasks_under_their_benchmark_and_sanitises_names():
    records = [
        record("CV-Bench 3D", "Depth", "correct"),
        record("evil\x00\u202ebench\x1b[2J", "t\ud800", "wrong"),
    ]
    text = format_report(build_report(records, RunFacts(settings={"model": "m"})))
    lines = text.splitlines()
    row = next(i for i, line in enumerate(lines) if line.startswith("CV-Bench 3D "))
    assert lines[row + 1].startswith("  Depth ")
    assert "76.3%" in lines[row] and "+23.7" in lines[row]  # 100% vs the paper's 76.3%
    assert "\x00" not in text and "\x1b" not in text and "\ud800" not in text
    text.encode("utf-8")


def test_results_file_resume_repair_and_refusal(tmp_path):
    path = tmp_path / "results.jsonl"
    settings = {"model": "m", "max_pixels": 10}
    log = open_results(path, settings)
    log.append({"key": "a#1", "benchmark": "a", "outcome": "correct", "settings": settings})
    log.append({"key": "a#2", "benchmark": "a", "outcome": "wrong", "settings": settings})
    log.close()
    with path.open("a", encoding="utf-8") as f:
        f.write("garbage line\n")
        f.write('{"key": "a#3", "outc')  # killed mid-write
    log = open_results(path, settings)
    log.close()
    assert set(log.done) == {"a#1", "a#2"}
    assert any("incomplete last line" in n for n in log.notes)
    assert any("1 unreadable line" in n for n in log.notes)
    assert path.read_text().endswith("garbage line\n")  # the cut record is gone
    with pytest.raises(ResultsError, match="max_pixels 10, now 20"):
        open_results(path, {"model": "m", "max_pixels": 20})
