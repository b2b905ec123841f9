"""`spatialthinker-ros ask QUESTION --node NAME` as an operator runs it: a child process (real
rclpy, loopback-only namespace) against a live node on the fitted tiny model, whose streamed text
passes through a gate the test holds after `</scene>` (so "printed as it arrives" and Ctrl-C are
observed while the node is still generating)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

rclpy = pytest.importorskip("rclpy")

from test_node import CHOICES, QUESTION, WAIT_S, GatedEngine, Harness, wait_until  # noqa: E402

from spatialthinker_ros.core.spatial_result import SpatialResult, result_to_json  # noqa: E402
from spatialthinker_ros.core.status import AnswerStatus  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CHILD_S = 180.0  # one CLI run: interpreter + torch import, rclpy start, discovery, the answer


class WatchedEngine(GatedEngine):
    """GatedEngine that records when the node asked generation to stop (a canceled goal)."""

    def __init__(self, config) -> None:
        super().__init__(config, hold_after="</scene>")
        self.release.set()  # open unless a test closes it
        self.stopped = threading.Event()

    def answer(self, image, question, choices=None, *, should_stop=None, **kwargs):
        def watched() -> bool:
            stop = should_stop is not None and should_stop()
            if stop:
                self.stopped.set()
            return stop

        return super().answer(image, question, choices, should_stop=watched, **kwargs)


@pytest.fixture(scope="module")
def served(ros, fitted_model_dir) -> Iterator[Harness]:
    harness = Harness(fitted_model_dir, WatchedEngine)
    harness.start()
    harness.header = harness.send_frame(frame_id="cam_operator")  # fresh for max_image_age_s
    yield harness
    harness.close()


@pytest.fixture()
def gate(served: Harness) -> Iterator[WatchedEngine]:
    """The node's engine with the gate closed: generation pauses after `</scene>`."""
    engine = served.engine
    engine.entered.clear()
    engine.stopped.clear()
    engine.release.clear()
    yield engine
    engine.release.set()


def node_name(harness: Harness) -> str:
    return harness.node.get_fully_qualified_name()


class Child:
    """`python -m spatialthinker_ros.cli ARGS` in the background, stdout read as it comes."""

    def __init__(self, *args: str) -> None:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "spatialthinker_ros.cli", *args], stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        self._stdout: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self._stdout.append(line)

    @property
    def stdout(self) -> str:
        return "".join(self._stdout)

    def wait(self, timeout: float = CHILD_S) -> tuple[int, str, str]:
        try:
            returncode = self.process.wait(timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
        self._reader.join(10)
        return returncode, self.stdout, self.process.stderr.read()


def ask(*args: str, timeout: float = CHILD_S) -> tuple[int, str, str]:
    return Child("ask", *args).wait(timeout)


def error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr  # one line, no traceback
    assert lines[0].startswith("spatialthinker-ros: error: "), stderr
    return lines[0]


# ---------------------------------------------------------------------------------- answers


def test_streams_the_scene_graph_then_prints_the_answer_in_the_local_layout(
        served: Harness, gate: WatchedEngine) -> None:
    child = Child("ask", QUESTION, "--node", node_name(served), "--choices", *CHOICES)
    assert gate.entered.wait(CHILD_S), "the node never reached </scene>"
    # The node holds generation after </scene>: the scene graph is out, the answer is not.
    wait_until(lambda: "ball.1" in child.stdout, CHILD_S, "the streamed scene graph")
    assert "answer:" not in child.stdout, child.stdout
    gate.release.set()
    returncode, out, err = child.wait()
    assert returncode == 0, err
    lines = out.splitlines()
    heads = [line.split(":")[0] if not line.startswith(" ") else "  " for line in lines]
    assert heads == ["question", "choices", "observation", "scene graph (640 x 480 px)", "  ",
                     "  ", "  ", "answer", "matched", "status", "camera", "latency"], out
    assert lines[0] == f"question: {QUESTION}" and lines[1] == "choices:  left, right"
    assert lines[2] == "observation: A red cube stands left of a blue ball on a grey floor."
    assert lines[4].split()[:2] == ["cube.1", "cube"] and lines[6] == "  cube.1 --left of--> ball.1"
    assert lines[7:10] == ["answer:   (A) left", "matched:  left", "status:   ok"]
    stamp = served.header.stamp
    assert lines[10] == (f"camera:   (the node's only camera), frame cam_operator, "
                         f"stamp {stamp.sec}.{stamp.nanosec:09d}")
    assert lines[11].startswith("latency:  ") and "generated tokens" in lines[11]


def test_json_is_the_planner_json_of_the_answer(served: Harness) -> None:
    returncode, out, err = ask(QUESTION, "--node", node_name(served), "--choices", *CHOICES,
                               "--json")
    assert returncode == 0, err
    data = json.loads(out)  # nothing but the JSON on stdout
    assert set(data) == set(result_to_json(SpatialResult(AnswerStatus.OK)))
    assert (data["status"], data["option"], data["answer"]) == ("OK", "A", "left")
    assert (data["matched_choice"], data["matched_index"]) == ("left", 0)
    assert data["frame_id"] == "cam_operator" and data["request_id"]
    assert [o["id"] for o in data["scene_graph"]["objects"]] == ["cube.1", "ball.1"]


def test_stop_after_scene_graph(served: Harness) -> None:
    returncode, out, err = ask(QUESTION, "--stop-after", "scene_graph", "--node",
                               node_name(served))
    assert returncode == 0, err
    assert "answer:   - (stopped after the scene graph)" in out and "status:   ok" in out
    assert "matched:" not in out and "cube.1 --left of--> ball.1" in out


# ---------------------------------------------------------------------------------- errors


def test_a_refused_request_is_one_line_with_the_status(served: Harness) -> None:
    returncode, out, err = ask(QUESTION, "--node", node_name(served), "--camera", "no_such")
    assert returncode == 1, err
    line = error_line(err)
    assert "INVALID_REQUEST: " in line and "no_such" in line, line
    assert "answer:" not in out


def test_no_node_is_one_line_unavailable(served: Harness) -> None:
    started = time.monotonic()
    returncode, _out, err = ask(QUESTION, "--node", "/st_nobody/spatialthinker_node",
                                "--timeout", "3")
    assert returncode == 1
    assert error_line(err).startswith(
        "spatialthinker-ros: error: UNAVAILABLE: no node /st_nobody/spatialthinker_node"), err
    assert time.monotonic() - started < CHILD_S


def test_a_node_that_is_not_active_is_one_line_busy(served: Harness) -> None:
    from rclpy.lifecycle import TransitionCallbackReturn

    assert served.node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
    try:
        returncode, _out, err = ask(QUESTION, "--node", node_name(served))
    finally:
        assert served.node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        served.header = served.send_frame(frame_id="cam_operator")  # deactivate drops frames
    assert returncode == 1
    assert f"BUSY: {node_name(served)} is inactive, not active" in error_line(err), err


def test_timeout_cancels_and_is_one_line(served: Harness, gate: WatchedEngine) -> None:
    returncode, _out, err = ask(QUESTION, "--node", node_name(served), "--timeout", "20")
    assert returncode == 1
    assert gate.entered.is_set(), err  # the node was generating when the client gave up
    assert "TIMEOUT: no answer within the client's timeout_s = " in error_line(err), err
    assert gate.stopped.wait(WAIT_S), "the node's generation was never told to stop"


def test_ctrl_c_cancels_the_goal_at_the_node(served: Harness, gate: WatchedEngine) -> None:
    child = Child("ask", QUESTION, "--node", node_name(served))
    assert gate.entered.wait(CHILD_S), "the node never reached </scene>"
    wait_until(lambda: "scene graph" in child.stdout, CHILD_S, "the streamed scene graph")
    child.process.send_signal(signal.SIGINT)  # what a terminal's Ctrl-C sends
    returncode, out, err = child.wait(60)
    assert returncode == 130, err
    assert error_line(err) == ("spatialthinker-ros: error: CANCELED: interrupted: the goal was "
                               "canceled at the node"), err
    assert gate.stopped.is_set() and not gate.release.is_set()  # the node stopped generating
    assert "answer:" not in out
