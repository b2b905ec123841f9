"""spatialthinker_node: a lifecycle node answering spatial questions about the newest camera image.

Lifecycle:
- configure: validate the parameters, build the engine and load the model (a failure returns
  FAILURE with the reason logged; the node stays up, unconfigured); create the publishers.
- activate: subscribe to the camera topics, start the inference worker and the standing-question
  timer.
- deactivate: stop the standing question, cancel queued requests and stop the running inference
  at its next token (their callers get CANCELED), unsubscribe.
- cleanup: destroy the publishers, unload the model, empty the CUDA cache.

The `ask` service and action exist for the node's whole life and answer BUSY ("node is
unconfigured/inactive, not active") outside the active state: rclpy sends a response after its
callback has returned, so destroying a service on deactivate could lose the CANCELED answer of a
request that deactivation just stopped; and a planner learns why it gets no answer instead of
timing out on a vanished service.

Threads: camera callbacks only store the newest message (frames.py). One worker thread runs the
model (worker.py); service and action callbacks (their own reentrant callback group) wait on the
worker's future with a bounded timeout, so the executor never waits on the model and the lifecycle
services stay responsive. Run it with a MultiThreadedExecutor of at least
`recommended_executor_threads()` threads (main() does).

Scene graphs are published once per answer: as soon as `</scene>` closes during generation
(before the answer exists), or, when the output never closed it, with the answer. Every answer
the worker produces (requests and standing question) is published on `answer`; requests rejected
before reaching the worker (BUSY, INVALID_REQUEST, NO_IMAGE, STALE_IMAGE) are answered to their
caller only.
"""

from __future__ import annotations

import concurrent.futures
import gc
import math
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import SetParametersResult
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.executors import (
    ExternalShutdownException,
    MultiThreadedExecutor,
    SingleThreadedExecutor,
)
from rclpy.expand_topic_name import expand_topic_name
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header, String
from visualization_msgs.msg import MarkerArray

from ..action import AskSpatial as AskSpatialAction
from ..core.engine import EngineConfig, Result, SpatialThinkerEngine
from ..core.geometry import (
    CameraIntrinsics,
    fit_to_pixel_budget,
    lift_box_to_3d,
    map_box,
    map_scene_graph,
)
from ..core.images import ImageConversionError
from ..core.parsing import parse_output, scene_closed
from ..core.scene import SceneGraph
from ..core.visualize import draw_scene_graph
from ..msg import SceneGraph as SceneGraphMsg
from ..msg import SpatialAnswer as SpatialAnswerMsg
from ..srv import AskSpatial as AskSpatialSrv
from . import conversions, markers
from .frames import LatestFrame, StampedHistory
from .params import NodeSettings, check_question, declare_parameters, validate_values
from .shutdown import STOP_POLL_S, StopSignals
from .worker import (
    BusyPolicy,
    FeedbackEvent,
    InferenceWorker,
    Job,
    Stage,
    StopReason,
    stage_of_text,
)

NODE_NAME = "spatialthinker_node"
# Extra wait, beyond the queue's worst case, before a caller gives up on the worker.
WAIT_SLACK_S = 10.0
# Text-only action feedback at most this often (stage changes are always sent).
FEEDBACK_MIN_INTERVAL_S = 0.05
RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
LATEST_ONLY_RELIABLE = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
# Requests are never dropped by DDS: a burst of callers beyond the default depth of 10 would
# otherwise lose requests silently (and those callers wait forever).
REQUEST_QOS = QoSProfile(history=HistoryPolicy.KEEP_ALL, reliability=ReliabilityPolicy.RELIABLE)
CAMERA_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=1,
    reliability=qos_profile_sensor_data.reliability,
    durability=qos_profile_sensor_data.durability,
)


class Engine(Protocol):
    """What the node needs from SpatialThinkerEngine (tests inject wrapped engines)."""

    config: EngineConfig

    @property
    def loaded(self) -> bool: ...

    def load(self) -> None: ...

    def unload(self) -> None: ...

    def describe(self) -> dict[str, str]: ...

    def answer(
        self,
        image: Any,
        question: str,
        choices: Sequence[str] | None = None,
        *,
        on_text: Callable[[str], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> Result: ...


EngineFactory = Callable[[EngineConfig], Engine]


@dataclass(frozen=True)
class AskRequest:
    question: str
    choices: tuple[str, ...]
    max_image_age_s: float
    request_id: str
    standing: bool = False


@dataclass
class ServingStats:
    """Counters behind /diagnostics (guarded by the node's stats lock)."""

    answers: dict[int, int] = field(default_factory=dict)  # status -> count
    inferences: int = 0  # model calls that returned text (any parse status)
    image_errors: int = 0
    debug_images: int = 0
    latency_last_s: float = 0.0
    latency_sum_s: float = 0.0
    last_error: str = ""

    def count(self, status: int) -> int:
        return self.answers.get(status, 0)


def stamp_seconds(stamp) -> float:
    return float(stamp.sec) + float(stamp.nanosec) * 1e-9


def is_out_of_memory(exc: BaseException) -> bool:
    return "out of memory" in str(exc).lower()


def free_cuda_cache() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def recommended_executor_threads(settings: NodeSettings) -> int:
    """Every accepted request holds one executor thread while it waits; leave room for camera,
    timer, parameter and lifecycle callbacks and for answering BUSY."""
    return settings.max_queue + 6


class _DepthLookup:
    """3D positions for boxes from the depth frame aligned with one image (lazy conversion)."""

    def __init__(self, depth: Image | None, info: CameraInfo | None, image_size: tuple[int, int],
                 max_pixels: int):
        self._depth = depth
        self._info = info
        self._image_size = image_size
        self._max_pixels = max_pixels
        self._meters: np.ndarray | None = None
        self._intrinsics: CameraIntrinsics | None = None
        self.error = ""

    @property
    def available(self) -> bool:
        return self._depth is not None and self._info is not None

    def _prepare(self) -> bool:
        if self._meters is not None:
            return True
        if not self.available or self.error:
            return False
        try:
            meters = conversions.depth_msg_to_meters(self._depth, self._max_pixels)
        except ImageConversionError as exc:
            self.error = f"depth image: {exc}"
            return False
        # camera_info describes the colour image; the aligned depth frame may be scaled.
        intrinsics = conversions.intrinsics_for_size(self._info, meters.shape[1], meters.shape[0])
        if intrinsics is None:
            self.error = "camera_info has no usable intrinsics"
            return False
        self._meters, self._intrinsics = meters, intrinsics
        return True

    def locate(self, graph: SceneGraph) -> SceneGraph:
        if not graph.objects or not self._prepare():
            return graph
        depth_size = (self._meters.shape[1], self._meters.shape[0])
        objects = []
        for obj in graph.objects:
            position = None
            if obj.box is not None:
                box = map_box(obj.box, self._image_size, depth_size)
                position = lift_box_to_3d(box, self._meters, self._intrinsics)
            objects.append(replace(obj, position=position))
        return graph.with_objects(tuple(objects))


class _AnswerStream:
    """Receives the engine's streamed text on the worker thread: publishes the scene graph as soon
    as `</scene>` closes and feeds action progress."""

    def __init__(self, node: SpatialThinkerNode, job: Job, header: Header,
                 source_size: tuple[int, int], model_size: tuple[int, int], depth: _DepthLookup):
        self._node = node
        self._job = job
        self._header = header
        self._source_size = source_size
        self._model_size = model_size
        self._depth = depth
        self.text = ""
        self.graph_msg: SceneGraphMsg | None = None

    def on_text(self, delta: str) -> None:
        self.text += delta
        try:
            if self.graph_msg is None and ">" in delta and scene_closed(self.text):
                partial = parse_output(self.text)
                graph = self._node.map_graph(partial.scene_graph, self._model_size,
                                             self._source_size)
                graph = self._depth.locate(graph)
                self.graph_msg = conversions.scene_graph_to_msg(
                    graph, self._header, partial.observation
                )
                self._node.publish_scene_graph(self.graph_msg, graph)
                self._job.feedback.push(
                    FeedbackEvent(Stage.SCENE_GRAPH_READY, self.text, self.graph_msg)
                )
            else:
                self._job.feedback.push(
                    FeedbackEvent(stage_of_text(self.text), self.text), coalesce=True
                )
        except Exception as exc:  # noqa: BLE001 - publishing trouble must not abort generation
            self._node.get_logger().warning(
                f"streaming the scene graph failed: {exc}", throttle_duration_sec=5.0
            )


class CameraIntake:
    """Camera subscriptions on a helper node spun by its own single-threaded executor thread.

    rclpy's MultiThreadedExecutor pays a wait-set rebuild and a thread hand-off per message; with
    every entity of the lifecycle node (services, action, parameters) in its wait set it took
    as few as 12 frames/s of a 1 kHz stream here, and it shares its threads with the requests
    waiting on the model. The helper node holds only the camera subscriptions, so frames are
    stored as fast as they arrive, whatever the request load. It subscribes to names already
    resolved (namespace + remapping) by the main node and ignores the process-wide arguments
    (`__node`/`__ns` remaps would otherwise rename it to the main node's name).
    """

    def __init__(self, owner: LifecycleNode) -> None:
        self._logger = owner.get_logger()
        self.node = rclpy.create_node(
            f"{owner.get_name()}_camera_intake",
            namespace=owner.get_namespace(),
            context=owner.context,
            use_global_arguments=False,
            start_parameter_services=False,
        )
        self._executor = SingleThreadedExecutor(context=owner.context)
        self._executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, name="camera-intake", daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        try:
            self._executor.spin()
        except ExternalShutdownException:
            pass
        except Exception as exc:  # noqa: BLE001 - callbacks are guarded; this is rclpy itself
            if self.node.context.ok():  # not just the process shutting down
                self._logger.error(f"camera intake stopped: {type(exc).__name__}: {exc}")

    def subscribe(self, msg_type, topic: str, callback, qos: QoSProfile):
        def guarded(msg) -> None:
            try:
                callback(msg)
            except Exception as exc:  # noqa: BLE001 - one bad message must not stop intake
                self._logger.warning(f"camera message dropped: {exc}", throttle_duration_sec=5.0)

        return self.node.create_subscription(msg_type, topic, guarded, qos)

    def unsubscribe(self, subscription) -> bool:
        """Destroy one of this intake's subscriptions; False if it is not one of them."""
        if subscription not in self.node.subscriptions:
            return False
        return self.node.destroy_subscription(subscription)

    def close(self) -> None:
        self._executor.shutdown(timeout_sec=5.0)
        self.node.destroy_node()
        self._thread.join(5.0)


class SpatialThinkerNode(LifecycleNode):
    """Lifecycle node serving SpatialThinker answers (see the module docstring)."""

    def __init__(self, node_name: str = NODE_NAME, *, engine_factory: EngineFactory | None = None,
                 **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        values, problems = declare_parameters(self)
        self._values = values
        self._settings = NodeSettings.from_values(values)
        self._startup_problems = problems
        for problem in problems:
            self.get_logger().error(problem)
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self._engine_factory: EngineFactory = engine_factory or SpatialThinkerEngine
        self._engine: Engine | None = None
        self._state = "unconfigured"
        self._active = False
        self._config_error = ""

        self._images: LatestFrame[Image | CompressedImage] = LatestFrame()
        self._depth: StampedHistory[Image] = StampedHistory(capacity=16)
        self._camera_info: CameraInfo | None = None
        self._standing_lock = threading.Lock()
        self._standing: tuple[str, tuple[str, ...], bool] | None = None  # (q, choices, from param)
        self._set_standing_from_params(self._settings)
        self._last_standing_seq = 0
        self._standing_count = 0

        self._stats_lock = threading.Lock()
        self._stats = ServingStats()
        self._waiters_cond = threading.Condition()
        self._waiters = 0
        self._goal_jobs: dict[bytes, Job] = {}

        self._worker: InferenceWorker[AskRequest, SpatialAnswerMsg] = InferenceWorker(
            self._handle_job, max_queue=self._settings.max_queue
        )
        self._camera_group = ReentrantCallbackGroup()
        self._request_group = ReentrantCallbackGroup()
        self._timer_group = MutuallyExclusiveCallbackGroup()

        self._pubs: dict[str, Any] = {}
        self._subs: list[Any] = []
        self._standing_timer = None
        self._service = self.create_service(
            AskSpatialSrv, "ask", self._on_ask_service, qos_profile=REQUEST_QOS,
            callback_group=self._request_group,
        )
        self._action = ActionServer(
            self,
            AskSpatialAction,
            "ask",
            execute_callback=self._on_ask_action,
            goal_callback=lambda _goal: GoalResponse.ACCEPT,
            cancel_callback=self._on_cancel_goal,
            callback_group=self._request_group,
            goal_service_qos_profile=REQUEST_QOS,
            result_service_qos_profile=REQUEST_QOS,
            cancel_service_qos_profile=REQUEST_QOS,
        )
        self._intake = CameraIntake(self)
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._diagnostics_timer = self.create_timer(
            1.0, self._publish_diagnostics, callback_group=self._timer_group
        )

    # ------------------------------------------------------------------ lifecycle

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        problems = validate_values(self._values) + [
            p for p in self._startup_problems if p.startswith("parameter ")
        ]
        if problems:
            return self._configure_failed("invalid parameters: " + "; ".join(problems))
        config = self._settings.engine_config()
        try:
            engine = self._engine_factory(config)
            engine.load()
        except Exception as exc:  # noqa: BLE001 - ModelLoadError or anything: stay alive
            return self._configure_failed(f"could not load the model: {exc}")
        self._engine = engine
        self._create_outputs()
        self._state = "inactive"
        self._config_error = ""
        self.get_logger().info(f"model loaded: {engine.describe()}")
        return super().on_configure(state)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._images.clear()
        self._depth.clear()
        self._worker.max_queue = self._settings.max_queue
        self._worker.start()
        self._create_subscriptions()
        self._reset_standing_timer()
        self._active = True
        self._state = "active"
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_serving()
        self._state = "inactive"
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        self._state = "unconfigured"
        return super().on_cleanup(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_serving()
        self._release()
        self._state = "finalized"
        return super().on_shutdown(state)

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.get_logger().error(f"lifecycle error in state {state.label}: releasing everything")
        self._stop_serving()
        self._release()
        self._state = "unconfigured"
        return TransitionCallbackReturn.SUCCESS

    def destroy_node(self) -> None:
        self._stop_serving()
        self._release()
        self._action.destroy()
        self._intake.close()
        super().destroy_node()

    def _configure_failed(self, reason: str) -> TransitionCallbackReturn:
        self._config_error = reason
        with self._stats_lock:
            self._stats.last_error = reason
        self.get_logger().error(f"configure failed: {reason}")
        return TransitionCallbackReturn.FAILURE

    def _create_outputs(self) -> None:
        self._pubs = {
            "scene_graph": self.create_lifecycle_publisher(SceneGraphMsg, "scene_graph", RELIABLE),
            "answer": self.create_lifecycle_publisher(SpatialAnswerMsg, "answer", RELIABLE),
            "debug_image": self.create_lifecycle_publisher(
                Image, "debug_image", LATEST_ONLY_RELIABLE
            ),
            "markers": self.create_lifecycle_publisher(MarkerArray, "markers", RELIABLE),
        }
        detection_type = markers.detection_message_type()
        if detection_type is not None:
            self._pubs["detections"] = self.create_lifecycle_publisher(
                detection_type, "detections", RELIABLE
            )

    def _create_subscriptions(self) -> None:
        s = self._settings
        intake = self._intake
        self._subs = [
            self.create_subscription(String, "question", self._on_question, RELIABLE,
                                     callback_group=self._camera_group),
            intake.subscribe(Image, self._resolve("image"), self._on_image, CAMERA_QOS),
        ]
        if s.use_compressed:
            self._subs.append(intake.subscribe(
                CompressedImage, self._resolve("image/compressed"), self._on_image, CAMERA_QOS))
        if s.use_depth:
            self._subs.append(intake.subscribe(
                Image, self._resolve("depth"), self._on_depth, CAMERA_QOS))
            self._subs.append(intake.subscribe(
                CameraInfo, self._resolve("camera_info"), self._on_camera_info, CAMERA_QOS))

    def _resolve(self, topic: str) -> str:
        """The topic name after this node's namespace and remapping rules."""
        resolve = getattr(self, "resolve_topic_name", None)
        if resolve is not None:  # rclpy >= 2 (Humble on)
            return resolve(topic)
        return expand_topic_name(topic, self.get_name(), self.get_namespace())

    def _stop_serving(self) -> None:
        """Deactivate: no new work, queued and running requests canceled, callers answered."""
        self._active = False
        if self._standing_timer is not None:
            self.destroy_timer(self._standing_timer)
            self._standing_timer = None
        if not self._worker.stop(timeout_s=self._settings.timeout_s + WAIT_SLACK_S):
            self.get_logger().error("the inference did not stop in time; it is left to finish")
        with self._waiters_cond:
            self._waiters_cond.wait_for(lambda: self._waiters == 0, timeout=WAIT_SLACK_S)
        for sub in self._subs:
            if not self._intake.unsubscribe(sub):
                self.destroy_subscription(sub)
        self._subs = []

    def _release(self) -> None:
        """Cleanup: outputs destroyed, model unloaded, CUDA cache emptied."""
        for pub in self._pubs.values():
            self.destroy_lifecycle_publisher(pub)
        self._pubs = {}
        engine, self._engine = self._engine, None
        if engine is not None:
            try:
                engine.unload()
            except Exception as exc:  # noqa: BLE001
                self.get_logger().error(f"unloading the model failed: {exc}")
        gc.collect()
        free_cuda_cache()
        self._images.clear()
        self._depth.clear()

    # ------------------------------------------------------------------ parameters

    @property
    def settings(self) -> NodeSettings:
        return self._settings

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        changes = {p.name: p.value for p in params}
        if "standing_choices" in changes and changes["standing_choices"] is None:
            changes["standing_choices"] = []
        merged = {**self._values, **changes}
        known = set(validate_values(self._values))
        problems = [p for p in validate_values(merged) if p not in known]
        if problems:
            return SetParametersResult(successful=False, reason="; ".join(problems))
        self._values = merged
        old, self._settings = self._settings, NodeSettings.from_values(merged)
        self._worker.max_queue = self._settings.max_queue
        if {"standing_question", "standing_choices"} & changes.keys():
            self._set_standing_from_params(self._settings, question_changed=(
                "standing_question" in changes))
        if old.rate_hz != self._settings.rate_hz and self._active:
            self._reset_standing_timer()
        return SetParametersResult(successful=True)

    def _set_standing_from_params(self, s: NodeSettings, question_changed: bool = True) -> None:
        with self._standing_lock:
            if question_changed:
                question = s.standing_question.strip()
                self._standing = (question, s.standing_choices, True) if question else None
            elif self._standing is not None and self._standing[2]:
                self._standing = (self._standing[0], s.standing_choices, True)
            self._last_standing_seq = 0

    def _reset_standing_timer(self) -> None:
        if self._standing_timer is not None:
            self.destroy_timer(self._standing_timer)
            self._standing_timer = None
        if self._settings.rate_hz > 0:
            self._standing_timer = self.create_timer(
                1.0 / self._settings.rate_hz, self._on_standing_tick,
                callback_group=self._timer_group)

    # ------------------------------------------------------------------ camera callbacks

    def _now_s(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _on_image(self, msg: Image | CompressedImage) -> None:
        self._images.put(msg, stamp_seconds(msg.header.stamp), self._now_s())

    def _on_depth(self, msg: Image) -> None:
        self._depth.put(msg, stamp_seconds(msg.header.stamp))

    def _on_camera_info(self, msg: CameraInfo) -> None:
        self._camera_info = msg

    def _on_question(self, msg: String) -> None:
        question = msg.data.strip()
        if len(question) > self._settings.max_question_chars:
            self.get_logger().warning(
                f"standing question ignored: longer than max_question_chars "
                f"({self._settings.max_question_chars})")
            return
        with self._standing_lock:
            self._standing = (question, (), False) if question else None
            self._last_standing_seq = 0
        self.get_logger().info(f"standing question {'set' if question else 'cleared'}")

    # ------------------------------------------------------------------ requests

    def _on_ask_service(self, request, response):
        response.answer = self._serve(
            self._request_from(request.question, request.choices, request.max_image_age_s,
                               request.request_id))
        return response

    def _on_cancel_goal(self, goal_handle) -> CancelResponse:
        job = self._goal_jobs.get(bytes(goal_handle.goal_id.uuid))
        if job is not None:
            job.cancel()
        return CancelResponse.ACCEPT

    def _on_ask_action(self, goal_handle):
        goal = goal_handle.request
        request = self._request_from(goal.question, goal.choices, goal.max_image_age_s,
                                     goal.request_id)
        answer = self._serve(request, goal_handle)
        if goal_handle.is_cancel_requested and answer.status == SpatialAnswerMsg.STATUS_CANCELED:
            goal_handle.canceled()
        elif answer.status in conversions.STATUS_OF_PARSE.values():
            goal_handle.succeed()
        else:
            goal_handle.abort()
        return AskSpatialAction.Result(answer=answer)

    def _request_from(self, question: str, choices: Sequence[str], max_age: float,
                      request_id: str) -> AskRequest:
        default_age = self._settings.max_image_age_s
        return AskRequest(
            question=question,
            choices=tuple(choices),
            max_image_age_s=float(max_age) if max_age > 0 and math.isfinite(max_age)
            else default_age,
            request_id=request_id or uuid.uuid4().hex,
        )

    def _serve(self, request: AskRequest, goal_handle=None) -> SpatialAnswerMsg:
        with self._waiters_cond:
            self._waiters += 1
        try:
            rejection = self._precheck(request)
            if rejection is not None:
                self._record(rejection)
                return rejection
            s = self._settings
            job = self._worker.submit(request, timeout_s=s.timeout_s,
                                      policy=BusyPolicy(s.busy_policy))
            if job is None:
                answer = self._status(request, SpatialAnswerMsg.STATUS_BUSY,
                                      self._busy_reason())
                self._record(answer)
                return answer
            budget = s.timeout_s * (self._worker.max_queue + 1) + WAIT_SLACK_S
            if goal_handle is None:
                return self._wait_for(job, budget)
            key = bytes(goal_handle.goal_id.uuid)
            self._goal_jobs[key] = job
            try:
                return self._wait_with_feedback(job, goal_handle, budget)
            finally:
                self._goal_jobs.pop(key, None)
        except Exception as exc:  # noqa: BLE001 - a caller always gets an answer
            self.get_logger().error(f"request failed: {type(exc).__name__}: {exc}")
            answer = self._status(request, SpatialAnswerMsg.STATUS_INFERENCE_ERROR,
                                  f"{type(exc).__name__}: {exc}")
            self._record(answer)
            return answer
        finally:
            with self._waiters_cond:
                self._waiters -= 1
                self._waiters_cond.notify_all()

    def _busy_reason(self) -> str:
        if not self._active:
            return f"node is {self._state}, not active"
        stats = self._worker.stats
        return (f"model busy ({stats.queue_depth} queued, max_queue {self._worker.max_queue}, "
                f"busy_policy {self._settings.busy_policy}); retry later")

    def _precheck(self, request: AskRequest) -> SpatialAnswerMsg | None:
        """An immediate answer for requests that cannot go to the model, else None."""
        if not self._active:
            return self._status(request, SpatialAnswerMsg.STATUS_BUSY, self._busy_reason())
        problem = check_question(request.question, request.choices,
                                 self._settings.max_question_chars)
        if problem is not None:
            return self._status(request, SpatialAnswerMsg.STATUS_INVALID_REQUEST, problem)
        frame = self._images.peek()
        if frame is None:
            return self._status(request, SpatialAnswerMsg.STATUS_NO_IMAGE,
                                "no camera image received yet")
        age = frame.age_s(self._now_s())
        if age > request.max_image_age_s:
            return self._stale(request, frame.message.header, age)
        return None

    def _wait_for(self, job: Job, budget_s: float) -> SpatialAnswerMsg:
        try:
            return job.future.result(timeout=budget_s)
        except concurrent.futures.TimeoutError:
            job.cancel()
            return self._give_up(job, budget_s)
        except concurrent.futures.CancelledError:
            return self._canceled_in_queue(job)

    def _wait_with_feedback(self, job: Job, goal_handle, budget_s: float) -> SpatialAnswerMsg:
        deadline = time.monotonic() + budget_s
        sender = _FeedbackSender(goal_handle)
        while not job.future.done():
            sender.send(job.feedback.drain(0.25))
            if goal_handle.is_cancel_requested:
                job.cancel()
            if time.monotonic() > deadline:
                job.cancel()
                return self._give_up(job, budget_s)
        sender.send(job.feedback.drain(0.0), final=True)
        try:
            return job.future.result(timeout=0)
        except concurrent.futures.CancelledError:
            return self._canceled_in_queue(job)

    def _give_up(self, job: Job, budget_s: float) -> SpatialAnswerMsg:
        answer = self._status(job.payload, SpatialAnswerMsg.STATUS_TIMEOUT,
                              f"no answer from the inference worker within {budget_s:.1f} s")
        self._record(answer)
        return answer

    def _canceled_in_queue(self, job: Job) -> SpatialAnswerMsg:
        answer = self._status(job.payload, SpatialAnswerMsg.STATUS_CANCELED,
                              "canceled before the model started on it")
        self._record(answer)
        return answer

    # ------------------------------------------------------------------ standing question

    def _on_standing_tick(self) -> None:
        try:
            self._standing_tick()
        except Exception as exc:  # noqa: BLE001 - a timer must never take the executor down
            self.get_logger().error(f"standing question failed: {exc}", throttle_duration_sec=5.0)

    def _standing_tick(self) -> None:
        with self._standing_lock:
            standing = self._standing
            last_seq = self._last_standing_seq
        if standing is None or not self._active:
            return
        stats = self._worker.stats
        if stats.busy or stats.queue_depth:
            return  # requests first; the next tick tries again
        s = self._settings
        self._standing_count += 1
        request = AskRequest(standing[0], standing[1], s.max_image_age_s,
                             f"standing-{self._standing_count}", standing=True)
        frame = self._images.peek()
        if frame is None:
            self._finish(self._status(request, SpatialAnswerMsg.STATUS_NO_IMAGE,
                                      "no camera image received yet"))
            return
        age = frame.age_s(self._now_s())
        if age > request.max_image_age_s:
            self._finish(self._stale(request, frame.message.header, age))
            return
        if frame.seq == last_seq:
            return  # this frame was answered already
        self._worker.submit(request, timeout_s=s.timeout_s, policy=BusyPolicy.REJECT)

    # ------------------------------------------------------------------ the worker

    def _handle_job(self, job: Job) -> SpatialAnswerMsg:
        """Runs on the inference worker thread; always returns an answer."""
        try:
            answer = self._run_job(job)
        except Exception as exc:  # noqa: BLE001 - the worker must survive anything
            self.get_logger().error(f"inference failed: {type(exc).__name__}: {exc}")
            answer = self._status(job.payload, SpatialAnswerMsg.STATUS_INFERENCE_ERROR,
                                  f"{type(exc).__name__}: {exc}")
        self._finish(answer)
        return answer

    def _run_job(self, job: Job) -> SpatialAnswerMsg:
        request: AskRequest = job.payload
        engine = self._engine
        if engine is None or not engine.loaded:
            return self._status(request, SpatialAnswerMsg.STATUS_INFERENCE_ERROR,
                                "the model is not loaded")
        frame = self._images.take()
        if frame is None:
            return self._status(request, SpatialAnswerMsg.STATUS_NO_IMAGE,
                                "no camera image received yet")
        header = conversions.copy_header(frame.message.header)
        age = frame.age_s(self._now_s())
        if age > request.max_image_age_s:
            return self._stale(request, header, age)
        if request.standing:
            with self._standing_lock:
                self._last_standing_seq = frame.seq
        try:
            rgb = self._to_rgb(frame.message)
        except ImageConversionError as exc:
            with self._stats_lock:
                self._stats.image_errors += 1
            self.get_logger().warning(f"bad camera frame: {exc}", throttle_duration_sec=5.0)
            return self._status(request, SpatialAnswerMsg.STATUS_INFERENCE_ERROR,
                                f"camera image could not be converted: {exc}", header)
        source_size = (int(rgb.shape[1]), int(rgb.shape[0]))
        config = engine.config
        try:
            model_size = fit_to_pixel_budget(*source_size, config.min_pixels, config.max_pixels)
        except ValueError as exc:
            return self._status(request, SpatialAnswerMsg.STATUS_INFERENCE_ERROR,
                                f"camera image unusable: {exc}", header)
        depth = self._depth_lookup(frame.stamp_s, source_size)
        stream = _AnswerStream(self, job, header, source_size, model_size, depth)
        job.feedback.push(FeedbackEvent(Stage.OBSERVING, ""))
        t0 = time.monotonic()
        try:
            result = engine.answer(rgb, request.question, request.choices or None,
                                   on_text=stream.on_text, should_stop=job.should_stop)
        except Exception as exc:  # noqa: BLE001 - EngineError, GenerationStopped, OOM, bugs
            return self._failed(request, job, exc, header, stream.text, time.monotonic() - t0)
        latency = time.monotonic() - t0
        graph = depth.locate(result.reasoning.scene_graph)
        reasoning = replace(result.reasoning, scene_graph=graph)
        graph_msg = stream.graph_msg
        if graph_msg is None:
            graph_msg = conversions.scene_graph_to_msg(graph, header, reasoning.observation)
            self.publish_scene_graph(graph_msg, graph)
        answer = conversions.answer_to_msg(
            replace(result, reasoning=reasoning), header, request_id=request.request_id,
            scene_graph=graph_msg,
        )
        with self._stats_lock:
            self._stats.inferences += 1
            self._stats.latency_last_s = latency
            self._stats.latency_sum_s += latency
        job.feedback.push(FeedbackEvent(Stage.ANSWERED, result.raw, answer.scene_graph))
        self._publish_debug_image(rgb, graph, reasoning, header)
        return answer

    def _failed(self, request: AskRequest, job: Job, exc: Exception, header: Header,
                text: str, elapsed_s: float) -> SpatialAnswerMsg:
        reason = job.stop_reason
        if reason is StopReason.TIMEOUT:
            status = SpatialAnswerMsg.STATUS_TIMEOUT
            message = f"no answer within timeout_s = {job.timeout_s:g} s"
        elif reason is StopReason.CANCELED:
            status = SpatialAnswerMsg.STATUS_CANCELED
            message = "canceled while the model was generating"
        else:
            status = SpatialAnswerMsg.STATUS_INFERENCE_ERROR
            message = str(exc) or type(exc).__name__
            self.get_logger().error(f"inference failed: {message}", throttle_duration_sec=5.0)
            if is_out_of_memory(exc):
                free_cuda_cache()
        answer = self._status(request, status, message, header)
        answer.raw_output = text
        answer.inference_time = conversions.seconds_to_duration(elapsed_s)
        return answer

    def _to_rgb(self, msg: Image | CompressedImage) -> np.ndarray:
        return conversions.image_msg_to_rgb(msg, self._settings.max_image_pixels)

    def _depth_lookup(self, stamp_s: float, image_size: tuple[int, int]) -> _DepthLookup:
        s = self._settings
        depth = self._depth.closest(stamp_s, s.depth_stamp_tolerance_s) if s.use_depth else None
        return _DepthLookup(depth, self._camera_info, image_size, s.max_image_pixels)

    @staticmethod
    def map_graph(graph: SceneGraph, model_size: tuple[int, int],
                  source_size: tuple[int, int]) -> SceneGraph:
        """A graph parsed in the model's frame, boxes mapped to source pixels."""
        return map_scene_graph(graph, model_size, source_size)

    # ------------------------------------------------------------------ outputs

    def publish_scene_graph(self, graph_msg: SceneGraphMsg, graph: SceneGraph) -> None:
        """scene_graph, then markers (and the detections mirror) for it."""
        pubs = self._pubs
        if "scene_graph" not in pubs:
            return
        pubs["scene_graph"].publish(graph_msg)
        try:
            pubs["markers"].publish(markers.scene_graph_markers(graph_msg, self._camera_info))
            if "detections" in pubs:
                pubs["detections"].publish(markers.detections_mirror(graph_msg))
        except Exception as exc:  # noqa: BLE001 - RViz extras never fail an answer
            self.get_logger().warning(f"markers failed: {exc}", throttle_duration_sec=5.0)

    def _publish_debug_image(self, rgb: np.ndarray, graph: SceneGraph, reasoning,
                             header: Header) -> None:
        pub = self._pubs.get("debug_image")
        if pub is None or not self._settings.publish_debug_image:
            return
        if pub.get_subscription_count() == 0:
            return  # nobody watches: do not render
        try:
            annotated = draw_scene_graph(rgb, graph, reasoning.answer)
            pub.publish(conversions.rgb_to_image_msg(annotated, header))
            with self._stats_lock:
                self._stats.debug_images += 1
        except Exception as exc:  # noqa: BLE001
            self.get_logger().warning(f"debug image failed: {exc}", throttle_duration_sec=5.0)

    def _finish(self, answer: SpatialAnswerMsg) -> None:
        """Count an answer and publish it on `answer`."""
        self._record(answer)
        pub = self._pubs.get("answer")
        if pub is not None and self.context.ok():  # not while the process shuts down
            try:
                pub.publish(answer)
            except Exception as exc:  # noqa: BLE001 - e.g. publisher destroyed by cleanup
                self.get_logger().warning(f"answer not published: {exc}")

    def _record(self, answer: SpatialAnswerMsg) -> None:
        with self._stats_lock:
            self._stats.answers[answer.status] = self._stats.answers.get(answer.status, 0) + 1
            if answer.status in (SpatialAnswerMsg.STATUS_INFERENCE_ERROR,
                                 SpatialAnswerMsg.STATUS_TIMEOUT):
                self._stats.last_error = answer.status_message

    def _status(self, request: AskRequest, status: int, message: str,
                header: Header | None = None) -> SpatialAnswerMsg:
        return conversions.status_answer(
            status, message, header=header, request_id=request.request_id,
            question=request.question, choices=request.choices)

    def _stale(self, request: AskRequest, header: Header, age_s: float) -> SpatialAnswerMsg:
        return self._status(
            request, SpatialAnswerMsg.STATUS_STALE_IMAGE,
            f"newest image is {age_s:.2f} s old; max_image_age_s is {request.max_image_age_s:g}",
            conversions.copy_header(header))

    # ------------------------------------------------------------------ diagnostics

    def stats_snapshot(self) -> dict[str, Any]:
        """The figures /diagnostics reports, as plain values."""
        with self._stats_lock:
            st = replace(self._stats, answers=dict(self._stats.answers))
        frames = self._images.stats
        worker = self._worker.stats
        a = SpatialAnswerMsg
        parse_failures = st.count(a.STATUS_PARSE_ERROR)
        return {
            "state": self._state,
            "answers_ok": st.count(a.STATUS_OK),
            "answers_partial": st.count(a.STATUS_PARTIAL),
            "parse_failures": parse_failures,
            "parse_failure_rate": parse_failures / st.inferences if st.inferences else 0.0,
            "inferences": st.inferences,
            "inference_errors": st.count(a.STATUS_INFERENCE_ERROR),
            "timeouts": st.count(a.STATUS_TIMEOUT),
            "canceled": st.count(a.STATUS_CANCELED),
            "busy": st.count(a.STATUS_BUSY),
            "stale_image": st.count(a.STATUS_STALE_IMAGE),
            "no_image": st.count(a.STATUS_NO_IMAGE),
            "invalid_requests": st.count(a.STATUS_INVALID_REQUEST),
            "image_conversion_errors": st.image_errors,
            "debug_images": st.debug_images,
            "frames_received": frames.received,
            "frames_dropped": frames.dropped,
            "queue_depth": worker.queue_depth,
            "inference_running": worker.busy,
            "latency_last_s": st.latency_last_s,
            "latency_mean_s": st.latency_sum_s / st.inferences if st.inferences else 0.0,
            "last_error": st.last_error,
        }

    def _publish_diagnostics(self) -> None:
        try:
            self._diagnostics_pub.publish(self._diagnostics())
        except Exception as exc:  # noqa: BLE001
            self.get_logger().warning(f"diagnostics failed: {exc}", throttle_duration_sec=10.0)

    def _diagnostics(self) -> DiagnosticArray:
        values = self.stats_snapshot()
        engine = self._engine
        description = engine.describe() if engine is not None else {}
        values.update({k: v for k, v in description.items() if k not in values})
        if engine is None:
            values.setdefault("backend", self._settings.backend)
            values.setdefault("model", self._settings.model)
        device = str(description.get("device", ""))
        torch = sys.modules.get("torch")
        if device.startswith("cuda") and torch is not None and torch.cuda.is_available():
            values["gpu_memory_allocated_mb"] = torch.cuda.memory_allocated() / 2**20
            values["gpu_memory_reserved_mb"] = torch.cuda.memory_reserved() / 2**20
        status = DiagnosticStatus(name=f"{self.get_fully_qualified_name()}: inference",
                                  hardware_id=f"{values.get('backend', '')}:{device}")
        if self._config_error:
            status.level, status.message = DiagnosticStatus.ERROR, self._config_error
        elif not self._active:
            status.level, status.message = DiagnosticStatus.OK, f"{self._state}"
        elif values["last_error"]:
            status.level, status.message = DiagnosticStatus.WARN, (
                f"{values['inference_errors']} inference errors, {values['timeouts']} timeouts; "
                f"last: {values['last_error']}")
        else:
            status.level, status.message = DiagnosticStatus.OK, "serving"
        status.values = [KeyValue(key=k, value=_format_value(v)) for k, v in values.items()]
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        return array


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class _FeedbackSender:
    """Turns worker progress events into AskSpatial feedback on the executor thread."""

    def __init__(self, goal_handle) -> None:
        self._goal_handle = goal_handle
        self._stage: int | None = None
        self._graph: SceneGraphMsg | None = None
        self._last_sent = 0.0
        self._pending: FeedbackEvent | None = None

    def send(self, events: list[FeedbackEvent], final: bool = False) -> None:
        for event in events:
            if event.scene_graph is not None:
                self._graph = event.scene_graph
            if event.stage != self._stage or event.scene_graph is not None:
                self._publish(event)
            else:
                self._pending = event
        if self._pending is not None and (
            final or time.monotonic() - self._last_sent >= FEEDBACK_MIN_INTERVAL_S
        ):
            self._publish(self._pending)

    def _publish(self, event: FeedbackEvent) -> None:
        feedback = AskSpatialAction.Feedback(stage=int(event.stage), partial_text=event.text)
        if self._graph is not None:
            feedback.scene_graph = self._graph
        self._goal_handle.publish_feedback(feedback)
        self._stage = event.stage
        self._last_sent = time.monotonic()
        self._pending = None


def main(args: list[str] | None = None) -> None:
    """Entry point: spin the node on a MultiThreadedExecutor; with `autostart`, configure and
    activate it first. SIGINT/SIGTERM end it through the lifecycle shutdown transition and exit 0
    (shutdown.py says why rclpy's own signal handlers are not used)."""
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    node = SpatialThinkerNode()
    stop = StopSignals(node.get_logger())
    executor = MultiThreadedExecutor(num_threads=recommended_executor_threads(node.settings))
    executor.add_node(node)
    try:
        if node.settings.autostart:
            stop.interrupt_startup = True  # a signal abandons a model load still running
            configured = node.trigger_configure() == TransitionCallbackReturn.SUCCESS
            if configured and not stop.requested.is_set():
                node.trigger_activate()
            elif not configured:
                node.get_logger().error("autostart: configure failed; the node stays unconfigured")
            stop.interrupt_startup = False
        while rclpy.ok() and not stop.requested.is_set():
            try:
                executor.spin_once(timeout_sec=STOP_POLL_S)
            except ExternalShutdownException:
                break
            except Exception as exc:  # noqa: BLE001 - one failed callback must not end the node
                if not rclpy.ok():
                    break
                node.get_logger().error(f"callback failed: {type(exc).__name__}: {exc}")
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        stop.interrupt_startup = False
        logger = node.get_logger()
        if rclpy.ok():
            try:  # unconfigured/inactive/active -> finalized; on_shutdown releases everything
                node.trigger_shutdown()
            except Exception as exc:  # noqa: BLE001 - mid-transition: destroy_node releases
                logger.warning(f"lifecycle shutdown skipped: {exc}")
        executor.shutdown()
        node.destroy_node()
        logger.info("shut down cleanly")
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
