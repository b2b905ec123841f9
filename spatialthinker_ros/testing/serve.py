"""Real OpenAI-compatible servers for tests and benchmarks, on 127.0.0.1, offline, on a local
model directory: `transformers serve` (transformers' serving extra, in this venv) and vLLM
(`vllm serve`, in its own venv made by scripts/setup_vllm.sh)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from .ports import free_port

SERVE = Path(sys.executable).with_name("transformers")
# scripts/setup_vllm.sh's venv (SPATIALTHINKER_VLLM_VENV, as VLLM_VENV there, moves it).
VLLM_VENV = Path(
    os.environ.get("SPATIALTHINKER_VLLM_VENV")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    / "spatialthinker_ros" / "vllm-venv"
)
# vLLM's CPU backend (the platform named, not inferred): 1 GiB of KV cache, OpenMP threads not
# pinned to cores (a shared machine).
VLLM_ENV = {"VLLM_TARGET_DEVICE": "cpu", "VLLM_CPU_KVCACHE_SPACE": "1",
            "VLLM_CPU_OMP_THREADS_BIND": "nobind", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}


class ServeUnavailable(RuntimeError):
    """The server is not installed, or did not come up in time."""


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@contextlib.contextmanager
def _serve(name: str, command: Sequence[str], port: int, start_timeout_s: float,
           env: dict[str, str]) -> Iterator[str]:
    """Start `command` (listening on 127.0.0.1:`port`) in its own process group; yield its `/v1`
    base URL once `/health` answers 200; stop the whole group afterwards."""
    import httpx

    log = Path(tempfile.mkstemp(prefix=f"{name.split()[0]}-", suffix=".log")[1])
    with open(log, "wb") as out:
        proc = subprocess.Popen(list(command), stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + start_timeout_s
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None:
                raise ServeUnavailable(f"{name} exited {proc.returncode}:\n{_tail(log)}")
            if time.monotonic() > deadline:
                raise ServeUnavailable(
                    f"{name} did not come up within {start_timeout_s:g} s:\n{_tail(log)}")
            time.sleep(0.3)
        yield f"{url}/v1"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        with contextlib.suppress(ProcessLookupError):  # workers left behind by the server
            os.killpg(proc.pid, signal.SIGKILL)
        log.unlink(missing_ok=True)


@contextlib.contextmanager
def transformers_serve(model_dir: Path, start_timeout_s: float = 180.0) -> Iterator[str]:
    """Run `transformers serve MODEL_DIR` on a free loopback port; yields its `/v1` base URL
    once `/health` answers, and stops the server afterwards."""
    if not SERVE.exists():
        raise ServeUnavailable("transformers[serving] is not installed (pip install -e .[test])")
    port = free_port()
    command = [str(SERVE), "serve", str(model_dir), "--host", "127.0.0.1", "--port", str(port)]
    with _serve("transformers serve", command, port, start_timeout_s,
                {**os.environ, "HF_HUB_OFFLINE": "1"}) as base_url:
        yield base_url


def vllm_serve_command(model_dir: Path, port: int) -> list[str]:
    """`vllm serve MODEL_DIR ...` for the CPU build, as docs/remote.md gives it."""
    return [str(VLLM_VENV / "bin" / "vllm"), "serve", str(model_dir), "--host", "127.0.0.1",
            "--port", str(port), "--dtype", "float32", "--max-model-len", "4096",
            "--limit-mm-per-prompt", '{"image": 1}']


@contextlib.contextmanager
def vllm_serve(model_dir: Path, start_timeout_s: float = 900.0) -> Iterator[str]:
    """Run vLLM on MODEL_DIR (a model whose head size vLLM's CPU attention takes:
    tiny_model.VLLM_TEXT_HEADS) on a free loopback port; yields its `/v1` base URL."""
    if not (VLLM_VENV / "bin" / "vllm").exists():
        raise ServeUnavailable(f"vLLM is not installed in {VLLM_VENV} (bash scripts/setup_vllm.sh)")
    port = free_port()
    # Its own venv: none of this interpreter's paths (nor the ROS wheels' library path).
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "LD_LIBRARY_PATH")}
    env.update(VLLM_ENV, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    with _serve("vllm serve", vllm_serve_command(model_dir, port), port, start_timeout_s,
                env) as base_url:
        yield base_url
