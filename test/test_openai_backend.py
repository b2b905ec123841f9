"""The remote backend against real servers on loopback: `transformers serve` with the fitted tiny
model, and small stdlib HTTP servers for the failure modes."""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from spatialthinker_ros.core.engine import EngineConfig, EngineError, SpatialThinkerEngine
from spatialthinker_ros.core.openai_backend import BackendTimeout, BackendUnavailable
from spatialthinker_ros.testing.ports import free_port
from spatialthinker_ros.testing.tiny_model import EXAMPLE_OUTPUT, FITTED_MAX_PIXELS

ROOT = Path(__file__).resolve().parents[1]


def image(w: int = 641, h: int = 479) -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8))


def remote_engine(base_url: str, model: str = "tiny", **kw) -> SpatialThinkerEngine:
    engine = SpatialThinkerEngine(
        EngineConfig(
            model=model, backend="openai", base_url=base_url, max_pixels=FITTED_MAX_PIXELS, **kw
        )
    )
    engine.load()
    return engine


def test_remote_and_local_backends_give_the_same_parsed_result(served_model):
    base_url, model_dir = served_model
    local = SpatialThinkerEngine(
        EngineConfig(model=model_dir, device="cpu", max_pixels=FITTED_MAX_PIXELS)
    )
    local.load()
    remote = remote_engine(base_url, model_dir, timeout_s=120)
    chunks: list[str] = []
    a = local.answer(image(), "Where is the cube?", ["left", "right"])
    b = remote.answer(image(), "Where is the cube?", ["left", "right"], on_text=chunks.append)
    assert b.raw == a.raw == EXAMPLE_OUTPUT
    assert b.reasoning == a.reasoning  # same boxes in 641x479 pixels, answer, relations
    assert b.model_size == (644, 476) and b.generated_tokens > 0
    # Streaming: the text arrives in pieces, the scene graph closes before the answer opens.
    joined = "".join(chunks)
    assert joined == b.raw and len(chunks) > 10
    assert joined.index("</scene>") < joined.index("<answer>")


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
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"},
    )
    assert out.returncode == 0, out.stderr
    assert '"option": "A"' in out.stdout and '"cube.1"' in out.stdout


class _FaultHandler(http.server.BaseHTTPRequestHandler):
    mode = "ok"
    seen_auth: list[str] = []

    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).seen_auth.append(self.headers.get("Authorization", ""))
        if self.mode == "slow":
            time.sleep(5)
            return
        if self.mode in ("500", "404"):
            body = b'{"error": {"message": "model exploded"}}'
            self.send_response(int(self.mode))
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        if self.mode == "malformed":
            self.wfile.write(
                b'data: {"choices": [{"delta": {"content": "<obs\n\ndata: {not json\n\n'
            )
        else:
            chunk = b'{"id":"1","object":"chat.completion.chunk","created":0,"model":"m",'
            self.wfile.write(
                b"data: "
                + chunk
                + b'"choices":[{"index":0,"delta":{"content":"<answer> B </answer>"}}]}\n\n'
            )
            self.wfile.write(b"data: [DONE]\n\n")


@pytest.fixture
def fault_server():
    handler = type("Handler", (_FaultHandler,), {"seen_auth": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield handler, f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_connection_refused_names_the_url(monkeypatch):
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    engine = remote_engine(url, retries=2)
    t0 = time.monotonic()
    with pytest.raises(BackendUnavailable, match=f"cannot reach {url}"):
        engine.answer(image(56, 56), "q?")
    assert time.monotonic() - t0 < 10  # bounded retries with backoff


def test_slow_server_times_out(fault_server):
    handler, url = fault_server
    handler.mode = "slow"
    with pytest.raises(BackendTimeout, match="did not answer within 1 s"):
        remote_engine(url, timeout_s=1.0, retries=0).answer(image(56, 56), "q?")


@pytest.mark.parametrize("status", ["500", "404"])
def test_http_errors_carry_status_and_body(fault_server, status):
    handler, url = fault_server
    handler.mode = status
    with pytest.raises(EngineError, match=f"HTTP {status}.*model exploded"):
        remote_engine(url).answer(image(56, 56), "q?")


def test_malformed_stream_is_an_engine_error(fault_server):
    handler, url = fault_server
    handler.mode = "malformed"
    with pytest.raises(EngineError):
        remote_engine(url).answer(image(56, 56), "q?")


def test_api_key_comes_from_the_environment_and_is_never_described(fault_server, monkeypatch):
    handler, url = fault_server
    monkeypatch.setenv("MY_ROBOT_KEY", "sk-secret-123")
    engine = remote_engine(url, api_key_env="MY_ROBOT_KEY")
    result = engine.answer(image(56, 56), "q?", ["a", "b"])
    assert result.reasoning.answer.option == "B"
    assert handler.seen_auth == ["Bearer sk-secret-123"]
    assert "sk-secret-123" not in repr(engine.describe()) + repr(engine.config)


def test_bad_base_url_is_rejected():
    with pytest.raises(EngineError, match="http"):
        SpatialThinkerEngine(EngineConfig(backend="openai", base_url="file:///etc/passwd"))
