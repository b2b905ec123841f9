"""A real OpenAI-compatible server for tests and benchmarks: `transformers serve` (transformers'
serving extra) on 127.0.0.1, offline, on a local model directory."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from .ports import free_port

SERVE = Path(sys.executable).with_name("transformers")


class ServeUnavailable(RuntimeError):
    """`transformers serve` is not installed, or did not come up in time."""


@contextlib.contextmanager
def transformers_serve(model_dir: Path, start_timeout_s: float = 180.0) -> Iterator[str]:
    """Run `transformers serve MODEL_DIR` on a free loopback port; yields its `/v1` base URL
    once `/health` answers, and stops the server afterwards."""
    import httpx

    if not SERVE.exists():
        raise ServeUnavailable("transformers[serving] is not installed (pip install -e .[test])")
    port = free_port()
    proc = subprocess.Popen(
        [str(SERVE), "serve", str(model_dir), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + start_timeout_s
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise ServeUnavailable(
                    f"transformers serve did not come up within {start_timeout_s:g} s"
                )
            time.sleep(0.3)
        yield f"{url}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
