"""A planner's client for the node's `ask` action: typed results, retries, feedback, cancel.

    client = SpatialThinkerClient(node)          # "ask" resolves in the node's namespace
    client.wait_until_ready(10.0)
    result = client.ask("Where is the mug relative to the laptop?", ["left", "right"])
    result.matched_choice, result.find("mug").position

Threading. The client runs no thread and no executor in the background; it works on the
caller's node:
- The node belongs to no executor (a plain script): `ask` spins the node on the calling thread,
  on an executor of the client's own, until the answer is in.
- An executor spins the node (in another thread, or a MultiThreadedExecutor whose callback
  calls `ask`): `ask` only waits. The client's entities are in their own reentrant callback
  group, so another executor thread delivers the answer.
- In a callback of a single-threaded executor, a blocking `ask` could never get its answer (the
  one thread that would deliver it is the one waiting): it raises BlockingAskRefused. Use
  `ask_async` there. (A MultiThreadedExecutor with every thread blocked in `ask` waits until
  timeout_s.)

`ask_async` returns an rclpy Future: `await` it in an async callback, use
`add_done_callback`, or `rclpy.spin_until_future_complete`. It completes with a SpatialResult or
fails with a SpatialThinkerError; `Future.result()` does not wait (None while pending).

Outcomes: OK and PARTIAL answers are returned. Retryable answers (core.status.RETRYABLE: BUSY,
NO_IMAGE, STALE_IMAGE, TIMEOUT) and a missing action server are asked again after 0.1 s, 0.2 s,
0.4 s ... (at most 2 s apart) while retry_deadline_s (from the call) allows; then the last one
is raised. Every other status (INVALID_REQUEST, INFERENCE_ERROR, CANCELED, PARSE_ERROR) is
raised at once as a SpatialThinkerError carrying the node's answer. timeout_s bounds the whole
call: past it the running goal is canceled and TIMEOUT raised. Malformed arguments raise
TypeError / ValueError before anything is sent.
"""

from __future__ import annotations

import functools
import math
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import rclpy
from builtin_interfaces.msg import Time
from rclpy.action import ActionClient
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.executors import MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.task import Future

from spatialthinker_ros.action import AskSpatial as AskSpatialAction
from spatialthinker_ros.srv import AskSpatial as AskSpatialSrv

from ..core.outputs import FrameHeader
from ..core.scene import SceneGraph
from ..core.spatial_result import SpatialResult, SpatialThinkerError
from ..core.status import RETRYABLE, AnswerStatus
from ..core.text import one_line
from .conversions import msg_to_scene_graph, msg_to_spatial_result

DEFAULT_TIMEOUT_S = 60.0
DEFAULT_RETRY_DEADLINE_S = 10.0
FIRST_BACKOFF_S = 0.1
MAX_BACKOFF_S = 2.0
# A blocking ask waits this much beyond timeout_s for the client's own timeout to fire.
WAIT_SLACK_S = 5.0
SPIN_HANDOVER_S = 0.05  # a blocking ask waiting for another thread's spin checks this often
SCENE_GRAPH_READY = AskSpatialAction.Feedback.STAGE_SCENE_GRAPH_READY
# Frames of an executor's spin loop on the stack: the current thread runs its callbacks.
_SPIN_FRAMES = frozenset({"spin", "spin_once", "_spin_once_impl", "spin_until_future_complete",
                          "spin_once_until_future_complete", "_spin_once_until_future_complete"})


@dataclass(frozen=True)
class SceneGraphFeedback:
    """The scene graph of a running ask, as soon as the model closed `</scene>`."""

    scene_graph: SceneGraph
    observation: str
    header: FrameHeader


class BlockingAskRefused(RuntimeError):
    """A blocking ask inside a single-threaded executor's callback (it would never finish)."""


SceneGraphCallback = Callable[[SceneGraphFeedback], None]
TextCallback = Callable[[str], None]


class SpatialThinkerClient:
    """Asks spatialthinker_node questions through its `ask` action (see the module doc)."""

    def __init__(self, node: Node, name: str = "ask", *,
                 on_scene_graph: SceneGraphCallback | None = None,
                 on_text: TextCallback | None = None) -> None:
        self.node = node
        self.name = name
        # Defaults for every ask; an ask's own callbacks replace them.
        self.on_scene_graph = on_scene_graph
        self.on_text = on_text
        self._group = ReentrantCallbackGroup()
        self._service = node.create_client(AskSpatialSrv, name, callback_group=self._group)
        self._action = ActionClient(node, AskSpatialAction, name, callback_group=self._group)
        self._clock = Clock(clock_type=ClockType.STEADY_TIME)
        self._lock = threading.Lock()
        self._asks: dict[int, _Ask] = {}  # id(future) -> ask in flight
        self._spin_lock = threading.Lock()
        self._own_executor: SingleThreadedExecutor | None = None

    # ------------------------------------------------------------------ public API

    def wait_until_ready(self, timeout_s: float = 10.0) -> bool:
        """True once the node's `ask` service and action server are both reachable."""
        deadline = time.monotonic() + timeout_s
        if not self._service.wait_for_service(timeout_sec=max(timeout_s, 0.0)):
            return False
        return self._action.wait_for_server(timeout_sec=max(deadline - time.monotonic(), 0.0))

    def ask(self, question: str, choices: Sequence[str] = (), *, camera: str = "",
            max_image_age_s: float = 0.0, not_before: Any = None, stop_after: str = "",
            request_id: str = "", timeout_s: float = DEFAULT_TIMEOUT_S,
            retry_deadline_s: float = DEFAULT_RETRY_DEADLINE_S,
            on_scene_graph: SceneGraphCallback | None = None,
            on_text: TextCallback | None = None) -> SpatialResult:
        """Ask and wait for the answer (arguments as for `ask_async`). Raises
        SpatialThinkerError for answers without a usable result, BlockingAskRefused inside a
        single-threaded executor's callback."""
        executor = self._spinning_executor()
        if executor is not None and not isinstance(executor, MultiThreadedExecutor) and (
            _runs_callbacks_of(executor)
        ):
            raise BlockingAskRefused(
                "SpatialThinkerClient.ask blocks, and this thread is the only one of a "
                f"{type(executor).__name__} that runs the node's callbacks, so the answer could "
                "never arrive: use ask_async (await it or add a done callback), or spin the node "
                "with a MultiThreadedExecutor")
        future = self.ask_async(
            question, choices, camera=camera, max_image_age_s=max_image_age_s,
            not_before=not_before, stop_after=stop_after, request_id=request_id,
            timeout_s=timeout_s, retry_deadline_s=retry_deadline_s,
            on_scene_graph=on_scene_graph, on_text=on_text)
        wait_s = timeout_s + WAIT_SLACK_S
        if executor is None or executor is self._own_executor:  # nobody else spins the node
            self._spin_until_done(future, wait_s)
        else:
            done = threading.Event()
            future.add_done_callback(lambda _f: done.set())
            done.wait(wait_s)
        if not (future.done() or future.cancelled()):  # only if the executor stopped spinning
            self.cancel(future)
            raise SpatialThinkerError(AnswerStatus.TIMEOUT,
                                      "no answer: the node's executor stopped spinning")
        if future.cancelled():
            raise SpatialThinkerError(AnswerStatus.CANCELED, "the ask was canceled")
        return future.result()

    def ask_async(self, question: str, choices: Sequence[str] = (), *, camera: str = "",
                  max_image_age_s: float = 0.0, not_before: Any = None, stop_after: str = "",
                  request_id: str = "", timeout_s: float = DEFAULT_TIMEOUT_S,
                  retry_deadline_s: float = DEFAULT_RETRY_DEADLINE_S,
                  on_scene_graph: SceneGraphCallback | None = None,
                  on_text: TextCallback | None = None) -> Future:
        """Send the question; the returned future completes with a SpatialResult or fails with
        a SpatialThinkerError.

        choices: answer options ("(A) left (B) right" for the model); camera: one of the node's
        cameras ("" = its first); max_image_age_s: oldest acceptable frame (<= 0: the node's
        default); not_before: answer only about a frame stamped at or after this time (seconds,
        builtin_interfaces/Time or rclpy.time.Time; the node waits for one); stop_after:
        "scene_graph" to stop once the scene graph is complete; request_id: echoed in the
        answer (a fresh one when empty); timeout_s: bound of the whole call; retry_deadline_s:
        no new attempt after this many seconds; on_scene_graph / on_text: feedback callbacks
        (each attempt's), replacing the client's defaults.
        """
        goal = AskSpatialAction.Goal(
            question=_text("question", question),
            choices=[_text("choice", c) for c in _choices(choices)],
            max_image_age_s=_finite("max_image_age_s", max_image_age_s),
            request_id=_text("request_id", request_id) or uuid.uuid4().hex,
            not_before=_time_msg(not_before),
            stop_after=_text("stop_after", stop_after),
            camera=_text("camera", camera),
        )
        timeout = _finite("timeout_s", timeout_s)
        retry = _finite("retry_deadline_s", retry_deadline_s)
        if timeout <= 0.0 or retry < 0.0:
            raise ValueError(f"need timeout_s > 0 and retry_deadline_s >= 0; got {timeout_s!r}, "
                             f"{retry_deadline_s!r}")
        ask = _Ask(self, goal, timeout, retry, on_scene_graph or self.on_scene_graph,
                   on_text or self.on_text)
        with self._lock:
            self._asks[id(ask.future)] = ask
        ask.future.add_done_callback(self._on_ask_done)
        ask.start()
        return ask.future

    def cancel(self, future: Future | None = None) -> int:
        """Cancel the ask of `future` (every ask of this client when None): the running goal is
        canceled at the node and the ask fails with CANCELED. Returns how many were canceled."""
        with self._lock:
            if future is None:
                asks = list(self._asks.values())
            else:
                asks = [a for a in (self._asks.get(id(future)),) if a is not None]
        for ask in asks:
            ask.cancel()
        return len(asks)

    def destroy(self) -> None:
        """Cancel what runs and release the client's ROS entities (the node stays). Safe while
        an executor spins the node: the action client leaves the node's wait set and its handle
        is freed with the object (rclpy's ActionClient.destroy() frees it at once, and an
        executor thread that already took it as ready then fails inside spin())."""
        self.cancel()
        self.node.remove_waitable(self._action)
        self.node.destroy_client(self._service)
        if self._own_executor is not None:
            self._own_executor.shutdown(timeout_sec=0)

    # ------------------------------------------------------------------ internals

    def _on_ask_done(self, future: Future) -> None:
        with self._lock:
            ask = self._asks.pop(id(future), None)
        if ask is not None and future.cancelled():  # the caller canceled the future itself
            ask.cancel()

    def _spinning_executor(self):
        """The executor that has the node, or None when nobody does (then `ask` spins)."""
        executor = self.node.executor
        if executor is None or self.node not in executor.get_nodes():
            return None
        return executor

    def _spin_until_done(self, future: Future, timeout_s: float) -> None:
        """Spin the node until `future` is done. One thread spins at a time; another thread's
        ask meanwhile waits for its own future (the spinning thread runs its callbacks), not
        for the spinning thread's answer, and takes over the spinning if that one ends first."""
        deadline = time.monotonic() + timeout_s
        while not future.done():
            left = deadline - time.monotonic()
            if left <= 0.0:
                return
            if not self._spin_lock.acquire(timeout=min(left, SPIN_HANDOVER_S)):
                continue
            try:
                self._own_executor = self._own_executor or SingleThreadedExecutor(
                    context=self.node.context)
                left = max(deadline - time.monotonic(), 0.0)
                rclpy.spin_until_future_complete(self.node, future, executor=self._own_executor,
                                                 timeout_sec=left)
            finally:
                self._spin_lock.release()
            return

    def one_shot(self, delay_s: float, callback: Callable[[], None]) -> _OneShot:
        return _OneShot(self, delay_s, callback)


class _OneShot:
    """A steady-clock timer on the client's node that fires once."""

    def __init__(self, client: SpatialThinkerClient, delay_s: float,
                 callback: Callable[[], None]) -> None:
        self._node = client.node
        self._callback = callback
        self._fired = threading.Lock()
        self._timer = client.node.create_timer(max(delay_s, 1e-3), self._fire,
                                               callback_group=client._group, clock=client._clock)

    def _fire(self) -> None:
        if self._fired.acquire(blocking=False):
            self._timer.cancel()
            self._callback()

    def destroy(self) -> None:
        self._fired.acquire(blocking=False)
        self._node.destroy_timer(self._timer)


def _guarded(method: Callable[..., None]) -> Callable[..., None]:
    """An executor callback of _Ask that never raises into the caller's executor: a failure
    ends the ask with an error instead."""

    @functools.wraps(method)
    def run(self: _Ask, *args: Any) -> None:
        try:
            method(self, *args)
        except Exception as exc:  # noqa: BLE001
            self._finish(error=self._error(None, one_line(f"client error: {exc!r}")))

    return run


class _Ask:
    """One ask_async call: goals sent one after another until an answer, an error, a cancel or
    a deadline. Callbacks may run on several executor threads at once: state under `_lock`."""

    def __init__(self, client: SpatialThinkerClient, goal: Any, timeout_s: float,
                 retry_deadline_s: float, on_scene_graph: SceneGraphCallback | None,
                 on_text: TextCallback | None) -> None:
        self.client = client
        self.goal = goal
        self.future: Future = Future()
        self._on_scene_graph = on_scene_graph
        self._on_text = on_text
        self._timeout_s = timeout_s
        self._started = time.monotonic()
        self._retry_until = self._started + min(retry_deadline_s, timeout_s)
        self._lock = threading.Lock()
        self._finished = False
        self._canceled = False
        self._attempts = 0
        self._handle: Any = None  # goal handle of the running attempt
        self._backoff: _OneShot | None = None
        self._deadline: _OneShot | None = None

    def start(self) -> None:
        self._deadline = self.client.one_shot(self._timeout_s, self._on_timeout)
        self._attempt()

    def cancel(self) -> None:
        with self._lock:
            if self._finished:
                return
            self._canceled = True
            handle = self._handle
            waiting = self._backoff is not None
        if handle is not None:
            handle.cancel_goal_async()  # the node answers CANCELED; _on_result finishes
        elif waiting:
            self._finish(error=self._error(AnswerStatus.CANCELED, "canceled by the client"))

    # -- attempts

    @_guarded
    def _attempt(self) -> None:
        with self._lock:
            if self._finished:
                return
            self._attempts += 1
            self._handle = None
            fired, self._backoff = self._backoff, None
        if fired is not None:  # the timer that started this attempt
            fired.destroy()
        if not self.client._action.server_is_ready():
            self._retry_or_fail(None, f"no action server {self.client.name!r} is reachable "
                                "(is spatialthinker_node running, in this namespace?)", None)
            return
        sent = self.client._action.send_goal_async(self.goal, feedback_callback=self._on_feedback)
        sent.add_done_callback(self._on_goal_response)

    @_guarded
    def _on_goal_response(self, sent: Future) -> None:
        handle = sent.result()
        if not handle.accepted:
            self._retry_or_fail(None, "the node rejected the goal", None)
            return
        with self._lock:
            self._handle = handle
            stop = self._finished or self._canceled
        if stop:
            handle.cancel_goal_async()
        handle.get_result_async().add_done_callback(self._on_result)

    @_guarded
    def _on_result(self, response: Future) -> None:
        try:
            result = msg_to_spatial_result(response.result().result.answer)
        except ValueError as exc:  # a status this client does not know
            self._finish(error=self._error(None, one_line(f"unreadable answer: {exc}")))
            return
        with self._lock:
            canceled = self._canceled
        if result.answered:
            self._finish(result=result)
        elif result.status in RETRYABLE and not canceled:
            self._retry_or_fail(result.status, result.status_message, result)
        else:
            message = result.status_message or result.status.name
            self._finish(error=self._error(result.status, message, result))

    def _retry_or_fail(self, status: AnswerStatus | None, message: str,
                       result: SpatialResult | None) -> None:
        delay = min(MAX_BACKOFF_S, FIRST_BACKOFF_S * 2 ** (self._attempts - 1))
        with self._lock:
            canceled = self._canceled
            give_up = canceled or time.monotonic() + delay > self._retry_until
            if not give_up and not self._finished:
                self._backoff = self.client.one_shot(delay, self._attempt)
        if canceled:
            self._finish(error=self._error(AnswerStatus.CANCELED, "canceled by the client"))
        elif give_up:
            elapsed = time.monotonic() - self._started
            self._finish(error=self._error(
                status, f"{message} (after {self._attempts} attempt(s) in {elapsed:.1f} s)",
                result))

    # -- feedback, deadline, the end

    def _on_feedback(self, message: Any) -> None:
        feedback = message.feedback
        with self._lock:
            if self._finished:
                return
        try:
            if feedback.text_delta and self._on_text is not None:
                self._on_text(feedback.text_delta)
            graph = feedback.scene_graph
            # Text-only feedback of that stage carries an empty graph (no image size).
            if feedback.stage == SCENE_GRAPH_READY and graph.image_width > 0 and (
                self._on_scene_graph is not None
            ):
                self._on_scene_graph(SceneGraphFeedback(
                    msg_to_scene_graph(graph), graph.observation, FrameHeader.of(graph.header)))
        except Exception as exc:  # noqa: BLE001 - a planner's callback never breaks the ask
            self.client.node.get_logger().error(
                one_line(f"SpatialThinkerClient feedback callback raised {exc!r}"))

    @_guarded
    def _on_timeout(self) -> None:
        with self._lock:
            handle = None if self._finished else self._handle
        if handle is not None:
            handle.cancel_goal_async()
        self._finish(error=self._error(
            AnswerStatus.TIMEOUT, f"no answer within the client's timeout_s = "
            f"{self._timeout_s:g} s"))

    def _error(self, status: AnswerStatus | None, message: str,
               result: SpatialResult | None = None) -> SpatialThinkerError:
        return SpatialThinkerError(status, message, result, self._attempts)

    def _finish(self, result: SpatialResult | None = None,
                error: SpatialThinkerError | None = None) -> None:
        with self._lock:
            if self._finished:
                return
            self._finished = True
            timers = [t for t in (self._backoff, self._deadline) if t is not None]
        for timer in timers:
            timer.destroy()
        if self.future.cancelled():
            return
        if error is not None:
            self.future.set_exception(error)
        else:
            self.future.set_result(result)


def _runs_callbacks_of(executor: Any) -> bool:
    """Whether the calling thread is inside `executor`'s spin loop (i.e. in its callback)."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name in _SPIN_FRAMES and frame.f_locals.get("self") is executor:
            return True
        frame = frame.f_back
    return False


def _text(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"{name} is not valid Unicode text ({exc.reason})") from None
    return value


def _choices(choices: Any) -> list[str]:
    if isinstance(choices, str | bytes) or not isinstance(choices, Sequence):
        raise TypeError(f"choices must be a list of strings, got {type(choices).__name__}")
    return list(choices)


def _finite(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _time_msg(value: Any) -> Time:
    """None / seconds / builtin_interfaces Time / rclpy.time.Time -> a Time message."""
    if value is None:
        return Time()
    if hasattr(value, "to_msg"):
        value = value.to_msg()
    if isinstance(value, Time):
        return Time(sec=value.sec, nanosec=value.nanosec)
    seconds = _finite("not_before", value)
    if seconds < 0:
        raise ValueError(f"not_before must be >= 0 s, got {value!r}")
    whole = math.floor(seconds)
    return Time(sec=int(whole), nanosec=min(int(round((seconds - whole) * 1e9)), 999_999_999))
