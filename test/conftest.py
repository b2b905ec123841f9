"""Shared fixtures: tiny real Qwen2.5-VL model directories built offline.

They are built by the test code itself, once per machine and builder version, into
$SPATIALTHINKER_TEST_MODELS, by default ${XDG_CACHE_HOME:-~/.cache}/spatialthinker_ros/test-models:
outside the source tree, so a checkout inside a colcon workspace's src/ stays untouched.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

from spatialthinker_ros.testing.tiny_model import FITTED_MAX_PIXELS, VLLM_TEXT_HEADS

# Fuzz tests run the same cases every time (CI must be repeatable); HYPOTHESIS_PROFILE=explore
# draws new ones locally.
settings.register_profile("repeatable", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

_CACHE_HOME = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
MODEL_CACHE = Path(
    os.environ.get("SPATIALTHINKER_TEST_MODELS")
    or _CACHE_HOME / "spatialthinker_ros" / "test-models"
)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build the tiny models the collected tests need before any test runs: a fit takes ~40 s
    on an idle machine and many minutes on a loaded one, which must not count against the
    first test's timeout. Cached: later sessions find them built."""
    from spatialthinker_ros.testing.tiny_model import EXAMPLE_OUTPUT, cached_tiny_model

    needed = {name for item in session.items for name in getattr(item, "fixturenames", ())}
    if "tiny_model_dir" in needed:
        cached_tiny_model(MODEL_CACHE)
    if "fitted_model_dir" in needed:
        cached_tiny_model(MODEL_CACHE, fit_text=EXAMPLE_OUTPUT)
    if "sensitive_model_dir" in needed:
        cached_tiny_model(MODEL_CACHE, init_std=SENSITIVE_STD)
    if "vllm_model_dir" in needed:
        cached_tiny_model(MODEL_CACHE, fit_text=EXAMPLE_OUTPUT, text_heads=VLLM_TEXT_HEADS)


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """Random-weight tiny model: real load + generate path, garbage text."""
    from spatialthinker_ros.testing.tiny_model import cached_tiny_model

    return cached_tiny_model(MODEL_CACHE)


# Weights drawn this large make the tiny model's output depend on the image and the question.
SENSITIVE_STD = 0.2


@pytest.fixture(scope="session")
def sensitive_model_dir() -> Path:
    """Random tiny model whose long garbage output changes with the image and the question
    (weights at std SENSITIVE_STD): what token-identity tests need. tiny_model_dir's default
    init repeats one token whatever the input."""
    from spatialthinker_ros.testing.tiny_model import cached_tiny_model

    return cached_tiny_model(MODEL_CACHE, init_std=SENSITIVE_STD)


@pytest.fixture(scope="session")
def fitted_model_dir() -> Path:
    """Tiny model fitted to answer every prompt with `EXAMPLE_OUTPUT` (keep images <= 644x476)."""
    from spatialthinker_ros.testing.tiny_model import EXAMPLE_OUTPUT, cached_tiny_model

    return cached_tiny_model(MODEL_CACHE, fit_text=EXAMPLE_OUTPUT)


@pytest.fixture(scope="session")
def fitted_engine(fitted_model_dir):
    """The real engine on the fitted tiny model (CPU, images fed at most 644x476), loaded once."""
    from spatialthinker_ros.core.engine import EngineConfig, SpatialThinkerEngine

    engine = SpatialThinkerEngine(
        EngineConfig(model=str(fitted_model_dir), device="cpu", max_pixels=FITTED_MAX_PIXELS)
    )
    engine.load()
    return engine


@pytest.fixture(scope="session")
def served_model(fitted_model_dir):
    """`transformers serve` on 127.0.0.1 serving the fitted model: (base URL, model name)."""
    from spatialthinker_ros.testing.serve import ServeUnavailable, transformers_serve

    try:
        with transformers_serve(fitted_model_dir, start_timeout_s=120.0) as base_url:
            yield base_url, str(fitted_model_dir)
    except ServeUnavailable as exc:
        if "not installed" in str(exc):
            pytest.skip(str(exc))
        pytest.fail(str(exc))


@pytest.fixture(scope="session")
def vllm_model_dir() -> Path:
    """The fitted tiny model with a head size vLLM's CPU attention takes (32, not 16)."""
    from spatialthinker_ros.testing.tiny_model import EXAMPLE_OUTPUT, cached_tiny_model

    return cached_tiny_model(MODEL_CACHE, fit_text=EXAMPLE_OUTPUT, text_heads=VLLM_TEXT_HEADS)


@pytest.fixture(scope="session")
def vllm_served(vllm_model_dir):
    """A real vLLM server (scripts/setup_vllm.sh's venv) on 127.0.0.1 serving vllm_model_dir:
    (base URL, model name). Skips where vLLM is not installed, unless
    SPATIALTHINKER_REQUIRE_VLLM=1 (.ci/run), where it fails."""
    from spatialthinker_ros.testing.serve import ServeUnavailable, vllm_serve

    try:
        with vllm_serve(vllm_model_dir) as base_url:
            yield base_url, str(vllm_model_dir)
    except ServeUnavailable as exc:
        if "not installed" in str(exc) and not os.environ.get("SPATIALTHINKER_REQUIRE_VLLM"):
            pytest.skip(str(exc))
        pytest.fail(str(exc))


@pytest.fixture()
def server():
    """A scripted OpenAI-compatible server (test/servers) answering `(A) left` unless a test
    scripts more."""
    from servers.scripted_openai import ScriptedOpenAIServer

    s = ScriptedOpenAIServer().start()
    s.script.chunks = ["<answer> (A) left </answer>"]
    yield s
    s.stop()


@pytest.fixture()
def scripted():
    """A scripted OpenAI-compatible server (test/servers) with nothing scripted yet."""
    from servers.scripted_openai import ScriptedOpenAIServer

    s = ScriptedOpenAIServer().start()
    yield s
    s.stop()
