"""SpatialThinkerClient against the live node (real rclpy, loopback-only namespace, the fitted
tiny model): typed results, retries, errors, deadlines, feedback callbacks, cancel, and the
three threading situations (plain script, MultiThreadedExecutor callback, single-threaded
executor callback)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from rclpy.executors import MultiThreadedExecutor, SingleThreadedExecutor  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402
from test_node import (  # noqa: E402
    CHOICES,
    QUESTION,
    WAIT_S,
    GatedEngine,
    Harness,
    expected_box,
    wait_future,
    wait_until,
)

from spatialthinker_ros.core.spatial_result import SpatialResult, SpatialThinkerError  # noqa: E402
from spatialthinker_ros.core.status import AnswerStatus  # noqa: E402
from spatialthinker_ros.ros.client import (  # noqa: E402
    BlockingAskRefused,
    SceneGraphFeedback,
    SpatialThinkerClient,
)

DEPTH_M = 2.0
FX = 500.0


@pytest.fixture(scope="module")
def served(ros, fitted_model_dir) -> Iterator[Harness]:
    """One active node with depth, shared by the tests that leave it as they found it."""
    harness = Harness(fitted_model_dir, use_depth=True)
    harness.start()
    yield harness
    harness.close()


@pytest.fixture()
def client(served: Harness) -> Iterator[SpatialThinkerClient]:
    """A client on the harness's client node (spun by its executor in a background thread)."""
    made = SpatialThinkerClient(served.client)
    assert made.wait_until_ready(WAIT_S)
    yield made
    made.destroy()


def publish_depth(harness: Harness, stamp, frame_id: str) -> None:
    """CameraInfo + a 16UC1 depth image (DEPTH_M everywhere) stamped `stamp`, until the node
    holds both."""
    info = CameraInfo(width=640, height=480)
    info.header.stamp, info.header.frame_id = stamp, frame_id
    info.k = [FX, 0.0, 320.0, 0.0, FX, 240.0, 0.0, 0.0, 1.0]
    depth = Image(width=640, height=480, encoding="16UC1", step=640 * 2)
    depth.header.stamp, depth.header.frame_id = stamp, frame_id
    depth.data = np.full((480, 640), int(DEPTH_M * 1000), dtype=np.uint16).tobytes()
    camera = harness.node.intake.camera("")
    stamp_s = stamp.sec + stamp.nanosec * 1e-9
    harness.info_pub.publish(info)
    harness.depth_pub.publish(depth)
    wait_until(lambda: camera.camera_info is not None
               and camera.depth.closest(stamp_s, 1e-6) is not None, what="depth and camera_info")


class FramePublisher:
    """Publishes a fresh frame (stamped now) every `period_s` after `delay_s`, from a thread,
    until stopped; remembers the stamps."""

    def __init__(self, harness: Harness, delay_s: float, period_s: float = 0.1) -> None:
        self.harness = harness
        self.stamps: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(delay_s, period_s), daemon=True)

    def __enter__(self) -> FramePublisher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(WAIT_S)

    def _run(self, delay_s: float, period_s: float) -> None:
        if self._stop.wait(delay_s):
            return
        while not self._stop.is_set():
            header = self.harness.publish_image(frame_id="cam_late")
            self.stamps.append(header.stamp.sec + header.stamp.nanosec * 1e-9)
            self._stop.wait(period_s)


# ---------------------------------------------------------------------------------- results


def test_ask_returns_a_typed_result_with_boxes_and_3d_positions(served: Harness,
                                                                  client) -> None:
    stamp = served.now()
    publish_depth(served, stamp, "cam_client")
    served.send_frame(stamp=stamp, frame_id="cam_client")
    result = client.ask(QUESTION, CHOICES, request_id="typed-1")
    assert isinstance(result, SpatialResult)
    assert result.status is AnswerStatus.OK and result.answered
    assert (result.option, result.answer_text) == ("A", "left")
    assert (result.matched_choice, result.matched_index) == ("left", 0)
    assert result.question == QUESTION and result.choices == tuple(CHOICES)
    assert result.request_id == "typed-1"
    assert result.header.frame_id == "cam_client"
    assert (result.header.sec, result.header.nanosec) == (stamp.sec, stamp.nanosec)
    graph = result.scene_graph
    assert (graph.image_width, graph.image_height) == (640, 480)
    assert [o.id for o in graph.objects] == ["cube.1", "ball.1"]
    cube, ball = graph.objects
    for obj, box in ((cube, [64, 120, 256, 360]), (ball, [384, 180, 576, 420])):
        assert obj.box.as_list() == pytest.approx(expected_box(box).as_list(), abs=1e-3)
    for obj in (cube, ball):
        x, _, z = obj.position
        assert z == pytest.approx(DEPTH_M, abs=1e-3)
        assert x == pytest.approx((obj.box.center[0] - 320.0) * DEPTH_M / FX, abs=1e-2)
    assert [(r.subject, r.predicate, r.object) for r in graph.relations] == [
        ("cube.1", "left of", "ball.1")]
    assert result.find("cube") is cube and result.find("ball.1") is ball
    assert result.observation and "cube" in result.reasoning
    assert "<answer>" in result.raw_output
    assert result.model and result.prompt_version
    assert result.inference_time_s > 0 and result.generated_tokens > 0


def test_invalid_request_raises_one_typed_error_without_retrying(served: Harness,
                                                                 client) -> None:
    served.send_frame()
    with pytest.raises(SpatialThinkerError) as caught:
        client.ask("   ", CHOICES, retry_deadline_s=30.0)
    error = caught.value
    assert error.status is AnswerStatus.INVALID_REQUEST and not error.retryable
    assert "empty" in error.message and error.attempts == 1
    assert error.result is not None and error.result.status is AnswerStatus.INVALID_REQUEST
    with pytest.raises(SpatialThinkerError) as unknown:
        client.ask(QUESTION, CHOICES, camera="no_such_camera")
    assert unknown.value.status is AnswerStatus.INVALID_REQUEST
    assert "no_such_camera" in unknown.value.message and unknown.value.attempts == 1


def test_malformed_arguments_raise_before_anything_is_sent(client) -> None:
    with pytest.raises(TypeError, match="choices"):
        client.ask_async(QUESTION, "left")
    with pytest.raises(ValueError, match="timeout_s"):
        client.ask_async(QUESTION, timeout_s=float("nan"))
    with pytest.raises(ValueError, match="question"):
        client.ask_async("where\ud800?")
    with pytest.raises(ValueError, match="not_before"):
        client.ask_async(QUESTION, not_before=-1.0)


def test_wait_until_ready_is_false_without_a_server(served: Harness) -> None:
    absent = SpatialThinkerClient(served.client, "no_such_ask")
    try:
        assert not absent.wait_until_ready(0.5)
        with pytest.raises(SpatialThinkerError) as caught:
            absent.ask(QUESTION, retry_deadline_s=0.5, timeout_s=10.0)
        assert caught.value.status is None and caught.value.status_name == "UNAVAILABLE"
        assert "no action server" in caught.value.message and caught.value.attempts >= 2
    finally:
        absent.destroy()


# ---------------------------------------------------------------------------------- retries


def test_no_image_is_retried_until_a_frame_arrives(make_harness) -> None:
    harness = make_harness()
    client = SpatialThinkerClient(harness.client)
    assert client.wait_until_ready(WAIT_S)
    with FramePublisher(harness, delay_s=1.0) as frames:
        result = client.ask(QUESTION, CHOICES, retry_deadline_s=WAIT_S)
    assert result.status is AnswerStatus.OK and result.header.frame_id == "cam_late"
    assert result.header.stamp_s in frames.stamps
    assert int(harness.diagnostics(lambda v: int(v["no_image"]) >= 1)["no_image"]) >= 1


def test_retryable_status_is_raised_once_the_retry_deadline_passes(make_harness) -> None:
    harness = make_harness()
    client = SpatialThinkerClient(harness.client)
    assert client.wait_until_ready(WAIT_S)
    with pytest.raises(SpatialThinkerError) as caught:
        client.ask(QUESTION, retry_deadline_s=1.0)
    error = caught.value
    assert error.status is AnswerStatus.NO_IMAGE and error.retryable
    assert error.attempts >= 2 and "attempt" in error.message


def test_client_timeout_cancels_the_goal_at_the_node(make_harness) -> None:
    harness = make_harness(engine_factory=lambda c: GatedEngine(c, hold_after="<observe>"))
    harness.send_frame()
    client = SpatialThinkerClient(harness.client)
    assert client.wait_until_ready(WAIT_S)
    with pytest.raises(SpatialThinkerError) as caught:
        client.ask(QUESTION, CHOICES, timeout_s=3.0, request_id="slow")
    assert caught.value.status is AnswerStatus.TIMEOUT and "timeout_s" in caught.value.message
    assert harness.engine.entered.is_set()
    # The node stopped generating because the client canceled the goal (never released).
    canceled = wait_until(lambda: [m for m in harness.messages("answer")
                                   if m.request_id == "slow"], what="the canceled answer")
    assert canceled[0].status == AnswerStatus.CANCELED
    assert not harness.engine.release.is_set()


# ---------------------------------------------------------------------------------- feedback


def test_feedback_callbacks_get_the_text_and_the_scene_graph(served: Harness, client) -> None:
    header = served.send_frame(frame_id="cam_feedback")
    texts: list[str] = []
    graphs: list[SceneGraphFeedback] = []
    result = client.ask(QUESTION, CHOICES, on_text=texts.append, on_scene_graph=graphs.append)
    assert result.status is AnswerStatus.OK
    wait_until(lambda: "".join(texts) == result.raw_output, what="every text delta")
    assert len(graphs) == 1
    graph = graphs[0]
    assert [o.id for o in graph.scene_graph.objects] == ["cube.1", "ball.1"]
    assert graph.header.frame_id == "cam_feedback"
    assert (graph.header.sec, graph.header.nanosec) == (header.stamp.sec, header.stamp.nanosec)
    assert graph.observation == result.observation


def test_a_raising_callback_does_not_break_the_ask(served: Harness, client) -> None:
    served.send_frame()

    def broken(_delta: str) -> None:
        raise RuntimeError("planner bug")

    assert client.ask(QUESTION, CHOICES, on_text=broken).status is AnswerStatus.OK


def test_cancel_stops_the_running_goal(make_harness) -> None:
    harness = make_harness(engine_factory=lambda c: GatedEngine(c, hold_after="<observe>"))
    harness.send_frame()
    client = SpatialThinkerClient(harness.client)
    assert client.wait_until_ready(WAIT_S)
    future = client.ask_async(QUESTION, CHOICES)
    assert harness.engine.entered.wait(WAIT_S)
    assert client.cancel(future) == 1
    with pytest.raises(SpatialThinkerError) as caught:
        wait_future(future, what="the canceled ask")
    assert caught.value.status is AnswerStatus.CANCELED and not caught.value.retryable
    assert caught.value.result.status is AnswerStatus.CANCELED
    assert not harness.engine.release.is_set()  # it stopped because of the cancel
    assert client.cancel() == 0  # nothing left in flight
    harness.engine.hold_after = None
    assert client.ask(QUESTION, CHOICES).status is AnswerStatus.OK


# ---------------------------------------------------------------------------------- threading


def test_plain_script_spins_its_own_node(served: Harness) -> None:
    node = rclpy.create_node("plain_planner", namespace=served.ns, context=served.context)
    try:
        client = SpatialThinkerClient(node)
        assert client.wait_until_ready(WAIT_S)
        served.send_frame()
        first = client.ask(QUESTION, CHOICES)
        second = client.ask(QUESTION, CHOICES)  # again, after the first spin ended
        assert first.status is AnswerStatus.OK and second.status is AnswerStatus.OK
        assert node.executor is None or node not in node.executor.get_nodes()
        client.destroy()
    finally:
        node.destroy_node()


def _spin_in_thread(executor, node) -> threading.Thread:
    executor.add_node(node)
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    return thread


def test_blocking_ask_inside_a_multithreaded_executor_callback(served: Harness) -> None:
    node = rclpy.create_node("mt_planner", namespace=served.ns, context=served.context)
    executor = MultiThreadedExecutor(num_threads=3, context=served.context)
    client = SpatialThinkerClient(node)
    assert client.wait_until_ready(WAIT_S)
    served.send_frame()
    outcome: list[Any] = []

    def once() -> None:
        timer.cancel()
        try:
            outcome.append(client.ask(QUESTION, CHOICES))
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            outcome.append(exc)

    timer = node.create_timer(0.01, once)
    thread = _spin_in_thread(executor, node)
    try:
        wait_until(lambda: outcome, what="the ask made inside a callback")
    finally:
        executor.shutdown(timeout_sec=WAIT_S)
        thread.join(WAIT_S)
        client.destroy()
        node.destroy_node()
    assert isinstance(outcome[0], SpatialResult), outcome[0]
    assert outcome[0].status is AnswerStatus.OK


def test_single_threaded_callback_refuses_blocking_ask_and_ask_async_works(
        served: Harness) -> None:
    node = rclpy.create_node("st_planner", namespace=served.ns, context=served.context)
    executor = SingleThreadedExecutor(context=served.context)
    client = SpatialThinkerClient(node)
    assert client.wait_until_ready(WAIT_S)
    served.send_frame()
    refused: list[Exception] = []
    futures: list[Any] = []

    def once() -> None:
        timer.cancel()
        try:
            client.ask(QUESTION, CHOICES)
        except BlockingAskRefused as exc:
            refused.append(exc)
        futures.append(client.ask_async(QUESTION, CHOICES))

    timer = node.create_timer(0.01, once)
    thread = _spin_in_thread(executor, node)
    try:
        future = wait_until(lambda: futures and futures[0], what="the callback")
        result = wait_future(future, what="the async answer")
    finally:
        executor.shutdown(timeout_sec=WAIT_S)
        thread.join(WAIT_S)
        client.destroy()
        node.destroy_node()
    assert len(refused) == 1 and "ask_async" in str(refused[0])
    assert result.status is AnswerStatus.OK


def test_not_before_answers_about_a_newer_frame(served: Harness, client) -> None:
    old = served.send_frame(frame_id="cam_old")
    not_before = served.client.get_clock().now() + rclpy.duration.Duration(seconds=0.5)
    with FramePublisher(served, delay_s=0.3) as frames:
        result = client.ask(QUESTION, CHOICES, not_before=not_before)
    assert result.status is AnswerStatus.OK
    assert result.header.frame_id == "cam_late" and result.header.stamp_s in frames.stamps
    assert result.header.stamp_s >= not_before.nanoseconds * 1e-9
    assert (result.header.sec, result.header.nanosec) != (old.stamp.sec, old.stamp.nanosec)


def test_blocking_asks_from_two_threads_of_a_plain_script_keep_their_own_timeouts(
        make_harness) -> None:
    """Two threads of a plain script ask at once (the node in no executor): one spins the node,
    the other waits for it. Before, the waiting one waited for the spinning one's whole answer,
    past its own timeout_s; now it returns when its own ask ends."""
    harness = make_harness(engine_factory=lambda c: GatedEngine(c, hold_after="<observe>"))
    harness.send_frame()
    node = rclpy.create_node("two_thread_planner", namespace=harness.ns, context=harness.context)
    client = SpatialThinkerClient(node)
    outcomes: dict[str, Any] = {}

    def ask(name: str, timeout_s: float) -> None:
        try:
            outcomes[name] = client.ask(QUESTION, CHOICES, timeout_s=timeout_s,
                                        request_id=name)
        except Exception as exc:  # noqa: BLE001 - checked below
            outcomes[name] = exc

    try:
        assert client.wait_until_ready(WAIT_S)
        slow = threading.Thread(target=ask, args=("slow", WAIT_S * 2), daemon=True)
        slow.start()
        assert harness.engine.entered.wait(WAIT_S)  # "slow" is generating, held at the gate
        started = time.monotonic()
        short = threading.Thread(target=ask, args=("short", 2.0), daemon=True)
        short.start()
        short.join(20.0)
        took = time.monotonic() - started
        harness.engine.release.set()
        slow.join(WAIT_S)
    finally:
        harness.engine.release.set()
        client.destroy()
        node.destroy_node()
    assert took < 20.0, "the short ask waited for the other thread's answer"
    assert isinstance(outcomes["short"], SpatialThinkerError), outcomes["short"]
    assert outcomes["short"].status is AnswerStatus.TIMEOUT
    assert isinstance(outcomes["slow"], SpatialResult), outcomes["slow"]
    assert outcomes["slow"].status is AnswerStatus.OK
