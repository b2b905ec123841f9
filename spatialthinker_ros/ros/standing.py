"""The standing question: answered about each new frame of every standing camera, the cameras
in turn at `rate_hz` each, after planner requests.

Set by the `standing_question`/`standing_choices` parameters or the `question` topic (an empty
string clears it); validated by the same rule as requests (a bad one is refused with a logged
reason, never sent to the model). Its answers go to the `answer` topic. Scheduling:
- the cameras (`standing_cameras`, default every camera) take turns in a fixed rotation; the
  timer ticks at rate_hz x their number (at most MAX_TICK_HZ), one camera's turn per tick;
- requests go first: a tick that finds the worker running or holding anything does nothing, and
  the turn stays with its camera. So at most one standing answer is ever pending, and a planner
  request waits behind at most one standing answer (the one running when it arrived);
- on its turn a camera without a usable frame gets a NO_IMAGE/STALE_IMAGE answer; one whose
  newest frame was answered already (by the standing question) is passed over; otherwise its
  newest frame goes to the worker.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.lifecycle import LifecycleNode
from std_msgs.msg import String

from ..core.prompt import question_problem
from .answering import Answerer, AskRequest
from .diagnostics import ServingStats
from .frames import Frame
from .params import NodeSettings
from .worker import BusyPolicy, InferenceWorker

MAX_TICK_HZ = 100.0
LOG_THROTTLE_S = 5.0  # at most one log line per this for messages on the `question` topic


def tick_period_s(rate_hz: float, cameras: int) -> float:
    """The timer period giving each of `cameras` cameras one turn per 1 / rate_hz seconds."""
    return 1.0 / min(rate_hz * max(cameras, 1), MAX_TICK_HZ)


class StandingQuestion:
    def __init__(self, node: LifecycleNode, worker: InferenceWorker, answerer: Answerer,
                 settings: Callable[[], NodeSettings], finish: Callable[[object], None],
                 stats: ServingStats) -> None:
        self._node = node
        self._stats = stats
        self._worker = worker
        self._answerer = answerer
        self._settings = settings
        self._finish = finish  # counts and publishes an answer made without the worker
        self._lock = threading.Lock()
        self._question: tuple[str, tuple[str, ...], bool] | None = None  # (q, choices, param)
        self._last_seq: dict[str, int] = {}  # camera -> seq of the frame last answered
        self._turn = 0  # the rotation's position
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
            self._last_seq.clear()

    def on_topic(self, msg: String) -> None:
        """A question published on `question` (empty: clear). Invalid ones are ignored, never
        sent to the model, and counted (`questions_refused` in /diagnostics); the log says so
        at most once per LOG_THROTTLE_S, so a flood of messages is not a flood of log lines."""
        question = msg.data.strip()
        if question:
            problem = question_problem(question, (),
                                       self._settings().engine.max_question_chars)
            if problem is not None:
                refused = self._stats.question_refused()
                self._node.get_logger().warning(
                    f"standing question ignored: {problem} ({refused} refused so far)",
                    throttle_duration_sec=LOG_THROTTLE_S)
                return
        with self._lock:
            changed = self._question is None or self._question[0] != question
            self._question = (question, (), False) if question else None
            self._last_seq.clear()
        if changed:
            self._node.get_logger().info(f"standing question {'set' if question else 'cleared'}",
                                         throttle_duration_sec=LOG_THROTTLE_S)

    def start(self) -> None:
        """(Re)create the timer for the current rate_hz and cameras (none when rate_hz is 0)."""
        self.stop()
        settings = self._settings()
        if settings.rate_hz > 0:
            period = tick_period_s(settings.rate_hz, len(settings.standing_order))
            self._timer = self._node.create_timer(period, self._on_tick,
                                                  callback_group=self._group)

    def stop(self) -> None:
        if self._timer is not None:
            self._node.destroy_timer(self._timer)
            self._timer = None

    def _answered_frame(self, camera: str, frame: Frame) -> None:
        with self._lock:
            self._last_seq[camera] = frame.seq

    def _on_tick(self) -> None:
        try:
            self._tick()
        except Exception as exc:  # noqa: BLE001 - a timer must never take the executor down
            self._node.get_logger().error(f"standing question failed: {exc}",
                                          throttle_duration_sec=5.0)

    def _tick(self) -> None:
        with self._lock:
            standing = self._question
        if standing is None:
            return
        stats = self._worker.stats
        if stats.busy or stats.queue_depth:
            return  # requests first; the turn stays with its camera
        settings = self._settings()
        order = settings.standing_order
        with self._lock:
            name = order[self._turn % len(order)]
            self._turn += 1
            last_seq = self._last_seq.get(name, 0)
        self._count += 1
        request = AskRequest(standing[0], standing[1], settings.max_image_age_s,
                             f"standing-{self._count}", camera=name, standing=True,
                             stop_after=settings.standing_stop_after)
        problem = self._answerer.frame_problem(request)
        if problem is not None:
            self._finish(self._answerer.status(request, *problem))
            return
        camera = self._answerer.camera(name)
        frame = camera.images.peek() if camera is not None else None
        if frame is None or frame.seq == last_seq:
            return  # this frame was answered already
        self._worker.submit(request, timeout_s=settings.engine.timeout_s,
                            policy=BusyPolicy.REJECT)
