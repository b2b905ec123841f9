"""The node with a quantized model (`quantization` parameter): configure quantizes and says so in
the diagnostics, answers, cleanup releases the model; a mode that cannot load fails configure
with its one-line reason in the diagnostics and the node stays up."""

from __future__ import annotations

import gc
import sys
import weakref

import pytest

pytest.importorskip("rclpy")
pytest.importorskip("torchao", reason="the quantization tests need torchao (.[quant])")

from diagnostic_msgs.msg import DiagnosticStatus  # noqa: E402
from rclpy.lifecycle import TransitionCallbackReturn  # noqa: E402


def test_quantized_model_serves_and_cleanup_releases_it(make_harness) -> None:
    harness = make_harness(quantization="int8")
    values = harness.diagnostics(lambda v: "quantization" in v)
    assert values["quantization"].startswith("int8 weight-only")
    harness.send_frame()
    answer = harness.ask()
    assert answer.status == harness.SpatialAnswer.STATUS_OK and answer.option == "A"
    model = weakref.ref(harness.engine.backend.model)
    assert harness.node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
    assert harness.node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
    gc.collect()
    # On CUDA cleanup also empties the cache (the backend's unload); here: nothing holds it.
    assert model() is None and not harness.engine.loaded


def test_a_mode_that_cannot_load_fails_configure_with_the_reason(make_harness,
                                                                 monkeypatch) -> None:
    """torchao made absent in this process (None in sys.modules: Python's "not importable")."""
    for name in [n for n in sys.modules if n == "torchao" or n.startswith("torchao.")]:
        monkeypatch.setitem(sys.modules, name, None)
    harness = make_harness(start=False, quantization="int4")
    assert harness.node.trigger_configure() == TransitionCallbackReturn.FAILURE
    assert harness.node.state == "unconfigured"
    assert "quantization int4 is not available on cpu: torchao is not installed" in (
        harness.node.config_error)
    assert "\n" not in harness.node.config_error
    values = harness.diagnostics(lambda v: v["_level"] == DiagnosticStatus.ERROR)
    assert "quantization int4" in values["_message"] and values["state"] == "unconfigured"
