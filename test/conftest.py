"""Shared fixtures: tiny real Qwen2.5-VL model directories built offline, once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Largest image the fitted model was trained on (keeps its output deterministic).
FITTED_MAX_PIXELS = 644 * 476


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random-weight tiny model: real load + generate path, garbage text."""
    from spatialthinker_ros.testing.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture(scope="session")
def fitted_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny model fitted to answer every prompt with `EXAMPLE_OUTPUT` (about 10 s to build)."""
    from spatialthinker_ros.testing.tiny_model import EXAMPLE_OUTPUT, build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("fitted_model"), fit_text=EXAMPLE_OUTPUT)
