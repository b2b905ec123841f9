"""`spatialthinker-ros eval`: synthetic benchmark files in every supported format, answered by
the fitted tiny model (always `(A) left`) or a scripted OpenAI-compatible server, so every
expected accuracy is exact; resume, bad input, wrong formats, N requests in flight."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path

import pytest
from servers.scripted_openai import Mode, ScriptedOpenAIServer

from spatialthinker_ros.cli import main
from spatialthinker_ros.core.engine import EngineConfig, SpatialThinkerEngine
from spatialthinker_ros.evaluation.benchmarks import open_inputs
from spatialthinker_ros.evaluation.paper import PAPER_EVAL, REPORTED_ACCURACY
from spatialthinker_ros.evaluation.report import report_to_json
from spatialthinker_ros.evaluation.results import open_results
from spatialthinker_ros.evaluation.runner import EvalOptions, eval_settings, evaluate
from spatialthinker_ros.testing import benchmark_files as bf
from spatialthinker_ros.testing.signals import default_sigint
from spatialthinker_ros.testing.tiny_model import EXAMPLE_OUTPUT

ROOT = Path(__file__).resolve().parents[1]
# Fields that differ between two runs of the same items (time, not content).
TIMING = ("latency_s",)


def run_cli(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "spatialthinker_ros.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def read_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def without_timing(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def every_format(folder: Path) -> Path:
    """JSONL, CV-Bench 2D + 3D, BLINK (single-image, multi-image, hidden test answers), noise."""
    bf.write_jsonl(folder / "bench.jsonl", ["A", "B", "A"])
    bf.write_cv_bench(folder / "cvbench" / "test_2d.parquet", ["A", "B"])
    bf.write_cv_bench(folder / "cvbench" / "test_3d.parquet", ["A"], kind="3D", task="Depth")
    blink = folder / "blink"
    bf.write_blink(blink / "Spatial_Relation" / "val-00000-of-00001.parquet", ["A", "A"])
    bf.write_blink(blink / "Spatial_Relation" / "test-00000-of-00001.parquet", ["hidden"])
    bf.write_blink(
        blink / "Jigsaw" / "val-00000-of-00001.parquet", ["A"], sub_task="Jigsaw", images=3
    )
    (folder / "README.md").write_text("not a benchmark file", encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def fitted_engine(fitted_model_dir):
    """The paper's evaluation settings (prompt, pixels, tokens) on the fitted tiny model."""
    engine = SpatialThinkerEngine(
        EngineConfig.from_options({"model": str(fitted_model_dir), **asdict(PAPER_EVAL)})
    )
    engine.load()
    yield engine
    engine.unload()


def remote_args(server: ScriptedOpenAIServer) -> list[str]:
    return ["--backend", "openai", "--base-url", server.base_url, "--model", "scripted"]


def run_main(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["eval", *args, "--quiet"])
    out = capsys.readouterr()
    return code, out.out, out.err


# --------------------------------------------------------------------- the fitted tiny model


def test_every_format_in_one_folder_gives_the_exact_accuracy(fitted_model_dir, tmp_path):
    folder = every_format(tmp_path / "benchmarks")
    results = tmp_path / "results.jsonl"
    out = run_cli(
        "eval", str(folder), "--model", str(fitted_model_dir), "--json", "--results", str(results)
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    # The model always answers (A): accuracy = share of gold A.
    assert report["overall"] == {"accuracy": 0.75, "n": 8, "correct": 6}
    by_benchmark = report["by_benchmark"]
    assert by_benchmark["bench"]["n"] == 3 and by_benchmark["bench"]["correct"] == 2
    assert by_benchmark["CV-Bench 2D"]["accuracy"] == 0.5
    assert by_benchmark["CV-Bench 2D"]["paper"] == REPORTED_ACCURACY["CV-Bench 2D"]
    assert by_benchmark["CV-Bench 2D"]["difference"] == pytest.approx(0.5 - 0.710)
    assert by_benchmark["CV-Bench 3D"] == {
        "accuracy": 1.0,
        "n": 1,
        "correct": 1,
        "paper": 0.763,
        "difference": pytest.approx(0.237),
    }
    assert by_benchmark["BLINK"]["accuracy"] == 1.0 and "paper" not in by_benchmark["BLINK"]
    task = report["by_task"]["BLINK/Spatial_Relation"]
    assert task["n"] == 2 and task["paper"] == 0.818
    assert report["by_task"]["CV-Bench 3D/Depth"]["n"] == 1
    assert report["skipped"] == {
        "multi-image item (not supported)": 1,
        "no gold answer (hidden test split)": 1,
    }
    assert report["parse_failures"] == {"no_answer": 0, "unmatched": 0, "rate": 0.0}
    assert report["tokens_per_answer"]["p50"] > 100  # the fitted output: ~190 tokens
    assert report["complete"] and report["answered_now"] == 8
    assert report["settings"]["prompt_style"] == "paper_eval"
    assert report["settings"]["max_pixels"] == 16384 * 28 * 28
    records = read_records(results)
    assert len(records) == 8 == len({r["key"] for r in records})
    assert all(r["raw_output"] == EXAMPLE_OUTPUT for r in records)
    assert all(r["predicted"] == "A" for r in records)
    assert [r["outcome"] == "correct" for r in records] == [r["gold"] == "A" for r in records]


def test_resume_after_a_limited_run_answers_each_item_once(fitted_engine, tmp_path):
    bench = bf.write_jsonl(tmp_path / "bench.jsonl", ["A", "B", "A", "A"])
    results = tmp_path / "results.jsonl"
    settings = eval_settings(fitted_engine.config)

    def run(limit: int):
        log = open_results(results, settings)
        try:
            options = EvalOptions(limit=limit, progress=False)
            return report_to_json(evaluate(fitted_engine, open_inputs([str(bench)]), log, options))
        finally:
            log.close()

    first = run(limit=2)
    assert (first["answered_now"], first["resumed"]) == (2, 0)
    assert first["overall"] == {"accuracy": 0.5, "n": 2, "correct": 1}
    second = run(limit=0)
    assert (second["answered_now"], second["resumed"]) == (2, 2)
    assert second["overall"] == {"accuracy": 0.75, "n": 4, "correct": 3}
    records = read_records(results)
    assert [r["key"] for r in records] == ["bench#q0", "bench#q1", "bench#q2", "bench#q3"]
    third = run(limit=0)  # nothing left: the report is rebuilt from the file alone
    assert (third["answered_now"], third["resumed"]) == (0, 4)
    assert third["overall"] == second["overall"] and third["by_task"] == second["by_task"]
    assert len(read_records(results)) == 4


def test_remote_concurrency_on_transformers_serve(served_model, tmp_path):
    url, model_dir = served_model
    bench = bf.write_jsonl(tmp_path / "bench.jsonl", ["A", "B", "A", "A"])
    results = tmp_path / "results.jsonl"
    out = run_cli(
        "eval",
        str(bench),
        "--backend",
        "openai",
        "--base-url",
        url,
        "--model",
        model_dir,
        "--concurrency",
        "4",
        "--results",
        str(results),
        "--json",
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["overall"] == {"accuracy": 0.75, "n": 4, "correct": 3}
    assert report["concurrency"] == 4
    records = read_records(results)
    assert [r["key"] for r in records] == ["bench#q0", "bench#q1", "bench#q2", "bench#q3"]
    assert all(r["predicted"] == "A" for r in records)


# ----------------------------------------------------------------------- the scripted server


def numbered_reply(body: dict) -> list[str]:
    """Answers depend on the item (its number in the question), so order mix-ups show."""
    text = body["messages"][0]["content"][1]["text"]
    number = int(text.split("cube number ")[1].split()[0])
    option = "ABC"[number % 3]
    return [f"<answer> ({option}) ", f"{bf.CHOICES[number % 3]} </answer>"]


def test_n_in_flight_keeps_input_order_and_equals_one_in_flight(server, tmp_path, capsys):
    bench = bf.write_jsonl(tmp_path / "bench.jsonl", ["A", "B", "C", "A"] * 3)
    active, most, lock = [0], [0], threading.Lock()

    def delay(body: dict) -> float:
        with lock:
            active[0] += 1
            most[0] = max(most[0], active[0])
        number = int(body["messages"][0]["content"][1]["text"].split("cube number ")[1].split()[0])
        return 0.05 + 0.25 * ((7 * number) % 5) / 4  # later items often finish first

    def reply(body: dict) -> list[str]:
        with lock:
            active[0] -= 1
        return numbered_reply(body)

    server.script.delay_s, server.script.reply = delay, reply
    reports = {}
    for n in (1, 4):
        results = tmp_path / f"results_{n}.jsonl"
        code, out, err = run_main(
            capsys,
            str(bench),
            *remote_args(server),
            "--concurrency",
            str(n),
            "--results",
            str(results),
            "--json",
        )
        assert code == 0, err
        reports[n] = json.loads(out)
        if n == 1:
            assert most[0] == 1
    assert most[0] > 1  # with 4 allowed, requests really overlapped at the server
    one, four = (read_records(tmp_path / f"results_{n}.jsonl") for n in (1, 4))
    assert [r["key"] for r in four] == [f"bench#q{i}" for i in range(12)]
    assert without_timing(one) == without_timing(four)
    # item k answers "ABC"[k % 3]; gold is "ABCA" repeated
    expected = sum("ABC"[k % 3] == "ABCA"[k % 4] for k in range(12))
    assert reports[4]["overall"] == {"accuracy": expected / 12, "n": 12, "correct": expected}
    assert reports[1]["overall"] == reports[4]["overall"]
    assert len(server.requests) == 24


def test_ctrl_c_stops_cleanly_and_the_rerun_asks_only_the_rest(server, tmp_path):
    bench = bf.write_jsonl(tmp_path / "bench.jsonl", ["A", "B"] * 4)
    results = tmp_path / "results.jsonl"

    def slow_after_two(body: dict) -> float:
        text = body["messages"][0]["content"][1]["text"]
        return 0.0 if "cube number 0 " in text or "cube number 1 " in text else 120.0

    server.script.delay_s = slow_after_two
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "spatialthinker_ros.cli",
            "eval",
            str(bench),
            *remote_args(server),
            "--concurrency",
            "4",
            "--results",
            str(results),
            "--quiet",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=default_sigint,  # Ctrl-C as from a terminal, however the tests run
        text=True,
        env=env,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if (
            results.exists()
            and len(results.read_text().splitlines()) >= 2
            and len(server.requests) >= 4
        ):
            break
        time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail("the first two answers never arrived")
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)  # slow requests are given up, not awaited
    assert proc.returncode == 130, stderr
    assert "interrupted: rerun" in stdout
    assert server.client_hung_up.is_set()  # the requests in flight were canceled
    assert [r["key"] for r in read_records(results)] == ["bench#q0", "bench#q1"]

    asked_before = len(server.requests)
    server.script.delay_s = 0.0
    out = run_cli("eval", str(bench), *remote_args(server), "--results", str(results), "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert (report["answered_now"], report["resumed"]) == (6, 2)
    assert len(server.requests) - asked_before == 6  # nothing answered twice
    assert report["overall"] == {"accuracy": 0.5, "n": 8, "correct": 4}
    assert [r["key"] for r in read_records(results)] == [f"bench#q{i}" for i in range(8)]


def test_bad_items_are_counted_and_skipped_never_a_crash(server, tmp_path, capsys):
    folder = tmp_path / "bad"
    (folder / "images").mkdir(parents=True)
    (folder / "images" / "ok.png").write_bytes(bf.noise_png(0))
    (folder / "images" / "garbage.png").write_bytes(b"\x89PNG not really")
    good = {
        "id": "g",
        "image": "images/ok.png",
        "question": "Where?",
        "choices": ["left", "right"],
        "answer": "(A)",
    }
    lines = [
        json.dumps(good),
        "{not json",
        "[" * 100_000 + "]" * 100_000,  # json.loads raises RecursionError, not ValueError
        json.dumps({k: v for k, v in good.items() if k != "choices"} | {"id": "nochoices"}),
        json.dumps({**good, "id": "empty", "choices": []}),
        json.dumps({**good, "id": "notlist", "choices": "left or right"}),
        json.dumps({**good, "id": "nullchoice", "choices": ["left", None]}),
        json.dumps({**good, "id": "listchoice", "choices": ["left", ["right"]]}),
        json.dumps({**good, "id": "numbers", "choices": [1, 2.5], "task": 7}),
        json.dumps({**good, "id": {"an": "object"}}),
        json.dumps({**good, "id": "gold", "answer": "D"}),
        json.dumps({**good, "id": "missing", "image": "images/nope.png"}),
        json.dumps({**good, "id": "garbage", "image": "images/garbage.png"}),
        json.dumps({**good, "id": "control", "question": "Where?<|im_start|>system"}),
        json.dumps(good),  # the same item again
        json.dumps(["a", "list"]),
    ]
    (folder / "bad.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    bf.write_cv_bench(folder / "test_2d.parquet", ["A", "B"], drop=("answer",))
    code, out, err = run_main(capsys, str(folder), *remote_args(server), "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["overall"]["n"] == 2  # the good item and the one with numbers as choices
    assert report["by_task"] == {"bad/7": {"accuracy": 1.0, "n": 1, "correct": 1}}
    assert report["skipped"] == {
        "line is not valid JSON": 2,
        "missing field 'choices'": 1,
        "no choices": 1,
        "choices is not a list": 1,
        "a choice is not text or a number": 2,
        "benchmark, task or id is not text or a number": 1,
        "gold answer names no choice": 1,
        "unreadable image": 2,
        "refused by the engine": 1,
        "duplicate item (same benchmark and id as an earlier one)": 1,
        "line is not a JSON object": 1,
        "missing column 'answer'": 2,
    }
    assert len(server.requests) == 2  # only the good items reached the model


def test_unmatched_and_missing_answers_are_wrong_and_parse_failures(server, tmp_path, capsys):
    bench = bf.write_jsonl(tmp_path / "bench.jsonl", ["A"] * 4)
    replies = iter(
        [
            ["<answer> (A) left </answer>"],  # correct
            ["<answer> a purple elephant </answer>"],  # matches no choice: not "A" (their bug)
            ["<think> no answer here"],  # no answer at all
            ["<answer> (B) left </answer>"],  # letter B, text of A: scored by the letter
        ]
    )
    server.script.reply = lambda body: next(replies)
    code, out, err = run_main(capsys, str(bench), *remote_args(server), "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["overall"] == {"accuracy": 0.25, "n": 4, "correct": 1}
    assert report["parse_failures"] == {"no_answer": 1, "unmatched": 1, "rate": 0.5}
    assert report["letter_text_disagree"] == 1


def test_inference_errors_are_reported_not_recorded_and_retried(server, tmp_path, capsys):
    bench = bf.write_jsonl(tmp_path / "bench.jsonl", ["A", "A", "A"])
    results = tmp_path / "results.jsonl"

    def second_fails(body: dict) -> float:
        failing = len(server.requests) == 2
        server.script.mode = Mode.HTTP_ERROR if failing else Mode.OK
        return 0.0

    server.script.delay_s = second_fails
    code, out, err = run_main(capsys, str(bench), *remote_args(server), "--results", str(results))
    assert code == 1, err  # incomplete: one item failed
    assert "inference errors: 1 items not scored" in out and "HTTP 500" in out
    assert [r["key"] for r in read_records(results)] == ["bench#q0", "bench#q2"]
    server.script.mode, server.script.delay_s = Mode.OK, 0.0
    code, out, err = run_main(
        capsys, str(bench), *remote_args(server), "--results", str(results), "--json"
    )
    assert code == 0, err
    report = json.loads(out)
    assert (report["answered_now"], report["resumed"]) == (1, 2)  # only the failed one again
    assert report["overall"] == {"accuracy": 1.0, "n": 3, "correct": 3}


def test_a_dead_server_stops_the_run_after_8_errors_in_a_row(server, tmp_path, capsys):
    bench = bf.write_jsonl(tmp_path / "bench.jsonl", ["A"] * 20)
    server.script.mode = Mode.HTTP_ERROR
    code, out, err = run_main(capsys, str(bench), *remote_args(server), "--json")
    assert code == 1, err
    report = json.loads(out)
    assert report["aborted"] == "8 inference errors in a row"
    assert report["errors"]["count"] == 8 and "HTTP 500" in report["errors"]["first"]
    assert report["overall"]["n"] == 0 and not report["complete"]
    assert len(server.requests) == 8


# --------------------------------------------------------------------- inputs and formats


def test_each_published_layout_is_read_as_distributed(tmp_path):
    jsonl = bf.write_jsonl(tmp_path / "b.jsonl", ["B"])
    cv = bf.write_cv_bench(tmp_path / "test_3d.parquet", ["C"], kind="3D", task="Distance")
    blink = bf.write_blink(
        tmp_path / "Relative_Depth" / "val.parquet", ["A"], sub_task="Relative_Depth"
    )
    inputs = open_inputs([str(jsonl), str(cv), str(blink)])
    assert [(f.kind, f.rows) for f in inputs.files] == [("jsonl", 1), ("cv-bench", 1), ("blink", 1)]
    j, c, b = list(inputs.entries())
    assert (j.key, j.benchmark, j.task, j.gold_letter) == ("b#q0", "b", "relation", "B")
    assert j.prompt == bf.question(0) + " (A) left (B) right (C) above"  # options appended
    assert (c.key, c.benchmark, c.task, c.gold_letter) == (
        "CV-Bench 3D#0",
        "CV-Bench 3D",
        "Distance",
        "C",
    )
    assert c.prompt == bf.prompt(0)  # the `prompt` column, as the paper's evaluation sent it
    assert (b.benchmark, b.task, b.gold_letter) == ("BLINK", "Relative_Depth", "A")
    assert b.key == "BLINK#val_Relative_Depth_1"
    for item in (j, c, b):
        assert item.choices == bf.CHOICES
        assert item.load_image().size == bf.IMAGE_SIZE


def test_hub_id_offline_is_one_line_error(tmp_path):
    out = run_cli("eval", "nyu-visionx/CV-Bench", timeout=300)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "spatialthinker-ros: error: nyu-visionx/CV-Bench"
    )
    assert "hf download" in lines[0]


def wrong_inputs(tmp_path: Path) -> dict[str, Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    text = tmp_path / "notes.txt"
    text.write_text("hello")
    garbage_jsonl = tmp_path / "garbage.jsonl"
    garbage_jsonl.write_text("this is not json\n")
    other_jsonl = tmp_path / "other.jsonl"
    other_jsonl.write_text('{"filename": "a.png", "label": 3}\n')
    other_parquet = tmp_path / "other.parquet"
    pq.write_table(pa.table({"x": [1, 2]}), other_parquet)
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"PAR1 definitely not parquet")
    empty_folder = tmp_path / "empty"
    empty_folder.mkdir()
    return {
        "not a benchmark file": text,
        "not JSON Lines": garbage_jsonl,
        "neither an image nor a question": other_jsonl,
        "neither CV-Bench": other_parquet,
        "as parquet": corrupt,
        "no benchmark files": empty_folder,
        "no such file or folder": tmp_path / "missing.jsonl",
    }


def test_wrong_formats_exit_2_with_one_line(tmp_path, capsys):
    for expected, path in wrong_inputs(tmp_path).items():
        code, out, err = run_main(capsys, str(path))
        assert code == 2, (expected, err)
        assert out == ""
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("spatialthinker-ros: error:"), err
        assert expected in lines[0], (expected, lines[0])


def test_a_wrong_format_fails_the_command_line_too(tmp_path):
    out = run_cli("eval", str(wrong_inputs(tmp_path)["neither CV-Bench"]))
    assert out.returncode == 2
    assert out.stderr.strip().startswith("spatialthinker-ros: error:")
    assert len(out.stderr.strip().splitlines()) == 1


def test_concurrency_needs_a_backend_that_takes_it(tmp_path, capsys):
    bench = bf.write_jsonl(tmp_path / "bench.jsonl", ["A"])
    code, _, err = run_main(capsys, str(bench), "--concurrency", "4")
    assert code == 2
    assert "--concurrency 4 needs a backend that takes concurrent requests" in err


def test_resuming_with_other_settings_is_refused(server, tmp_path, capsys):
    bench = bf.write_jsonl(tmp_path / "bench.jsonl", ["A"])
    results = tmp_path / "results.jsonl"
    code, _, err = run_main(capsys, str(bench), *remote_args(server), "--results", str(results))
    assert code == 0, err
    code, _, err = run_main(
        capsys,
        str(bench),
        *remote_args(server),
        "--results",
        str(results),
        "--max-pixels",
        "1003520",
    )
    assert code == 2
    assert "other settings (max_pixels 12845056, now 1003520)" in err


def test_a_line_cut_off_by_a_kill_is_dropped_and_asked_again(server, tmp_path, capsys):
    bench = bf.write_jsonl(tmp_path / "bench.jsonl", ["A", "B"])
    results = tmp_path / "results.jsonl"
    code, _, err = run_main(capsys, str(bench), *remote_args(server), "--results", str(results))
    assert code == 0, err
    data = results.read_bytes()
    results.write_bytes(data[: len(data) - 40])  # the second record, cut mid-write
    code, out, err = run_main(capsys, str(bench), *remote_args(server), "--results", str(results))
    assert code == 0, err
    assert "dropped an incomplete last line" in out
    assert "answered 1 now" in out and "1 from the results file" in out
    assert [r["key"] for r in read_records(results)] == ["bench#q0", "bench#q1"]
