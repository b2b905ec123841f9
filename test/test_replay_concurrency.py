"""Bag replay with N frames in flight (`--concurrency N`) on the remote backend: the scripted
server (a fixed or per-frame time per request, each request on its own thread) and the real
`transformers serve`. Results are written in bag order and equal N = 1's; Ctrl-C stops the
requests in flight and keeps the output bag readable."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rosbags.rosbag2 import Reader
from servers.scripted_openai import ScriptedOpenAIServer

from spatialthinker_ros.core.engine import EngineConfig, SpatialThinkerEngine
from spatialthinker_ros.replay import ReplayConfig, run_replay
from spatialthinker_ros.replay_config import camera_topics
from spatialthinker_ros.sample_bag import IMAGE_TOPIC, sample_camera, write_sample_bag
from spatialthinker_ros.testing.signals import default_sigint
from spatialthinker_ros.testing.tiny_model import EXAMPLE_OUTPUT, FITTED_MAX_PIXELS

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
TIMING_KEYS = ("timings_s",)


@pytest.fixture()
def server():
    s = ScriptedOpenAIServer().start()
    yield s
    s.stop()


def remote_engine(base_url: str, model: str = "scripted", **kw) -> SpatialThinkerEngine:
    kw.setdefault("max_pixels", FITTED_MAX_PIXELS)
    engine = SpatialThinkerEngine(
        EngineConfig(model=model, backend="openai", base_url=base_url, **kw)
    )
    engine.load()
    return engine


def request_image(body: dict) -> np.ndarray:
    url = body["messages"][0]["content"][0]["image_url"]["url"]
    data = base64.b64decode(url.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def sample_frame_index(body: dict) -> int:
    """Which sample-bag frame a request shows: its red cube's left edge is at 64 + 4 x index
    in 640-pixel-wide frames (the engine sends them resized)."""
    rgb = request_image(body).astype(int)
    red = (rgb[..., 0] > 170) & (rgb[..., 1] < 90) & (rgb[..., 2] < 90)
    left = int(np.argmax(red.any(axis=0))) * 640 / rgb.shape[1]
    return round((left - 64) / 4)


def digest(body: dict) -> str:
    url = body["messages"][0]["content"][0]["image_url"]["url"]
    return hashlib.sha256(url.encode()).hexdigest()


def read_bag(path: Path) -> dict[str, list]:
    """topic -> [(bag ns, raw CDR)]; opening it proves the bag was closed properly."""
    out: dict[str, list] = {}
    with Reader(path) as reader:
        for conn, ns, raw in reader.messages():
            out.setdefault(conn.topic, []).append((ns, bytes(raw)))
    return out


def without_timing(path: Path) -> list[dict]:
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


def answers_without_timing(out: dict[str, list]) -> dict[str, list]:
    """The answer topics' messages as dicts without inference_time (the only field that varies
    between runs), in bag order."""
    from spatialthinker_ros.bag_types import make_typestore

    store = make_typestore()
    result = {}
    for topic, msgs in out.items():
        if topic.endswith("/answer"):
            rows = []
            for ns, raw in msgs:
                msg = store.deserialize_cdr(raw, "spatialthinker_ros/msg/SpatialAnswer")
                rows.append((ns, msg.request_id, msg.camera, msg.answer_text, msg.raw_output,
                             msg.header.stamp.sec, msg.header.stamp.nanosec))
            result[topic] = rows
    return result


def test_n_in_flight_is_written_in_bag_order_and_equals_one_in_flight(server, tmp_path):
    """Two cameras, 6 frames each; every frame gets its own answer (a digest of its image) after
    its own delay, so later frames often finish first."""
    bag = write_sample_bag(tmp_path / "in", frames=6, cameras=2)
    cams = [sample_camera(0), sample_camera(1)]
    active, most, lock = [0], [0], threading.Lock()

    def delay(body: dict) -> float:
        with lock:
            active[0] += 1
            most[0] = max(most[0], active[0])
        return 0.05 + 0.1 * (int(digest(body)[:8], 16) % 5)

    def reply(body: dict) -> list[str]:
        with lock:
            active[0] -= 1
        return [EXAMPLE_OUTPUT.replace("(A) left", f"(A) left {digest(body)[:12]}")]

    server.script.delay_s, server.script.reply = delay, reply
    engine = remote_engine(server.base_url)
    try:
        for n in (1, 4):
            config = ReplayConfig(
                in_bag=bag,
                out_bag=tmp_path / f"out{n}",
                cameras=camera_topics(
                    [c.image_topic for c in cams],
                    [c.depth_topic for c in cams],
                    [c.camera_info_topic for c in cams],
                ),
                questions=("Where is the cube?",),
                choices=("left", "right"),
                concurrency=n,
                jsonl=tmp_path / f"r{n}.jsonl",
                progress=False,
            )
            s = run_replay(config, engine)
            assert (s.frames_answered, s.inference_errors, s.stopped_early) == (12, 0, "")
            if n == 1:
                assert most[0] == 1
                most[0] = 0
    finally:
        engine.unload()
    assert 1 < most[0] <= 4  # requests really overlapped at the server, never more than N
    one, four = read_bag(tmp_path / "out1"), read_bag(tmp_path / "out4")
    assert sorted(one) == sorted(four)
    for topic in one:  # everything but the answers is byte for byte the same, in the same order
        if not topic.endswith("/answer"):
            assert one[topic] == four[topic], topic
    assert answers_without_timing(one) == answers_without_timing(four)
    records = without_timing(tmp_path / "r4.jsonl")
    assert records == without_timing(tmp_path / "r1.jsonl")
    assert [r["camera"] for r in records] == ["camera", "camera2"] * 6
    texts = [r["answer_text"] for r in records]
    assert len(set(texts)) == 12  # every frame its own answer: a mix-up would show
    assert [r["stamp"] for r in records] == sorted(r["stamp"] for r in records)
    assert len(server.requests) == 24


def test_against_transformers_serve(served_model, tmp_path):
    url, model_dir = served_model
    bag = write_sample_bag(tmp_path / "in", frames=2)
    engine = remote_engine(url, model_dir, timeout_s=600)
    try:
        for n in (1, 4):
            s = run_replay(
                ReplayConfig(
                    in_bag=bag, out_bag=tmp_path / f"out{n}", image_topic=IMAGE_TOPIC,
                    questions=("Where is the cube?",), choices=("left", "right"),
                    concurrency=n, jsonl=tmp_path / f"r{n}.jsonl", progress=False,
                ),
                engine,
            )
            assert (s.frames_answered, s.inference_errors) == (2, 0)
    finally:
        engine.unload()
    records = without_timing(tmp_path / "r4.jsonl")
    assert records == without_timing(tmp_path / "r1.jsonl")
    assert [(r["option"], r["matched_choice"], r["raw_output"]) for r in records] == [
        ("A", "left", EXAMPLE_OUTPUT)
    ] * 2


def test_concurrency_needs_a_backend_that_takes_it(tmp_path):
    """In process: a one-line error, exit 2, before the model loads (a hub id not in the cache:
    loading it offline would fail with another message)."""
    bag = write_sample_bag(tmp_path / "in", frames=1)
    run = subprocess.run(
        [sys.executable, "-m", "spatialthinker_ros.cli", "replay", str(bag), "--image-topic",
         IMAGE_TOPIC, "--question", "q", "--out", str(tmp_path / "out"), "--model",
         "nobody/not-downloaded", "--concurrency", "2"],
        env=ENV, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip() == (
        "spatialthinker-ros: error: --concurrency 2 needs a backend that takes concurrent "
        "requests (--backend openai); the transformers backend answers one at a time"
    )
    assert not (tmp_path / "out").exists()


def test_ctrl_c_with_requests_in_flight(server, tmp_path):
    """Frames 0-3 are answered at once, later ones never (until the client hangs up): with 4 in
    flight, SIGINT once the first four are written. Exit 130, the requests in flight given up
    (not awaited), the output bag closed and readable with the four answers."""
    bag = write_sample_bag(tmp_path / "in", frames=20)

    def delay(body: dict) -> float:
        return 0.0 if sample_frame_index(body) < 4 else 600.0

    server.script.delay_s = delay
    server.script.chunks = [EXAMPLE_OUTPUT]
    jsonl = tmp_path / "r.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "spatialthinker_ros.cli", "replay", str(bag), "--image-topic",
         IMAGE_TOPIC, "--question", "Where?", "--out", str(tmp_path / "out"), "--jsonl",
         str(jsonl), "--backend", "openai", "--base-url", server.base_url, "--model", "scripted",
         "--max-pixels", str(FITTED_MAX_PIXELS), "--concurrency", "4", "--timeout", "600",
         "--quiet"],
        env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=default_sigint,  # Ctrl-C as from a terminal, however the tests run
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        lines = jsonl.read_text().count("\n") if jsonl.exists() else 0
        if lines >= 4 and len(server.requests) >= 8:
            break
        time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail(f"the first four answers never came: {proc.communicate()}")
    assert len(server.requests) == 8  # 4 answered, 4 in flight: never more than N
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)  # the 600 s requests are not awaited
    assert proc.returncode == 130, stderr
    assert "interrupted (output bag closed cleanly)" in stdout
    assert "Traceback" not in stderr
    assert server.client_hung_up.is_set()
    out = read_bag(tmp_path / "out")
    assert len(out["/spatialthinker/answer"]) == 4
    assert [json.loads(line)["option"] for line in jsonl.read_text().splitlines()] == ["A"] * 4
