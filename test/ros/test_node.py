"""spatialthinker_node with real rclpy, our generated interfaces and the tiny offline model.

Every test talks to the node over DDS (loopback only: see the `ros_netns` fixture): a client node
publishes real sensor_msgs/Image frames, calls the `ask` service and action, and listens to the
node's topics. Engines that must be slow or faulty are the real engine wrapped at the engine
boundary (`GatedEngine`), never a fake.
"""

from __future__ import annotations

import itertools
import socket
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from builtin_interfaces.msg import Time  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from lifecycle_msgs.msg import Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState, GetState  # noqa: E402
from rclpy.action import ActionClient  # noqa: E402
from rclpy.executors import MultiThreadedExecutor  # noqa: E402
from rclpy.lifecycle import TransitionCallbackReturn  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402
from std_msgs.msg import Header, String  # noqa: E402
from visualization_msgs.msg import MarkerArray  # noqa: E402

from spatialthinker_ros.core.engine import EngineConfig, SpatialThinkerEngine  # noqa: E402
from spatialthinker_ros.core.geometry import map_box  # noqa: E402
from spatialthinker_ros.core.scene import Box  # noqa: E402

WAIT_S = 60.0  # bound on every wait; each ends as soon as its event happens
FITTED_MAX_PIXELS = 644 * 476
QUESTION = "Where is the cube relative to the ball?"
CHOICES = ["left", "right"]
_namespaces = itertools.count()


def wait_until(predicate: Callable[[], Any], timeout: float = WAIT_S, what: str = "") -> Any:
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.01)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what or predicate}")


def wait_future(future, timeout: float = WAIT_S, what: str = "a response"):
    done = threading.Event()
    future.add_done_callback(lambda _f: done.set())
    if not done.wait(timeout):
        pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
    return future.result()


class GatedEngine:
    """The real engine, with its streamed text passing through a gate the test controls.

    `hold_after`: once the generated text contains this string, generation pauses (inside the
    engine's on_text callback, i.e. between tokens) until `release` is set or the node's
    should_stop fires; `entered` tells the test that generation reached the gate.
    `before_release`: called once at the gate; it may wait for something (bounded).
    """

    def __init__(self, config: EngineConfig, hold_after: str | None = None):
        self.inner = SpatialThinkerEngine(config)
        self.config = self.inner.config
        self.hold_after = hold_after
        self.entered = threading.Event()
        self.release = threading.Event()
        self.before_release: Callable[[], None] | None = None
        self.calls = 0

    @property
    def loaded(self) -> bool:
        return self.inner.loaded

    def load(self) -> None:
        self.inner.load()

    def unload(self) -> None:
        self.inner.unload()

    def describe(self) -> dict[str, str]:
        return self.inner.describe()

    def answer(self, image, question, choices=None, *, on_text=None, should_stop=None,
               **callbacks):
        self.calls += 1
        text: list[str] = []
        held = False

        def gated(delta: str) -> None:
            nonlocal held
            text.append(delta)
            if on_text is not None:
                on_text(delta)
            if held or self.hold_after is None or self.hold_after not in "".join(text):
                return
            held = True
            self.entered.set()
            if self.before_release is not None:
                self.before_release()
            while not self.release.wait(0.01):
                if should_stop is not None and should_stop():
                    return

        return self.inner.answer(image, question, choices, on_text=gated, should_stop=should_stop,
                                 **callbacks)


def node_params(model_dir: Path, **overrides: Any) -> list[Parameter]:
    values: dict[str, Any] = {
        "model": str(model_dir),
        "device": "cpu",
        "max_pixels": FITTED_MAX_PIXELS,
        "rate_hz": 0.0,
        "max_image_age_s": 600.0,  # a loaded CI machine takes minutes for a test's requests
        "timeout_s": 60.0,
    }
    values.update(overrides)
    return [Parameter(k, value=v) for k, v in values.items()]


class Harness:
    """A SpatialThinkerNode and a client node on one background MultiThreadedExecutor."""

    def __init__(self, model_dir: Path, engine_factory=None, **params: Any) -> None:
        from spatialthinker_ros.action import AskSpatial as AskSpatialAction
        from spatialthinker_ros.msg import SceneGraph, SpatialAnswer
        from spatialthinker_ros.srv import AskSpatial

        from spatialthinker_ros.ros.node import SpatialThinkerNode, recommended_executor_threads
        from spatialthinker_ros.ros.spin_thread import SpinThread

        self.ns = f"/st_test_{next(_namespaces)}"
        self.context = rclpy.context.Context()
        rclpy.init(context=self.context)
        self.engines: list[Any] = []

        def factory(config: EngineConfig):
            engine = (engine_factory or SpatialThinkerEngine)(config)
            self.engines.append(engine)
            return engine

        self.node = SpatialThinkerNode(
            namespace=self.ns,
            context=self.context,
            engine_factory=factory,
            parameter_overrides=node_params(model_dir, **params),
        )
        self.client = rclpy.create_node("st_test_client", namespace=self.ns, context=self.context)
        reliable = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        self.image_pub = self.client.create_publisher(Image, "image", reliable)
        self.depth_pub = self.client.create_publisher(Image, "depth", reliable)
        self.info_pub = self.client.create_publisher(CameraInfo, "camera_info", reliable)
        self.question_pub = self.client.create_publisher(String, "question", reliable)
        self.ask_client = self.client.create_client(AskSpatial, "ask")
        self.action_client = ActionClient(self.client, AskSpatialAction, "ask")
        self.received: list[tuple[str, Any]] = []  # (topic, msg) in arrival order
        self._lock = threading.Lock()
        self.client.create_subscription(SceneGraph, "scene_graph",
                                        lambda m: self._got("scene_graph", m), reliable)
        self.client.create_subscription(SpatialAnswer, "answer",
                                        lambda m: self._got("answer", m), reliable)
        self.client.create_subscription(MarkerArray, "markers",
                                        lambda m: self._got("markers", m), reliable)
        self.client.create_subscription(DiagnosticArray, "/diagnostics",
                                        lambda m: self._got("diagnostics", m), reliable)
        self.AskSpatial = AskSpatial
        self.AskSpatialAction = AskSpatialAction
        self.SpatialAnswer = SpatialAnswer
        threads = recommended_executor_threads(self.node.settings) + 2
        self.executor = MultiThreadedExecutor(num_threads=threads, context=self.context)
        self.executor.add_node(self.node)
        self.executor.add_node(self.client)
        self._spin = SpinThread(self.executor, name="harness-spin").start()
        self._seq = itertools.count(1)

    # -- lifecycle
    def start(self) -> None:
        assert self.node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert self.node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        assert self.ask_client.wait_for_service(timeout_sec=WAIT_S)

    @property
    def engine(self):
        return self.engines[-1]

    def close(self) -> None:
        try:  # the spin ends before the nodes are destroyed (no InvalidHandle in its thread)
            self._spin.close([self.node, self.client], WAIT_S)
        finally:
            rclpy.shutdown(context=self.context)

    # -- topics
    def _got(self, topic: str, msg: Any) -> None:
        with self._lock:
            self.received.append((topic, msg))

    def messages(self, topic: str) -> list[Any]:
        with self._lock:
            return [m for t, m in self.received if t == topic]

    def clear(self) -> None:
        with self._lock:
            self.received.clear()

    def now(self) -> Time:
        return self.client.get_clock().now().to_msg()

    def publish_image(self, width: int = 640, height: int = 480, *, stamp: Time | None = None,
                      frame_id: str = "camera_color_optical_frame", encoding: str = "rgb8",
                      step: int | None = None, data: bytes | None = None) -> Header:
        """A real sensor_msgs/Image with a unique, recognisable stamp; returns its header."""
        msg = Image(height=height, width=width, encoding=encoding, is_bigendian=0)
        msg.header.frame_id = frame_id
        msg.header.stamp = stamp if stamp is not None else self.now()
        msg.step = step if step is not None else width * 3
        if data is None:
            rng = np.random.default_rng(next(self._seq))
            data = rng.integers(0, 256, (height, width, 3), dtype=np.uint8).tobytes()
        msg.data = data
        self.image_pub.publish(msg)
        return msg.header

    def wait_for_frame(self, header: Header) -> None:
        """Wait until the node holds the frame with this stamp (image subs are best effort)."""
        def holds() -> bool:
            frame = self.node.intake.camera("").images.peek()
            return frame is not None and frame.message.header.stamp == header.stamp
        wait_until(holds, what="the node to receive the frame")

    def send_frame(self, **kwargs: Any) -> Header:
        header = self.publish_image(**kwargs)
        self.wait_for_frame(header)
        return header

    # -- requests
    def ask_async(self, question: str = QUESTION, choices: Sequence[str] = CHOICES,
                  max_image_age_s: float = 0.0, request_id: str = "", stop_after: str = ""):
        request = self.AskSpatial.Request(question=question, choices=list(choices),
                                          max_image_age_s=max_image_age_s,
                                          request_id=request_id, stop_after=stop_after)
        return self.ask_client.call_async(request)

    def ask(self, question: str = QUESTION, choices: Sequence[str] = CHOICES, **kwargs: Any):
        future = self.ask_async(question, choices, **kwargs)
        return wait_future(future, what="the ask service").answer

    def diagnostics(self, predicate: Callable[[dict[str, str]], bool] = lambda v: True,
                    status: str = "inference"):
        """The values of the newest /diagnostics status `<node>: <status>` of this node
        satisfying `predicate`."""
        name = f"{self.node.get_fully_qualified_name()}: {status}"

        def find() -> dict[str, str] | None:
            for msg in reversed(self.messages("diagnostics")):
                for status in msg.status:
                    if status.name == name:
                        values = {kv.key: kv.value for kv in status.values}
                        values["_level"] = status.level
                        values["_message"] = status.message
                        return values if predicate(values) else None
            return None
        return wait_until(find, what="matching diagnostics")


def loopback_only_reason() -> str | None:
    """None inside a network namespace whose only interface is `lo`. (socket.if_nameindex asks
    the kernel about this process's namespace; /sys/class/net shows the namespace sysfs was
    mounted in, which `unshare -n` does not change.)"""
    names = sorted(name for _, name in socket.if_nameindex())
    if names != ["lo"]:
        return (f"network interfaces {names} besides lo: DDS could leave this machine; run "
                "unshare -n sh -c 'ip link set lo up; export ROS_AUTOMATIC_DISCOVERY_RANGE="
                "LOCALHOST; exec <pytest ...>' (or scripts/test.sh)")
    return None


@pytest.fixture(scope="module")
def served(ros, fitted_model_dir):
    """One configured, active node on the fitted model, shared by the read-only tests."""
    harness = Harness(fitted_model_dir)
    harness.start()
    yield harness
    harness.close()


def expected_box(box: list[float]) -> Box:
    """EXAMPLE_OUTPUT's boxes are in the model frame (644 x 476 for a 640 x 480 frame)."""
    return map_box(Box(*box), (644, 476), (640, 480))


def assert_box(obj, box: Box) -> None:
    assert obj.has_box
    assert [obj.x_min, obj.y_min, obj.x_max, obj.y_max] == pytest.approx(box.as_list(), abs=1e-3)


# ---------------------------------------------------------------------------------- answers


def test_service_answer_contents_and_header(served: Harness) -> None:
    header = served.send_frame(frame_id="cam_front")
    answer = served.ask(request_id="req-1")
    a = served.SpatialAnswer
    assert answer.status == a.STATUS_OK, answer.status_message
    assert answer.request_id == "req-1"
    assert answer.option == "A" and answer.answer_text == "left"
    assert answer.matched_choice == "left"
    assert answer.header.stamp == header.stamp and answer.header.frame_id == "cam_front"
    graph = answer.scene_graph
    assert graph.header.stamp == header.stamp and graph.header.frame_id == "cam_front"
    assert (graph.image_width, graph.image_height) == (640, 480)
    assert [o.id for o in graph.objects] == ["cube.1", "ball.1"]
    assert [o.label for o in graph.objects] == ["cube", "ball"]
    assert_box(graph.objects[0], expected_box([64, 120, 256, 360]))
    assert_box(graph.objects[1], expected_box([384, 180, 576, 420]))
    assert [(r.subject_id, r.predicate, r.object_id) for r in graph.relations] == [
        ("cube.1", "left of", "ball.1")
    ]
    assert "cube" in answer.reasoning
    assert "<answer>" in answer.raw_output
    assert answer.generated_tokens > 0
    assert answer.inference_time.sec > 0 or answer.inference_time.nanosec > 0


def test_topics_carry_the_source_header(served: Harness) -> None:
    header = served.send_frame(frame_id="cam_topics")
    answer = served.ask(request_id="req-topics")
    assert answer.status == served.SpatialAnswer.STATUS_OK

    def published() -> Any:
        return next((m for m in served.messages("answer") if m.request_id == "req-topics"), None)
    message = wait_until(published, what="the answer topic")
    assert message.header.stamp == header.stamp and message.option == "A"
    graphs = [m for m in served.messages("scene_graph") if m.header.stamp == header.stamp]
    assert len(graphs) == 1  # published once per answer
    assert graphs[0].header.frame_id == "cam_topics"
    assert [o.id for o in graphs[0].objects] == ["cube.1", "ball.1"]
    marker_arrays = wait_until(lambda: [m for m in served.messages("markers") if m.markers and
                                        m.markers[-1].header.stamp == header.stamp],
                               what="markers for the answer")
    assert marker_arrays[-1].markers[-1].header.frame_id == "cam_topics"


def test_no_image_stale_image_and_invalid_requests(make_harness) -> None:
    harness = make_harness(max_image_age_s=1.0, max_question_chars=50)
    a = harness.SpatialAnswer
    no_image = harness.ask()
    assert no_image.status == a.STATUS_NO_IMAGE and no_image.status_message

    old = harness.client.get_clock().now() - rclpy.duration.Duration(seconds=10)
    header = harness.send_frame(stamp=old.to_msg(), frame_id="cam_old")
    stale = harness.ask()
    assert stale.status == a.STATUS_STALE_IMAGE
    assert "old" in stale.status_message
    assert stale.header.stamp == header.stamp and stale.header.frame_id == "cam_old"
    # A request may accept older frames than the node's default.
    fine = harness.ask(max_image_age_s=60.0)
    assert fine.status == a.STATUS_OK and fine.header.stamp == header.stamp

    empty = harness.ask(question="   ")
    assert empty.status == a.STATUS_INVALID_REQUEST and "empty" in empty.status_message
    too_long = harness.ask(question="where? " * 20)
    assert too_long.status == a.STATUS_INVALID_REQUEST
    assert "max_question_chars" in too_long.status_message
    blank_choice = harness.ask(choices=["left", " "])
    assert blank_choice.status == a.STATUS_INVALID_REQUEST
    values = harness.diagnostics(lambda v: v["invalid_requests"] == "3")
    assert values["no_image"] == "1" and values["stale_image"] == "1"


def test_busy_reject_then_queue_policy(make_harness) -> None:
    harness = make_harness(
        engine_factory=lambda c: GatedEngine(c, hold_after="<observe>"),
        busy_policy="reject",
    )
    a = harness.SpatialAnswer
    harness.send_frame()
    engine = harness.engine
    first = harness.ask_async(request_id="first")
    assert engine.entered.wait(WAIT_S)
    busy = harness.ask(request_id="second")
    assert busy.status == a.STATUS_BUSY and "busy" in busy.status_message
    assert busy.request_id == "second"

    result = harness.node.set_parameters([Parameter("busy_policy", value="queue"),
                                          Parameter("max_queue", value=1)])
    assert all(r.successful for r in result)
    queued = harness.ask_async(request_id="queued")
    wait_until(lambda: harness.node.worker.stats.queue_depth == 1, what="the queued request")
    over = harness.ask(request_id="over")
    assert over.status == a.STATUS_BUSY

    engine.release.set()
    assert wait_future(first).answer.status == a.STATUS_OK
    queued_answer = wait_future(queued).answer
    assert queued_answer.status == a.STATUS_OK and queued_answer.request_id == "queued"
    assert harness.diagnostics(lambda v: v["busy"] == "2")["busy"] == "2"


def test_scene_graph_is_published_before_the_answer_exists(make_harness) -> None:
    """Generation pauses right after `</scene>` until the client has the scene graph: the
    test passes only if the node publishes it while the answer is still being generated."""
    harness = make_harness(engine_factory=lambda c: GatedEngine(c, hold_after="</scene>"))
    engine = harness.engine
    header = harness.send_frame()
    seen_early: list[bool] = []

    def wait_for_graph() -> None:
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            if any(m.header.stamp == header.stamp for m in harness.messages("scene_graph")):
                seen_early.append(True)
                break
            time.sleep(0.01)
        engine.release.set()

    engine.before_release = wait_for_graph
    answer = harness.ask()
    assert answer.status == harness.SpatialAnswer.STATUS_OK
    assert seen_early == [True]
    order = [t for t, m in harness.received
             if t in ("scene_graph", "answer") and m.header.stamp == header.stamp]
    assert order[0] == "scene_graph"


# ---------------------------------------------------------------------------------- action


def test_action_feedback_stages_and_result(served: Harness) -> None:
    A = served.AskSpatialAction
    header = served.send_frame(frame_id="cam_action")
    assert served.action_client.wait_for_server(timeout_sec=WAIT_S)
    # The feedback topic itself, not send_goal_async's feedback_callback: rclpy's ActionClient
    # drops that callback once the result is in, and feedback (a topic) may arrive after the
    # result (a service response), so the last feedback could be lost to the test.
    messages: list[Any] = []
    subscription = served.client.create_subscription(
        A.Impl.FeedbackMessage, "ask/_action/feedback", messages.append, 100)
    wait_until(lambda: subscription.get_publisher_count() > 0, what="the feedback publisher")
    goal = A.Goal(question=QUESTION, choices=CHOICES, request_id="goal-1")
    handle = wait_future(served.action_client.send_goal_async(goal), what="goal acceptance")
    assert handle.accepted
    uuid = bytes(handle.goal_id.uuid)

    def mine() -> list[Any]:  # this goal's feedback, in arrival order
        return [m.feedback for m in messages if bytes(m.goal_id.uuid) == uuid]

    result = wait_future(handle.get_result_async(), what="the action result")
    answer = result.result.answer
    assert answer.status == served.SpatialAnswer.STATUS_OK and answer.option == "A"
    assert answer.request_id == "goal-1" and answer.header.stamp == header.stamp
    wait_until(lambda: any(f.stage == A.Feedback.STAGE_ANSWERED for f in mine()),
               what="the ANSWERED feedback")
    feedback = mine()
    served.client.destroy_subscription(subscription)
    stages = [f.stage for f in feedback]
    assert stages[0] == A.Feedback.STAGE_QUEUED
    assert stages == sorted(stages)  # stages only move forward
    for stage in (A.Feedback.STAGE_OBSERVING, A.Feedback.STAGE_SCENE_GRAPH_READY,
                  A.Feedback.STAGE_ANSWERED):
        assert stage in stages
    ready = next(f for f in feedback if f.stage == A.Feedback.STAGE_SCENE_GRAPH_READY)
    assert [o.id for o in ready.scene_graph.objects] == ["cube.1", "ball.1"]
    assert ready.scene_graph.header.stamp == header.stamp
    text = "".join(f.text_delta for f in feedback)  # feedback carries deltas
    assert text == answer.raw_output
    before_ready = "".join(f.text_delta for f in feedback[: feedback.index(ready)])
    assert "<answer>" not in before_ready
    assert sum(len(f.scene_graph.objects) > 0 for f in feedback) == 1  # the graph is sent once


def test_action_cancel_stops_generation(make_harness) -> None:
    from action_msgs.msg import GoalStatus

    harness = make_harness(engine_factory=lambda c: GatedEngine(c, hold_after="<observe>"))
    A = harness.AskSpatialAction
    harness.send_frame()
    assert harness.action_client.wait_for_server(timeout_sec=WAIT_S)
    handle = wait_future(harness.action_client.send_goal_async(A.Goal(question=QUESTION)))
    assert harness.engine.entered.wait(WAIT_S)
    cancel = wait_future(handle.cancel_goal_async(), what="the cancel response")
    assert len(cancel.goals_canceling) == 1
    result = wait_future(handle.get_result_async(), what="the canceled result")
    assert result.status == GoalStatus.STATUS_CANCELED
    assert result.result.answer.status == harness.SpatialAnswer.STATUS_CANCELED
    assert not harness.engine.release.is_set()  # it stopped because of the cancel
    # The node serves the next request normally.
    harness.engine.hold_after = None
    assert harness.ask().status == harness.SpatialAnswer.STATUS_OK


# ---------------------------------------------------------------------------------- lifecycle


def test_lifecycle_transitions_through_the_lifecycle_services(make_harness) -> None:
    harness = make_harness(start=False)
    base = f"{harness.ns}/spatialthinker_node"
    change = harness.client.create_client(ChangeState, f"{base}/change_state")
    get = harness.client.create_client(GetState, f"{base}/get_state")
    assert change.wait_for_service(timeout_sec=WAIT_S) and get.wait_for_service(timeout_sec=WAIT_S)

    def transition(transition_id: int) -> bool:
        req = ChangeState.Request(transition=Transition(id=transition_id))
        return wait_future(change.call_async(req), what="change_state").success

    def state() -> str:
        return wait_future(get.call_async(GetState.Request()), what="get_state").current_state.label

    a = harness.SpatialAnswer
    assert state() == "unconfigured"
    # The service exists in every state and says why it does not answer.
    assert harness.ask_client.wait_for_service(timeout_sec=WAIT_S)
    unconfigured = harness.ask()
    assert unconfigured.status == a.STATUS_BUSY
    assert "unconfigured, not active" in unconfigured.status_message
    assert transition(Transition.TRANSITION_CONFIGURE)
    assert state() == "inactive" and harness.engine.loaded
    inactive = harness.ask()
    assert inactive.status == a.STATUS_BUSY and "inactive, not active" in inactive.status_message

    assert transition(Transition.TRANSITION_ACTIVATE)
    assert state() == "active"
    harness.send_frame()
    assert harness.ask().status == a.STATUS_OK

    assert transition(Transition.TRANSITION_DEACTIVATE)
    assert state() == "inactive"
    assert transition(Transition.TRANSITION_CLEANUP)
    assert state() == "unconfigured"
    assert not harness.engines[0].loaded  # the model was unloaded

    assert transition(Transition.TRANSITION_CONFIGURE)
    assert transition(Transition.TRANSITION_ACTIVATE)
    assert len(harness.engines) == 2 and harness.engines[1].loaded
    harness.send_frame()
    assert harness.ask().status == a.STATUS_OK


@pytest.mark.parametrize("model", ["../etc/model", "/nonexistent/spatialthinker", "not a hub id"])
def test_bad_model_fails_configure_and_node_stays_alive(make_harness, model: str) -> None:
    harness = make_harness(start=False, model=model)
    assert harness.node.trigger_configure() == TransitionCallbackReturn.FAILURE
    assert harness.node.state == "unconfigured"
    values = harness.diagnostics(lambda v: v["_level"] == DiagnosticStatus.ERROR)
    assert "model" in values["_message"] and values["state"] == "unconfigured"
    assert harness.ask_client.wait_for_service(timeout_sec=WAIT_S)
    refused = harness.ask()
    assert refused.status == harness.SpatialAnswer.STATUS_BUSY
    assert "unconfigured" in refused.status_message


def test_missing_model_directory_is_a_load_failure_with_reason(make_harness,
                                                                tmp_path: Path) -> None:
    empty = tmp_path / "empty_model"
    empty.mkdir()
    harness = make_harness(start=False, model=str(empty))
    assert harness.node.trigger_configure() == TransitionCallbackReturn.FAILURE
    # Refused by the parameter check (no config.json) before any loading is tried.
    assert "has no config.json" in harness.node.config_error


# ---------------------------------------------------------------------------------- parameters


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("rate_hz", -1.0, "rate_hz"),
        ("rate_hz", 1000.0, "rate_hz"),
        ("busy_policy", "drop", "busy_policy"),
        ("max_queue", 1000, "max_queue"),
        ("timeout_s", 0.0, "timeout_s"),
        ("max_image_age_s", float("nan"), "max_image_age_s"),
        ("standing_choices", ["left", " "], "standing_choices"),
        ("standing_question", "x" * 5000, "max_question_chars"),
        ("model", "other/model", "read-only"),
        ("device", "cuda", "read-only"),
        ("max_queue", "four", "type"),
    ],
)
def test_bad_parameter_values_are_rejected_with_a_reason(served: Harness, name: str, value: Any,
                                                         reason: str) -> None:
    before = served.node.get_parameter(name).value
    result = served.node.set_parameters([Parameter(name, value=value)])[0]
    assert not result.successful
    assert reason in result.reason
    after = served.node.get_parameter(name).value
    assert after == before or (after != after and before != before)


def test_good_parameter_values_take_effect(served: Harness) -> None:
    node = served.node
    results = node.set_parameters([Parameter("max_queue", value=2),
                                   Parameter("standing_choices", value=["left", "right"]),
                                   Parameter("max_question_chars", value=3000)])
    assert all(r.successful for r in results)
    assert node.settings.max_queue == 2 and node.worker.max_queue == 2
    assert node.settings.standing_choices == ("left", "right")
    results = node.set_parameters([Parameter("max_queue", value=4),
                                   Parameter("max_question_chars", value=2000)])
    assert all(r.successful for r in results)


def test_parameters_have_descriptors(served: Harness) -> None:
    names = ["model", "rate_hz", "max_queue"]
    descriptors = dict(zip(names, served.node.describe_parameters(names), strict=True))
    assert descriptors["model"].read_only and descriptors["model"].description
    assert descriptors["rate_hz"].floating_point_range[0].to_value == 30.0
    assert descriptors["max_queue"].integer_range[0].to_value == 64


# ---------------------------------------------------------------------------------- outputs


def test_standing_question_answers_the_newest_frame(make_harness) -> None:
    harness = make_harness(rate_hz=20.0)
    harness.send_frame(frame_id="cam_standing")
    harness.question_pub.publish(String(data=QUESTION + " (A) left (B) right"))
    answers = wait_until(
        lambda: [m for m in harness.messages("answer") if m.request_id.startswith("standing-")],
        what="a standing answer")
    first = answers[0]
    assert first.status == harness.SpatialAnswer.STATUS_OK and first.option == "A"
    assert first.header.frame_id == "cam_standing"
    harness.question_pub.publish(String(data=""))  # clear


def test_stop_after_scene_graph_on_requests_and_the_standing_question(make_harness) -> None:
    harness = make_harness(rate_hz=20.0, standing_stop_after="scene_graph")
    a = harness.SpatialAnswer
    harness.send_frame(frame_id="cam_stop")
    full = harness.ask(request_id="full")
    stopped = harness.ask(request_id="stopped", stop_after="scene_graph")
    assert full.status == a.STATUS_OK and full.option == "A"
    assert stopped.status == a.STATUS_OK, stopped.status_message
    assert (stopped.option, stopped.answer_text, stopped.reasoning) == ("", "", "")
    assert stopped.raw_output.rstrip().endswith("</scene>")
    assert full.raw_output.startswith(stopped.raw_output.rstrip())
    assert 0 < stopped.generated_tokens < full.generated_tokens
    assert [o.id for o in stopped.scene_graph.objects] == ["cube.1", "ball.1"]
    assert_box(stopped.scene_graph.objects[0], expected_box([64, 120, 256, 360]))
    assert len(stopped.scene_graph.relations) == 1
    bad = harness.ask(stop_after="answer")
    assert bad.status == a.STATUS_INVALID_REQUEST and "stop_after" in bad.status_message

    harness.question_pub.publish(String(data=QUESTION))  # the standing question
    standing = wait_until(
        lambda: [m for m in harness.messages("answer") if m.request_id.startswith("standing-")],
        what="a standing answer")[0]
    assert standing.status == a.STATUS_OK and standing.option == ""
    assert standing.raw_output.rstrip().endswith("</scene>")
    harness.question_pub.publish(String(data=""))  # clear


def test_debug_image_is_rendered_only_when_subscribed(make_harness) -> None:
    harness = make_harness()
    node = harness.node
    harness.send_frame()
    assert harness.ask().status == harness.SpatialAnswer.STATUS_OK
    assert node.outputs.subscribers("debug_image") == 0
    assert node.stats_snapshot()["debug_images"] == 0

    images: list[Image] = []
    qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
    harness.client.create_subscription(Image, "debug_image", images.append, qos)
    wait_until(lambda: node.outputs.subscribers("debug_image") > 0,
               what="the debug_image subscription")
    header = harness.send_frame(frame_id="cam_debug")
    assert harness.ask().status == harness.SpatialAnswer.STATUS_OK
    image = wait_until(lambda: images and images[-1], what="a debug image")
    assert image.header.stamp == header.stamp and image.header.frame_id == "cam_debug"
    assert (image.width, image.height) == (640, 480) and len(image.data) == image.step * 480
    assert node.stats_snapshot()["debug_images"] == 1


def test_depth_and_camera_info_give_3d_positions_and_markers(make_harness) -> None:
    harness = make_harness(use_depth=True)
    stamp = harness.now()
    info = CameraInfo(width=640, height=480)
    info.header.stamp, info.header.frame_id = stamp, "cam_depth"
    info.k = [500.0, 0.0, 320.0, 0.0, 500.0, 240.0, 0.0, 0.0, 1.0]
    harness.info_pub.publish(info)
    depth = Image(width=640, height=480, encoding="16UC1", step=640 * 2)
    depth.header.stamp, depth.header.frame_id = stamp, "cam_depth"
    depth.data = np.full((480, 640), 2000, dtype=np.uint16).tobytes()  # 2 m everywhere
    harness.depth_pub.publish(depth)
    camera = harness.node.intake.camera("")
    wait_until(lambda: camera.camera_info is not None and len(camera.depth) > 0,
               what="depth and camera_info")
    harness.send_frame(stamp=stamp, frame_id="cam_depth")
    answer = harness.ask()
    assert answer.status == harness.SpatialAnswer.STATUS_OK
    cube = answer.scene_graph.objects[0]
    assert cube.has_position
    assert cube.position.z == pytest.approx(2.0, abs=1e-3)
    u = (cube.x_min + cube.x_max) / 2
    assert cube.position.x == pytest.approx((u - 320.0) * 2.0 / 500.0, abs=1e-3)
    marker_msgs = wait_until(lambda: harness.messages("markers"), what="markers")
    assert marker_msgs[-1].markers


def test_diagnostics_report_the_serving_figures(served: Harness) -> None:
    served.send_frame()
    assert served.ask().status == served.SpatialAnswer.STATUS_OK
    values = served.diagnostics(lambda v: int(v["answers_ok"]) >= 1)
    for key in ("latency_last_s", "latency_mean_s", "frames_dropped", "parse_failure_rate",
                "queue_depth", "inference_errors", "timeouts", "backend"):
        assert key in values
    assert float(values["latency_last_s"]) > 0
    assert values["backend"] == "transformers"
