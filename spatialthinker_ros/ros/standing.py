"""The standing question: answered at `rate_hz` about each new frame, after planner requests.

Set by the `standing_question`/`standing_choices` parameters or the `question` topic (an empty
string clears it); validated by the same rule as requests (a bad one is refused with a logged
reason, never sent to the model). A tick submits it only when the worker is idle (requests go
first) and the newest frame was not answered yet; its answers go to the `answer` topic.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.lifecycle import LifecycleNode
from std_msgs.msg import String

from ..core.prompt import question_problem
from .answering import Answerer, AskRequest
from .frames import Frame
from .params import NodeSettings
from .worker import BusyPolicy, InferenceWorker


class StandingQuestion:
    def __init__(self, node: LifecycleNode, worker: InferenceWorker, answerer: Answerer,
                 settings: Callable[[], NodeSettings], finish: Callable[[object], None]) -> None:
        self._node = node
        self._worker = worker
        self._answerer = answerer
        self._settings = settings
        self._finish = finish  # counts and publishes an answer made without the worker
        self._lock = threading.Lock()
        self._question: tuple[str, tuple[str, ...], bool] | None = None  # (q, choices, param)
        self._last_seq = 0
        self._count = 0
        self._timer = None
        self._group = MutuallyExclusiveCallbackGroup()
        answerer.on_standing_frame = self._answered_frame

    @property
    def question(self) -> str:
        with self._lock:
            return self._question[0] if self._question else ""

    def set_from_params(self, settings: NodeSettings, question_changed: bool = True) -> None:
        """Take the parameters' question (already validated) or, when only the choices
        changed, keep a parameter question with the new choices."""
        with self._lock:
            if question_changed:
                question = settings.standing_question.strip()
                self._question = (question, settings.standing_choices, True) if question else None
            elif self._question is not None and self._question[2]:
                self._question = (self._question[0], settings.standing_choices, True)
            self._last_seq = 0

    def on_topic(self, msg: String) -> None:
        """A question published on `question` (empty: clear). Invalid ones are ignored with a
        warning: they never reach the model."""
        question = msg.data.strip()
        if question:
            problem = question_problem(question, (),
                                       self._settings().engine.max_question_chars)
            if problem is not None:
                self._node.get_logger().warning(f"standing question ignored: {problem}")
                return
        with self._lock:
            self._question = (question, (), False) if question else None
            self._last_seq = 0
        self._node.get_logger().info(f"standing question {'set' if question else 'cleared'}")

    def start(self) -> None:
        """(Re)create the timer for the current rate_hz (none when 0)."""
        self.stop()
        rate = self._settings().rate_hz
        if rate > 0:
            self._timer = self._node.create_timer(1.0 / rate, self._on_tick,
                                                  callback_group=self._group)

    def stop(self) -> None:
        if self._timer is not None:
            self._node.destroy_timer(self._timer)
            self._timer = None

    def _answered_frame(self, frame: Frame) -> None:
        with self._lock:
            self._last_seq = frame.seq

    def _on_tick(self) -> None:
        try:
            self._tick()
        except Exception as exc:  # noqa: BLE001 - a timer must never take the executor down
            self._node.get_logger().error(f"standing question failed: {exc}",
                                          throttle_duration_sec=5.0)

    def _tick(self) -> None:
        with self._lock:
            standing, last_seq = self._question, self._last_seq
        if standing is None:
            return
        stats = self._worker.stats
        if stats.busy or stats.queue_depth:
            return  # requests first; the next tick tries again
        settings = self._settings()
        self._count += 1
        request = AskRequest(standing[0], standing[1], settings.max_image_age_s,
                             f"standing-{self._count}", standing=True)
        problem = self._answerer.frame_problem(request)
        if problem is not None:
            self._finish(self._answerer.status(request, *problem))
            return
        camera = self._answerer.camera(request.camera)
        frame = camera.images.peek() if camera is not None else None
        if frame is None or frame.seq == last_seq:
            return  # this frame was answered already
        self._worker.submit(request, timeout_s=settings.engine.timeout_s,
                            policy=BusyPolicy.REJECT)


