"""spatialthinker_node: a lifecycle node answering spatial questions about the newest camera image.

Lifecycle:
- configure: validate the parameters, build the engine and load the model (a failure returns
  FAILURE with the reason logged; the node stays up, unconfigured); create the publishers.
- activate: subscribe to the camera topics, start the inference worker and the standing question.
- deactivate: stop the standing question, cancel queued requests and stop the running inference
  at its next token (their callers get CANCELED), unsubscribe.
- cleanup: destroy the publishers, unload the model, give its accelerator memory back.

The `ask` service and action exist for the node's whole life and answer BUSY ("node is
unconfigured/inactive, not active") outside the active state: rclpy sends a response after its
callback has returned, so destroying a service on deactivate could lose the CANCELED answer of a
request that deactivation just stopped; and a planner learns why it gets no answer instead of
timing out on a vanished service.

Cameras: the `cameras` parameter names them (default one camera on the node's own topics); they
share the one model and worker. Requests name a camera (`camera`, "" = the first); the standing
question visits the cameras in turn, after requests (`standing`).

This module is the wiring; the jobs live in their own modules: camera intake (`intake`),
requests and feedback (`requests`), running one request (`answering`), the standing question
(`standing`), outputs (`publishing`, contents from `core.outputs`), `diagnostics`, parameters
(`params`), target_frame's tf2 listener (`transforms`). Threads: camera callbacks on the intake's
own thread, /tf on the listener's; one worker thread runs the model (and waits for transforms);
service/action callbacks wait on it in a reentrant group, so run the node on a
MultiThreadedExecutor of at least `recommended_executor_threads()` threads (`main` does).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, Protocol

from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.expand_topic_name import expand_topic_name
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy
from std_msgs.msg import String

from spatialthinker_ros.msg import SpatialAnswer as SpatialAnswerMsg

from ..core.engine import SpatialThinkerEngine
from ..core.options import ENGINE_OPTIONS, EngineConfig
from ..core.text import one_line
from ..core.types import Result
from . import topics
from .answering import Answerer, AskRequest
from .diagnostics import ServingStats, camera_status, diagnostic_array
from .intake import CameraIntake
from .params import (
    DEFAULT_CAMERAS,
    NodeSettings,
    declare_parameters,
    validate_value,
    validate_values,
)
from .publishing import Publishers
from .requests import WAIT_SLACK_S, RequestServer
from .standing import StandingQuestion
from .transforms import TargetFrame
from .worker import InferenceWorker, Job

NODE_NAME = "spatialthinker_node"
QUESTION_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)


class Engine(Protocol):
    """What the node needs from SpatialThinkerEngine (tests inject wrapped engines)."""

    config: EngineConfig

    @property
    def loaded(self) -> bool: ...

    def load(self) -> None: ...

    def unload(self) -> None: ...

    def describe(self) -> dict[str, str]: ...

    def answer(self, image: Any, question: str, choices: Sequence[str] | None = None,
               **callbacks: Any) -> Result: ...


EngineFactory = Callable[[EngineConfig], Engine]


def recommended_executor_threads(settings: NodeSettings) -> int:
    """Every accepted request holds one executor thread while it waits; leave room for timer,
    parameter and lifecycle callbacks and for answering BUSY."""
    return settings.max_queue + 6


class SpatialThinkerNode(LifecycleNode):
    """Lifecycle node serving SpatialThinker answers (see the module docstring)."""

    def __init__(self, node_name: str = NODE_NAME, *, engine_factory: EngineFactory | None = None,
                 **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        values, problems = declare_parameters(self)
        self._values = values
        self._startup_problems = problems
        for problem in problems:
            self.get_logger().error(problem)
        try:
            self._settings = NodeSettings.from_values(values)
        except Exception:  # noqa: BLE001 - bad values: configure reports them and fails
            self._settings = NodeSettings.from_values({})
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self._engine_factory: EngineFactory = engine_factory or SpatialThinkerEngine
        self._engine: Engine | None = None
        self._state = "unconfigured"
        self._config_error = ""

        self.stats = ServingStats()
        # `cameras` is read-only: the intake's cameras exist for the node's whole life (a bad
        # value fails configure; meanwhile the node has the default camera).
        cameras = values.get("cameras")
        if validate_value("cameras", cameras) is not None:
            cameras = DEFAULT_CAMERAS
        self.intake = CameraIntake(self, tuple(cameras), self._now_s)
        self.outputs = Publishers(self, self.stats)
        self.answerer = Answerer(self, self.intake, self.outputs, self.stats, self._now_s)
        self.answerer.settings = self._settings
        self.worker: InferenceWorker[AskRequest, SpatialAnswerMsg] = InferenceWorker(
            self._handle_job, max_queue=self._settings.max_queue
        )
        self.requests = RequestServer(self, self.worker, self.answerer, self.stats,
                                      lambda: self._settings, lambda: self._state)
        self.standing = StandingQuestion(self, self.worker, self.answerer,
                                         lambda: self._settings, self._finish, self.stats)
        self.standing.set_from_params(self._settings)
        self._question_sub = None
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, topics.DIAGNOSTICS, 10)
        self._diagnostics_timer = self.create_timer(
            1.0, self._publish_diagnostics, callback_group=MutuallyExclusiveCallbackGroup()
        )

    @property
    def settings(self) -> NodeSettings:
        return self._settings

    @property
    def state(self) -> str:
        return self._state

    @property
    def config_error(self) -> str:
        return self._config_error

    def _resolve(self, topic: str) -> str:
        """The topic name after this node's namespace and remapping rules."""
        resolve = getattr(self, "resolve_topic_name", None)
        if resolve is not None:
            return resolve(topic)
        return expand_topic_name(topic, self.get_name(), self.get_namespace())

    # ------------------------------------------------------------------ lifecycle

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        problems = validate_values(self._values) + [
            p for p in self._startup_problems if p.startswith("parameter ")
        ]
        if problems:
            return self._configure_failed("invalid parameters: " + "; ".join(problems))
        try:
            engine = self._engine_factory(self._settings.engine)
            engine.load()
        except Exception as exc:  # noqa: BLE001 - ModelLoadError or anything: stay alive
            return self._configure_failed(f"could not load the model: {one_line(exc)}")
        self._engine = engine
        self.answerer.engine = engine
        if self._settings.target_frame:
            self.answerer.target_frame = TargetFrame(self, self._settings.target_frame)
        self.outputs.create(tuple(self.intake.cameras))
        self._state = "inactive"
        self._config_error = ""
        self.get_logger().info(f"model loaded: {engine.describe()}")
        return super().on_configure(state)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        s = self._settings
        self.intake.clear()
        self.worker.max_queue = s.max_queue
        self.worker.start()
        self.intake.subscribe(self._resolve, use_compressed=s.use_compressed,
                              use_depth=s.use_depth)
        self._question_sub = self.create_subscription(String, topics.QUESTION,
                                                      self.standing.on_topic, QUESTION_QOS)
        self.standing.start()
        self.requests.active = True
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
        self.requests.destroy()
        self.intake.close()
        super().destroy_node()

    def _configure_failed(self, reason: str) -> TransitionCallbackReturn:
        self._config_error = reason
        self.stats.error(reason)
        self.get_logger().error(f"configure failed: {reason}")
        return TransitionCallbackReturn.FAILURE

    def _stop_serving(self) -> None:
        """No new work; queued and running requests canceled, their callers answered."""
        self.requests.active = False
        self.standing.stop()
        if not self.worker.stop(timeout_s=self._settings.engine.timeout_s + WAIT_SLACK_S):
            self.get_logger().error("the inference did not stop in time; it is left to finish")
        self.requests.wait_for_callers(WAIT_SLACK_S)
        self.intake.unsubscribe()
        if self._question_sub is not None:
            self.destroy_subscription(self._question_sub)
            self._question_sub = None

    def _release(self) -> None:
        """Outputs destroyed, model unloaded (the backend frees its accelerator memory)."""
        self.outputs.destroy()
        target, self.answerer.target_frame = self.answerer.target_frame, None
        if target is not None:
            target.close()
        engine, self._engine = self._engine, None
        self.answerer.engine = None
        if engine is not None:
            try:
                engine.unload()
            except Exception as exc:  # noqa: BLE001
                self.get_logger().error(f"unloading the model failed: {one_line(exc)}")
        self.intake.clear()

    # ------------------------------------------------------------------ parameters

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        """Validate the whole new set before committing anything; never raises."""
        try:
            return self._apply_parameters(params)
        except Exception as exc:  # noqa: BLE001 - a parameter callback must always reply
            self.get_logger().error(f"parameter change failed: {one_line(exc)}")
            return SetParametersResult(successful=False, reason=one_line(exc))

    def _apply_parameters(self, params: list[Parameter]) -> SetParametersResult:
        changes = {p.name: p.value for p in params}
        for name in ("standing_choices", "standing_cameras"):  # lists that may be emptied
            if name in changes and changes[name] is None:
                changes[name] = []
        merged = {**self._values, **changes}
        known = set(validate_values(self._values))
        problems = [p for p in validate_values(merged) if p not in known]
        if problems:
            return SetParametersResult(successful=False, reason="; ".join(problems))
        settings = NodeSettings.from_values(merged)
        old, self._values, self._settings = self._settings, merged, settings
        self.answerer.settings = settings
        self._apply_runtime_engine_options(settings)
        self.worker.max_queue = settings.max_queue
        if {"standing_question", "standing_choices"} & changes.keys():
            self.standing.set_from_params(settings,
                                          question_changed="standing_question" in changes)
        timing = (old.rate_hz, old.standing_order) != (settings.rate_hz, settings.standing_order)
        if timing and self.requests.active:
            self.standing.start()
        return SetParametersResult(successful=True)

    def _apply_runtime_engine_options(self, settings: NodeSettings) -> None:
        """Engine options that may change while the node runs (max_question_chars,
        max_image_pixels, timeout_s) reach the loaded engine, which reads its config per call."""
        engine = self._engine
        if engine is None:
            return
        runtime = {o.name: getattr(settings.engine, o.name)
                   for o in ENGINE_OPTIONS if o.node and not o.read_only}
        engine.config = replace(engine.config, **runtime)

    # ------------------------------------------------------------------ the worker

    def _now_s(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _handle_job(self, job: Job) -> SpatialAnswerMsg:
        """Runs on the inference worker thread; always returns an answer."""
        answer = self.answerer.run(job)
        self._finish(answer)
        return answer

    def _finish(self, answer: SpatialAnswerMsg) -> None:
        """Count an answer and publish it on `answer`."""
        self.stats.answered(answer.status, answer.status_message)
        self.outputs.publish("answer", answer)

    # ------------------------------------------------------------------ diagnostics

    def stats_snapshot(self) -> dict[str, Any]:
        """The figures /diagnostics reports, as plain values."""
        values: dict[str, Any] = {"state": self._state, **self.stats.snapshot()}
        frames = [c.images.stats for c in self.intake.cameras.values()]
        worker = self.worker.stats
        values.update(
            cameras=len(frames),
            frames_received=sum(f.received for f in frames),
            frames_dropped=sum(f.dropped for f in frames),
            queue_depth=worker.queue_depth,
            inference_running=worker.busy,
        )
        target = self.answerer.target_frame
        if target is not None:
            tf = target.counts
            values.update(target_frame=target.target_frame, transforms_found=tf.lookups_ok,
                          transforms_missing=tf.lookups_failed,
                          transforms_dropped=tf.transforms_dropped,
                          tf_buffer_clears=tf.buffer_clears, last_transform_error=tf.last_error)
        return values

    def _publish_diagnostics(self) -> None:
        try:
            self._diagnostics_pub.publish(self._diagnostics())
        except Exception as exc:  # noqa: BLE001
            self.get_logger().warning(f"diagnostics failed: {exc}", throttle_duration_sec=10.0)

    def _diagnostics(self) -> DiagnosticArray:
        values = self.stats_snapshot()
        engine = self._engine
        if engine is not None:
            values.update({k: v for k, v in engine.describe().items() if k not in values})
            memory = getattr(engine, "memory_stats", None)
            if memory is not None:
                values.update(memory())
        else:
            values.setdefault("backend", self._settings.engine.backend)
            values.setdefault("model", self._settings.engine.model)
        name, active = self.get_fully_qualified_name(), self.requests.active
        cameras = [camera_status(name, report, active=active, state=self._state,
                                 max_image_age_s=self._settings.max_image_age_s)
                   for report in self.intake.reports()]
        return diagnostic_array(
            f"{name}: inference", values, config_error=self._config_error, active=active,
            state=self._state, stamp=self.get_clock().now().to_msg(), cameras=cameras)
