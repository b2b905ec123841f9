"""The remote backend against real servers on loopback: `transformers serve` of the fitted tiny
model (same parsed results as in process), and a scripted HTTP server (test/servers) for what
goes over the wire and for every failure mode. Every test is bounded by pytest-timeout."""

from __future__ import annotations

import base64
import io
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from servers.scripted_openai import Mode

from spatialthinker_ros.core.engine import (
    EngineConfig,
    EngineError,
    GenerationStopped,
    ModelLoadError,
    SpatialThinkerEngine,
)
from spatialthinker_ros.core.openai_backend import BackendTimeout, BackendUnavailable
from spatialthinker_ros.testing.ports import free_port
from spatialthinker_ros.testing.tiny_model import EXAMPLE_OUTPUT, FITTED_MAX_PIXELS

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = [("Where is the cube?", ["left", "right"]), "Is the ball near the cube?"]

pytestmark = pytest.mark.timeout(120)


def image(w: int = 641, h: int = 479, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


_opened: list[SpatialThinkerEngine] = []


def remote_engine(base_url: str, model: str = "tiny", **kw) -> SpatialThinkerEngine:
    kw.setdefault("max_pixels", FITTED_MAX_PIXELS)
    engine = SpatialThinkerEngine(
        EngineConfig(model=model, backend="openai", base_url=base_url, **kw)
    )
    engine.load()
    _opened.append(engine)
    return engine


@pytest.fixture(autouse=True)
def _unload_remote_engines():
    """Each loaded remote engine owns a loop thread and connections: released after each test."""
    yield
    while _opened:
        _opened.pop().unload()


@pytest.fixture
def engines(served_model):
    """The in-process engine and a remote engine on `transformers serve`, same fitted model."""
    base_url, model_dir = served_model
    local = SpatialThinkerEngine(
        EngineConfig(model=model_dir, device="cpu", max_pixels=FITTED_MAX_PIXELS)
    )
    local.load()
    remote = remote_engine(base_url, model_dir, timeout_s=60, batch_questions=True)
    yield local, remote
    local.unload()


# --------------------------------------------------------------- transformers serve (real model)


def test_remote_and_local_backends_give_the_same_parsed_result(engines):
    local, remote = engines
    chunks: list[str] = []
    a = local.answer(image(), "Where is the cube?", ["left", "right"])
    b = remote.answer(image(), "Where is the cube?", ["left", "right"], on_text=chunks.append)
    assert b.raw == a.raw == EXAMPLE_OUTPUT
    assert b.reasoning == a.reasoning  # same boxes in 641x479 pixels, answer, relations
    assert (b.source_size, b.model_size) == ((641, 479), (644, 476))
    assert b.prompt_tokens == a.prompt_tokens  # the server counted the same prompt
    assert b.generated_tokens == a.generated_tokens
    # Streaming: the text arrives in pieces, the scene graph closes before the answer opens.
    joined = "".join(chunks)
    assert joined == b.raw and len(chunks) > 10
    assert joined.index("</scene>") < joined.index("<answer>")


def test_answer_many_sends_the_questions_at_once_with_the_same_results(engines):
    local, remote = engines
    expected = local.answer_many(image(), QUESTIONS)
    got = remote.answer_many(image(), QUESTIONS)  # batch_questions: concurrent requests
    assert [r.reasoning for r in got] == [r.reasoning for r in expected]
    assert [r.question for r in got] == ["Where is the cube?", "Is the ball near the cube?"]
    assert got[0].reasoning.answer.matched_choice == "left"


def test_cli_ask_through_the_server(served_model, tmp_path):
    base_url, model_dir = served_model
    path = tmp_path / "frame.png"
    image(336, 252).save(path)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "spatialthinker_ros.cli",
            "ask",
            str(path),
            "Where is the cube?",
            "--backend",
            "openai",
            "--base-url",
            base_url,
            "--model",
            model_dir,
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=100,
        env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"},
    )
    assert out.returncode == 0, out.stderr
    assert '"option": "A"' in out.stdout and '"cube.1"' in out.stdout


# --------------------------------------------------------------- the request on the wire


def test_request_carries_the_prepared_image_prompt_and_greedy_settings(scripted, monkeypatch):
    monkeypatch.delenv("MY_ROBOT_KEY", raising=False)
    engine = remote_engine(
        scripted.base_url,
        "OX-PIXL/SpatialThinker-3B",
        api_key_env="MY_ROBOT_KEY",
        max_new_tokens=321,
    )
    monkeypatch.setenv("MY_ROBOT_KEY", "sk-secret-123")  # read per request, not at load
    source = image(1000, 700)
    result = engine.answer(source, "Where is the cube?", ["left", "right"])

    (request,) = scripted.requests
    body = request.body
    assert body["model"] == "OX-PIXL/SpatialThinker-3B"
    assert body["temperature"] == 0 and body["max_tokens"] == 321
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert request.headers["authorization"] == "Bearer sk-secret-123"
    (message,) = body["messages"]
    image_part, text_part = message["content"]  # image first, then the prompt
    prepared = engine.prepare_image(source)
    assert text_part == {"type": "text", "text": engine.prompt_for(prepared, *QUESTIONS[0])}
    header, data = image_part["image_url"]["url"].split(",", 1)
    assert header == "data:image/png;base64"
    sent = Image.open(io.BytesIO(base64.b64decode(data)))
    assert sent.size == result.model_size == prepared.model_size != source.size
    assert np.array_equal(np.asarray(sent.convert("RGB")), np.asarray(prepared.image))
    # The stated size is the size sent, and the answer is parsed and matched as in process.
    assert f"Image size: {sent.size[0]} x {sent.size[1]}" in text_part["text"]
    assert result.reasoning.answer.matched_choice == "right"
    assert "sk-secret-123" not in repr(engine.describe()) + repr(engine.config)


def test_token_counts_come_from_the_usage_chunk_else_from_the_chunks(scripted):
    scripted.script.usage = (390, 7)
    counted = remote_engine(scripted.base_url).answer(image(56, 56), "q?")
    assert (counted.prompt_tokens, counted.generated_tokens) == (390, 7)
    scripted.script.usage = None
    fallback = remote_engine(scripted.base_url).answer(image(56, 56), "q?")
    assert (fallback.prompt_tokens, fallback.generated_tokens) == (0, 2)  # two content chunks


def test_reasoning_content_goes_back_between_think_tags(scripted):
    # vLLM --reasoning-parser and transformers serve strip <think> into its own delta field.
    scripted.script.chunks = [
        "<scene>{}</scene>\n",
        {"reasoning_content": "A is "},
        {"reasoning_content": "left"},
        "<answer> (A) left </answer>",
    ]
    result = remote_engine(scripted.base_url).answer(image(56, 56), "q?", ["left", "right"])
    assert result.raw == "<scene>{}</scene>\n<think>A is left</think><answer> (A) left </answer>"
    assert result.reasoning.thought == "A is left"


# --------------------------------------------------------------- failures


def test_connection_refused_names_the_url_and_reason():
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    engine = remote_engine(url, retries=1)
    with pytest.raises(BackendUnavailable, match=f"cannot reach {url} .*[Cc]onnect"):
        engine.answer(image(56, 56), "q?")


def test_dropped_connections_are_retried_then_reported(scripted):
    scripted.script.mode = Mode.DROP
    with pytest.raises(BackendUnavailable, match="cannot reach"):
        remote_engine(scripted.base_url, retries=2).answer(image(56, 56), "q?")
    assert len(scripted.requests) == 3  # the first attempt and two retries


def test_silent_server_times_out_and_the_request_is_closed(scripted):
    scripted.script.mode = Mode.SILENT
    with pytest.raises(BackendTimeout, match="did not answer within 1 s"):
        remote_engine(scripted.base_url, timeout_s=1.0).answer(image(56, 56), "q?")
    assert scripted.client_hung_up.wait(10)
    assert len(scripted.requests) == 1  # timeouts are not retried


def test_trickling_server_is_bounded_by_timeout_s_in_total(scripted):
    # Each chunk comes well within timeout_s: only a deadline on the whole request stops this.
    scripted.script.mode = Mode.TRICKLE
    chunks: list[str] = []
    with pytest.raises(BackendTimeout):
        remote_engine(scripted.base_url, timeout_s=1.0).answer(
            image(56, 56), "q?", on_text=chunks.append
        )
    assert len(chunks) > 3
    assert scripted.client_hung_up.wait(10)


def test_should_stop_while_the_server_is_silent_cancels_the_request(scripted):
    scripted.script.mode = Mode.SILENT
    polled = threading.Event()

    def should_stop() -> bool:
        polled.set()
        return True

    engine = remote_engine(scripted.base_url, timeout_s=60.0)
    with pytest.raises(GenerationStopped):  # not BackendTimeout after 60 s
        engine.answer(image(56, 56), "q?", should_stop=should_stop)
    assert polled.is_set()
    assert scripted.client_hung_up.wait(10)  # the server saw the connection close


def test_should_stop_mid_stream_stops_after_the_text_so_far(scripted):
    scripted.script.mode = Mode.TRICKLE
    chunks: list[str] = []
    engine = remote_engine(scripted.base_url, timeout_s=60.0)
    with pytest.raises(GenerationStopped):
        engine.answer(
            image(56, 56), "q?", on_text=chunks.append, should_stop=lambda: len(chunks) >= 3
        )
    assert chunks == ["tok0 ", "tok1 ", "tok2 "]
    assert scripted.client_hung_up.wait(10)


@pytest.mark.parametrize("concurrent", [False, True])
def test_stop_after_scene_graph_closes_the_stream(scripted, concurrent):
    """The server would go on for 30 s: the engine ends each request once `</scene>` closes."""
    scene_end = EXAMPLE_OUTPUT.index("</scene>") + len("</scene>")
    text = EXAMPLE_OUTPUT[:scene_end] + "\n<think>\n"
    scripted.script.mode = Mode.CHUNKS_THEN_TRICKLE
    scripted.script.chunks = [text[i : i + 7] for i in range(0, len(text), 7)]
    engine = remote_engine(scripted.base_url, timeout_s=20.0, batch_questions=concurrent)
    if concurrent:
        results = engine.answer_many(image(), ["Where?", "What?"], stop_after="scene_graph")
    else:
        results = [engine.answer(image(), "Where?", stop_after="scene_graph")]
    for result in results:
        assert result.reasoning.status.value == "ok", result.reasoning.message
        assert result.raw.startswith(EXAMPLE_OUTPUT[:scene_end]) and "tok" not in result.raw
        assert [o.id for o in result.reasoning.scene_graph.objects] == ["cube.1", "ball.1"]
        assert result.stop_after == "scene_graph"
    assert scripted.client_hung_up.wait(10)


@pytest.mark.parametrize("status", [500, 404, 400])  # 429/503: test_openai_hostile.py
def test_http_errors_carry_status_and_error_type_and_are_not_retried(scripted, status):
    scripted.script.mode = Mode.HTTP_ERROR
    scripted.script.status = status
    scripted.script.error_body = '{"error": {"message": "model exploded", "type": "server_error"}}'
    with pytest.raises(EngineError, match=rf"HTTP {status} \(server_error\)$") as info:
        remote_engine(scripted.base_url, retries=2).answer(image(56, 56), "q?")
    assert "exploded" not in str(info.value)  # the server's text is never passed on
    assert not isinstance(info.value, (BackendUnavailable, BackendTimeout))
    assert len(scripted.requests) == 1


def test_a_server_echoing_credentials_never_reaches_the_error(scripted, monkeypatch):
    """A server (or proxy) whose error body echoes the request's Authorization header, and a
    base_url with user:password: neither secret appears in the error or the description."""
    monkeypatch.setenv("FLEET_KEY", "sk-live-0123456789abcdef")
    scripted.script.mode = Mode.HTTP_ERROR
    scripted.script.status = 401
    scripted.script.error_body = (
        '{"error": {"message": "bad key Bearer sk-live-0123456789abcdef", '
        '"type": "Authorization: Bearer sk-live-0123456789abcdef"}}'
    )
    host = scripted.base_url.split("://", 1)[1]
    engine = remote_engine(f"http://bob:hunter2@{host}", api_key_env="FLEET_KEY")
    with pytest.raises(EngineError) as info:
        engine.answer(image(56, 56), "q?")
    text = f"{info.value} {engine.describe()}"
    for secret in ("sk-live-0123456789abcdef", "hunter2", "bob:"):
        assert secret not in text
    assert "HTTP 401" in str(info.value)


def test_unauthorized_names_the_key_variable_when_it_is_unset(scripted, monkeypatch):
    monkeypatch.delenv("FLEET_KEY", raising=False)
    scripted.script.mode = Mode.HTTP_ERROR
    scripted.script.status = 401
    scripted.script.error_body = '{"error": "Unauthorized"}'
    with pytest.raises(EngineError, match="HTTP 401 .*set the environment variable FLEET_KEY"):
        remote_engine(scripted.base_url, api_key_env="FLEET_KEY").answer(image(56, 56), "q?")
    assert scripted.requests[0].headers["authorization"] == "Bearer EMPTY"


def test_malformed_stream_is_an_engine_error(scripted):
    scripted.script.mode = Mode.MALFORMED
    with pytest.raises(EngineError, match="bad response from .*JSONDecodeError"):
        remote_engine(scripted.base_url).answer(image(56, 56), "q?")


def test_error_event_in_the_stream_is_an_engine_error(scripted):
    scripted.script.mode = Mode.ERROR_EVENT
    with pytest.raises(EngineError, match=r"error mid-answer \(500\)$"):
        remote_engine(scripted.base_url).answer(image(56, 56), "q?")


def test_stream_that_ends_before_the_answer_finished_is_an_error(scripted):
    scripted.script.mode = Mode.CUT
    with pytest.raises(EngineError, match="ended the stream before the answer finished"):
        remote_engine(scripted.base_url).answer(image(56, 56), "q?")


def test_answer_many_concurrent_reports_the_first_failure(scripted):
    scripted.script.mode = Mode.HTTP_ERROR
    engine = remote_engine(scripted.base_url, batch_questions=True)
    with pytest.raises(EngineError, match="HTTP 500"):
        engine.answer_many(image(56, 56), QUESTIONS)


# --------------------------------------------------------------- configuration and lifecycle


def test_bad_base_url_is_rejected():
    with pytest.raises(ModelLoadError, match="http"):
        SpatialThinkerEngine(EngineConfig(backend="openai", base_url="file:///etc/passwd"))


def test_credentials_in_the_url_never_reach_diagnostics_or_errors():
    url = f"http://robot:hunter2@127.0.0.1:{free_port()}/v1?api-key=hunter2"
    engine = remote_engine(url, retries=0)
    assert "hunter2" not in repr(engine.describe())
    with pytest.raises(BackendUnavailable) as info:
        engine.answer(image(56, 56), "q?")
    assert "hunter2" not in str(info.value)


def test_unload_stops_the_loop_thread_and_load_restarts_it(scripted):
    before = {t.ident for t in threading.enumerate()}
    engine = remote_engine(scripted.base_url)
    assert engine.loaded and engine.answer(image(56, 56), "q?").reasoning.answer.option == "B"
    engine.unload()
    assert not engine.loaded
    assert {t.ident for t in threading.enumerate() if t.name == "openai-backend"} <= before
    with pytest.raises(EngineError, match="not loaded"):
        engine.answer(image(56, 56), "q?")
    engine.load()
    assert engine.answer(image(56, 56), "q?").reasoning.answer.option == "B"
    engine.unload()


def test_without_the_openai_package_load_says_how_to_install_it(monkeypatch):
    """`pip install .` (and requirements-robot.txt) leave the `remote` extra out."""
    monkeypatch.setitem(sys.modules, "openai", None)  # import openai -> ImportError
    engine = SpatialThinkerEngine(EngineConfig(backend="openai", base_url="http://127.0.0.1:9/v1"))
    with pytest.raises(ModelLoadError, match=r"pip install 'spatialthinker_ros\[remote\]'"):
        engine.load()


def test_cli_without_the_openai_package_is_one_line_and_exit_2(tmp_path):
    Image.new("RGB", (56, 56)).save(tmp_path / "f.png")
    code = (
        "import sys; sys.modules['openai'] = None\n"
        "from spatialthinker_ros.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, "ask", str(tmp_path / "f.png"), "Where?", "--backend",
         "openai", "--base-url", "http://127.0.0.1:9/v1"],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=tmp_path,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "spatialthinker_ros[remote]" in done.stderr
