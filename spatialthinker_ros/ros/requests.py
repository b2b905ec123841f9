"""The `ask` service and action: admission, the worker queue, waiting and feedback.

Requests that cannot go to the model are answered at once (BUSY outside the active state or
with a full queue, INVALID_REQUEST, NO_IMAGE, STALE_IMAGE). Accepted ones wait on the worker's
future with a bounded timeout on their own executor thread (reentrant group), so the executor
never blocks on the model. Every call gets exactly one answer, whatever fails.
"""

from __future__ import annotations

import concurrent.futures
import math
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.lifecycle import LifecycleNode
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

from spatialthinker_ros.action import AskSpatial as AskSpatialAction
from spatialthinker_ros.msg import SceneGraph as SceneGraphMsg
from spatialthinker_ros.msg import SpatialAnswer as SpatialAnswerMsg
from spatialthinker_ros.srv import AskSpatial as AskSpatialSrv

from ..core.prompt import question_problem
from ..core.status import AnswerStatus, GoalOutcome, goal_outcome
from ..core.text import one_line
from ..core.types import stop_after_problem
from .answering import Answerer, AskRequest
from .conversions import stamp_to_seconds
from .diagnostics import ServingStats
from .params import NodeSettings
from .worker import BusyPolicy, FeedbackEvent, InferenceWorker, Job, StopReason

# Extra wait past a request's deadline for a running job to stop at its next token, before the
# caller gives up on the worker (a safety net: the answer normally comes at the deadline).
WAIT_SLACK_S = 10.0
# Text-only action feedback at most this often (stage changes are always sent).
FEEDBACK_MIN_INTERVAL_S = 0.05
# How often a waiting action goal looks for a cancel request; right after the cancel callback
# (the goal becomes CANCELING once it returns), how often it looks for the state change.
CANCEL_POLL_S = 0.25
CANCELING_POLL_S = 0.005
# Requests are never dropped by DDS: a burst of callers beyond the default depth of 10 would
# otherwise lose requests silently (and those callers wait forever).
REQUEST_QOS = QoSProfile(history=HistoryPolicy.KEEP_ALL, reliability=ReliabilityPolicy.RELIABLE)


class RequestServer:
    """Serves `ask` (service and action) for the node's whole life (see the module doc)."""

    def __init__(self, node: LifecycleNode, worker: InferenceWorker, answerer: Answerer,
                 stats: ServingStats, settings: Callable[[], NodeSettings],
                 state: Callable[[], str]) -> None:
        self._node = node
        self._worker = worker
        self._answerer = answerer
        self._stats = stats
        self._settings = settings
        self._state = state
        self.active = False
        self._waiters_cond = threading.Condition()
        self._waiters = 0
        self._cancels: set[bytes] = set()  # goals whose cancel callback ran (see _on_cancel)
        group = ReentrantCallbackGroup()
        self._service = node.create_service(
            AskSpatialSrv, "ask", self._on_service, qos_profile=REQUEST_QOS, callback_group=group
        )
        self._action = ActionServer(
            node,
            AskSpatialAction,
            "ask",
            execute_callback=self._on_action,
            goal_callback=lambda _goal: GoalResponse.ACCEPT,
            cancel_callback=self._on_cancel,
            callback_group=group,
            goal_service_qos_profile=REQUEST_QOS,
            result_service_qos_profile=REQUEST_QOS,
            cancel_service_qos_profile=REQUEST_QOS,
        )

    def destroy(self) -> None:
        self._action.destroy()
        self._node.destroy_service(self._service)

    @property
    def callers(self) -> int:
        """Requests (service calls and action goals) the node has not answered yet."""
        with self._waiters_cond:
            return self._waiters

    def wait_for_callers(self, timeout_s: float) -> bool:
        """Wait until every caller got its answer (deactivation); False on timeout."""
        with self._waiters_cond:
            return self._waiters_cond.wait_for(lambda: self._waiters == 0, timeout=timeout_s)

    # ------------------------------------------------------------------ callbacks

    def _on_service(self, request, response):
        response.answer = self.serve(self.request_from(request))
        return response

    def _on_cancel(self, goal_handle) -> CancelResponse:
        """Accept; the goal's waiting caller stops its work once the goal is CANCELING. rclpy
        moves it there only after this callback returns: stopping the job here could finish
        the goal (ABORTED) before that, and the cancel would come back refused."""
        self._cancels.add(bytes(goal_handle.goal_id.uuid))
        return CancelResponse.ACCEPT

    def _on_action(self, goal_handle):
        answer = self.serve(self.request_from(goal_handle.request), goal_handle)
        outcome = goal_outcome(answer.status, goal_handle.is_cancel_requested)
        if outcome is GoalOutcome.SUCCEEDED:
            goal_handle.succeed()
        elif outcome is GoalOutcome.CANCELED:
            goal_handle.canceled()
        else:
            goal_handle.abort()
        self._cancels.discard(bytes(goal_handle.goal_id.uuid))  # terminal: no cancel follows
        return AskSpatialAction.Result(answer=answer)

    def request_from(self, msg: Any) -> AskRequest:
        """An AskRequest from a service request or action goal."""
        max_age = float(msg.max_image_age_s)
        default_age = self._settings().max_image_age_s
        return AskRequest(
            question=msg.question,
            choices=tuple(msg.choices),
            max_image_age_s=max_age if max_age > 0 and math.isfinite(max_age) else default_age,
            request_id=msg.request_id or uuid.uuid4().hex,
            camera=self._answerer.camera_name(msg.camera),
            not_before_s=stamp_to_seconds(msg.not_before),
            stop_after=msg.stop_after,
        )

    # ------------------------------------------------------------------ serving

    def serve(self, request: AskRequest, goal_handle=None) -> SpatialAnswerMsg:
        """Exactly one answer for `request` (the action's feedback goes to `goal_handle`)."""
        with self._waiters_cond:
            self._waiters += 1
        try:
            answer = self._serve(request, goal_handle)
        except Exception as exc:  # noqa: BLE001 - a caller always gets an answer
            message = one_line(f"{type(exc).__name__}: {exc}")
            self._node.get_logger().error(f"request failed: {message}")
            answer = self._reject(request, AnswerStatus.INFERENCE_ERROR, message)
        finally:
            with self._waiters_cond:
                self._waiters -= 1
                self._waiters_cond.notify_all()
        return answer

    def _serve(self, request: AskRequest, goal_handle) -> SpatialAnswerMsg:
        # timeout_s bounds the whole request from here: waiting for not_before, in the queue
        # and generating.
        arrived_at = time.monotonic()
        settings = self._settings()
        rejection = self.admit(request, goal_handle, arrived_at + settings.engine.timeout_s)
        if rejection is not None:
            return rejection
        job = self._worker.submit(request, timeout_s=settings.engine.timeout_s,
                                  policy=BusyPolicy(settings.busy_policy), arrived_at=arrived_at)
        if job is None:
            return self._reject(request, AnswerStatus.BUSY, self.busy_reason())
        if goal_handle is None:
            return self._wait_for(job)
        return self._wait_with_feedback(job, goal_handle)

    def busy_reason(self) -> str:
        if not self.active:
            return f"node is {self._state()}, not active"
        stats = self._worker.stats
        return (f"model busy ({stats.queue_depth} queued, max_queue {self._worker.max_queue}, "
                f"busy_policy {self._settings().busy_policy}); retry later")

    def admit(self, request: AskRequest, goal_handle, deadline: float) -> SpatialAnswerMsg | None:
        """An immediate answer for a request that cannot go to the model, else None. Waits
        until `deadline` (time.monotonic()) for a frame stamped at or after the request's
        `not_before` (CANCELED as soon as the node stops serving or the goal is canceled)."""
        if not self.active:
            return self._reject(request, AnswerStatus.BUSY, self.busy_reason())
        settings = self._settings()
        problem = question_problem(request.question, request.choices,
                                   settings.engine.max_question_chars)
        if problem is None:
            problem = stop_after_problem(request.stop_after)
        if problem is not None:
            return self._reject(request, AnswerStatus.INVALID_REQUEST, problem)
        if request.not_before_s > 0.0:
            rejection = self._wait_for_frame_after(request, settings.engine.timeout_s,
                                                   deadline, goal_handle)
            if rejection is not None:
                return rejection
        frame_problem = self._answerer.frame_problem(request)
        if frame_problem is not None:
            return self._reject(request, *frame_problem)
        return None

    def _wait_for_frame_after(self, request: AskRequest, timeout_s: float, deadline: float,
                              goal_handle=None) -> SpatialAnswerMsg | None:
        camera = self._answerer.camera(request.camera)
        if camera is None:
            return None  # admission then answers INVALID_REQUEST naming the cameras

        def stop() -> bool:
            return not self.active or (goal_handle is not None
                                       and goal_handle.is_cancel_requested)

        wait_s = max(0.0, deadline - time.monotonic())
        if camera.images.wait_for(request.not_before_s, wait_s, stop) is not None:
            return None
        if stop():
            why = "the goal was canceled" if self.active else f"the node is {self._state()}"
            return self._reject(
                request, AnswerStatus.CANCELED,
                f"{why} while waiting for an image stamped at or after not_before")
        return self._reject(
            request, AnswerStatus.STALE_IMAGE,
            f"no image stamped at or after not_before ({request.not_before_s:.3f} s) arrived "
            f"within timeout_s = {timeout_s:g} s")

    def _reject(self, request: AskRequest, status: AnswerStatus, message: str,
                header: Any = None) -> SpatialAnswerMsg:
        answer = self._answerer.status(request, status, message, header)
        self._stats.answered(answer.status, answer.status_message)
        return answer

    def _wait_for(self, job: Job) -> SpatialAnswerMsg:
        """The job's answer: at its deadline a job still queued never runs (TIMEOUT), a running
        one stops at its next token."""
        try:
            return job.future.result(timeout=max(0.0, job.deadline - time.monotonic()))
        except concurrent.futures.TimeoutError:
            job.expire()
        except concurrent.futures.CancelledError:
            return self._not_started(job)
        try:
            return job.future.result(timeout=WAIT_SLACK_S)
        except concurrent.futures.TimeoutError:
            job.cancel()
            return self._give_up(job)
        except concurrent.futures.CancelledError:
            return self._not_started(job)

    def _wait_with_feedback(self, job: Job, goal_handle) -> SpatialAnswerMsg:
        sender = FeedbackSender(goal_handle.publish_feedback)
        key = bytes(goal_handle.goal_id.uuid)
        while not job.future.done():
            poll_s = CANCELING_POLL_S if key in self._cancels else CANCEL_POLL_S
            left_s = job.deadline - time.monotonic()
            sender.send(job.feedback.drain(min(poll_s, left_s) if left_s > 0 else poll_s))
            if goal_handle.is_cancel_requested:
                job.cancel()
            if time.monotonic() > job.deadline:
                job.expire()
            if time.monotonic() > job.deadline + WAIT_SLACK_S:
                job.cancel()
                return self._give_up(job)
        sender.send(job.feedback.drain(0.0), final=True)
        try:
            return job.future.result(timeout=0)
        except concurrent.futures.CancelledError:
            return self._not_started(job)

    def _give_up(self, job: Job) -> SpatialAnswerMsg:
        return self._reject(job.payload, AnswerStatus.TIMEOUT,
                            f"no answer from the inference worker within timeout_s = "
                            f"{job.timeout_s:g} s + {WAIT_SLACK_S:g} s")

    def _not_started(self, job: Job) -> SpatialAnswerMsg:
        """A job that never ran: canceled, or still queued at its deadline."""
        if job.stop_reason is StopReason.TIMEOUT and not job.canceled:
            return self._reject(job.payload, AnswerStatus.TIMEOUT,
                                f"timeout_s = {job.timeout_s:g} s passed while the request "
                                f"waited in the queue")
        return self._reject(job.payload, AnswerStatus.CANCELED,
                            "canceled before the model started on it")


class FeedbackSender:
    """Turns worker progress events into light AskSpatial feedback: the text generated since
    the last message, the scene graph once (with SCENE_GRAPH_READY). Text-only updates go out at
    most every FEEDBACK_MIN_INTERVAL_S (joined, nothing lost); stage changes at once."""

    def __init__(self, publish: Callable[[Any], None]) -> None:
        self._publish_feedback = publish
        self._stage: int | None = None
        self._last_sent = 0.0
        self._pending: list[FeedbackEvent] = []

    def send(self, events: Sequence[FeedbackEvent], final: bool = False) -> None:
        for event in events:
            if event.stage != self._stage or event.scene_graph is not None:
                self._flush()
                self._publish(event.stage, event.text, event.scene_graph)
            else:
                self._pending.append(event)
        if self._pending and (
            final or time.monotonic() - self._last_sent >= FEEDBACK_MIN_INTERVAL_S
        ):
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            text = "".join(e.text for e in self._pending)
            stage = self._pending[-1].stage
            self._pending = []
            self._publish(stage, text, None)

    def _publish(self, stage: int, text: str, scene_graph: SceneGraphMsg | None) -> None:
        feedback = AskSpatialAction.Feedback(stage=int(stage), text_delta=text)
        if scene_graph is not None:
            feedback.scene_graph = scene_graph
        self._publish_feedback(feedback)
        self._stage = stage
        self._last_sent = time.monotonic()
