"""The node with `backend: openai` against real OpenAI-compatible servers on loopback
(`transformers serve` of the fitted tiny model, issue 7; vLLM, issue 22): the in-process
answers."""

from __future__ import annotations

import pytest

pytest.importorskip("rclpy")

from servers.scripted_openai import Mode  # noqa: E402
from test_node import Harness, assert_box, expected_box, loopback_only_reason  # noqa: E402


def test_node_answers_through_a_remote_server(ros_interfaces, served_model):
    reason = loopback_only_reason()
    if reason is not None:
        pytest.skip(reason)
    base_url, model_dir = served_model
    harness = Harness(model_dir, backend="openai", base_url=base_url, api_model=model_dir)
    harness.start()
    try:
        header = harness.send_frame(frame_id="cam_remote")
        answer = harness.ask(request_id="remote-1")
        assert answer.status == harness.SpatialAnswer.STATUS_OK, answer.status_message
        assert (answer.option, answer.matched_choice) == ("A", "left")
        assert answer.header.frame_id == "cam_remote" and answer.header.stamp == header.stamp
        graph = answer.scene_graph
        assert [o.id for o in graph.objects] == ["cube.1", "ball.1"]
        assert_box(graph.objects[0], expected_box([64, 120, 256, 360]))
        diagnostics = harness.diagnostics(lambda v: v.get("backend") == "openai")
        assert diagnostics["base_url"] == base_url
    finally:
        harness.close()


@pytest.mark.timeout(1800)  # it may be the test that waits for the server to start
def test_node_answers_through_vllm(ros_interfaces, vllm_served):
    """`backend:=openai` against a real vLLM server (test/test_vllm.py; its own venv)."""
    reason = loopback_only_reason()
    if reason is not None:
        pytest.skip(reason)
    base_url, model_dir = vllm_served
    harness = Harness(model_dir, backend="openai", base_url=base_url, api_model=model_dir)
    harness.start()
    try:
        header = harness.send_frame(frame_id="cam_vllm")
        answer = harness.ask(request_id="vllm-1")
        assert answer.status == harness.SpatialAnswer.STATUS_OK, answer.status_message
        assert (answer.option, answer.matched_choice) == ("A", "left")
        assert answer.request_id == "vllm-1"
        assert answer.header.frame_id == "cam_vllm" and answer.header.stamp == header.stamp
        assert [o.id for o in answer.scene_graph.objects] == ["cube.1", "ball.1"]
        assert_box(answer.scene_graph.objects[0], expected_box([64, 120, 256, 360]))
        assert harness.diagnostics(lambda v: v.get("backend") == "openai")["base_url"] == base_url
    finally:
        harness.close()


def test_node_reports_a_dead_server_as_inference_error(ros_interfaces, fitted_model_dir):
    from spatialthinker_ros.testing.ports import free_port

    reason = loopback_only_reason()
    if reason is not None:
        pytest.skip(reason)
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens
    harness = Harness(fitted_model_dir, backend="openai", base_url=url)
    harness.start()
    try:
        harness.send_frame()
        answer = harness.ask()
        assert answer.status == harness.SpatialAnswer.STATUS_INFERENCE_ERROR
        assert url in answer.status_message
        again = harness.ask()  # the node keeps serving
        assert again.status == harness.SpatialAnswer.STATUS_INFERENCE_ERROR
    finally:
        harness.close()


def test_a_server_echoing_the_key_never_reaches_answer_diagnostics_or_log(
        ros_interfaces, fitted_model_dir, server, monkeypatch, capfd):
    """Issue 21: a 401 whose `type` (and message, and a header) is the key itself."""
    import json

    reason = loopback_only_reason()
    if reason is not None:
        pytest.skip(reason)
    key = "token-abc123"
    monkeypatch.setenv("ROBOT_FLEET_KEY", key)
    server.script.mode = Mode.HTTP_ERROR
    server.script.status = 401
    server.script.error_body = json.dumps({"error": {"message": f"bad {key}", "type": key}})
    server.script.headers = {"X-Echo": key}
    harness = Harness(fitted_model_dir, backend="openai", base_url=server.base_url,
                      api_key_env="ROBOT_FLEET_KEY")
    harness.start()
    try:
        harness.send_frame()
        answer = harness.ask()
        assert answer.status == harness.SpatialAnswer.STATUS_INFERENCE_ERROR
        assert answer.status_message.endswith("answered HTTP 401"), answer.status_message
        published = harness.messages("answer")
        diagnostics = harness.diagnostics(lambda v: "401" in v.get("last_error", "") or
                                          "401" in v.get("_message", ""))
        texts = [answer.status_message, answer.raw_output, repr(diagnostics),
                 *(m.status_message for m in published)]
        assert all(key not in t for t in texts), texts
    finally:
        harness.close()
    log = capfd.readouterr()
    assert "answered HTTP 401" in log.err  # the node logged the failure ...
    assert key not in log.out + log.err  # ... without the key


def test_a_busy_server_is_answered_busy(ros_interfaces, fitted_model_dir, server):
    """429 with a Retry-After beyond the deadline: BUSY, which the planner client retries."""
    reason = loopback_only_reason()
    if reason is not None:
        pytest.skip(reason)
    server.script.busy_times = 100
    server.script.status = 429
    server.script.headers = {"Retry-After": "120"}
    harness = Harness(fitted_model_dir, backend="openai", base_url=server.base_url,
                      timeout_s=5.0)
    harness.start()
    try:
        harness.send_frame()
        answer = harness.ask()
        assert answer.status == harness.SpatialAnswer.STATUS_BUSY, answer.status_message
        assert "is busy: HTTP 429" in answer.status_message
    finally:
        harness.close()
