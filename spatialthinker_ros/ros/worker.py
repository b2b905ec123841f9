"""One inference worker thread with a bounded request queue (no rclpy).

The executor threads submit jobs and wait on their futures; only this thread touches the model.
A busy worker either rejects a job (busy policy "reject") or queues it up to `max_queue`, then
rejects. Each job carries its own stop flag: cancel (action cancel, deactivation) and a deadline
(`timeout_s`, counted from the request's arrival, so time spent waiting in the queue counts) are
both seen by `should_stop`, which the engine polls between generated tokens. A job still queued
at its deadline never runs (`expire`).
"""

from __future__ import annotations

import concurrent.futures
import enum
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from ..core.parsing import stream_stage

P = TypeVar("P")
R = TypeVar("R")


class BusyPolicy(str, enum.Enum):
    REJECT = "reject"  # answer BUSY whenever a job is running
    QUEUE = "queue"  # queue up to max_queue jobs behind the running one, then answer BUSY


class StopReason(enum.Enum):
    NONE = "none"
    CANCELED = "canceled"
    TIMEOUT = "timeout"


class Stage(enum.IntEnum):
    """Progress of one answer; values equal AskSpatial.action's STAGE_* constants."""

    QUEUED = 0
    OBSERVING = 1
    SCENE_GRAPH_READY = 2
    THINKING = 3
    ANSWERED = 4


_STAGE_NAMES = {
    "observing": Stage.OBSERVING,
    "scene_graph_ready": Stage.SCENE_GRAPH_READY,
    "thinking": Stage.THINKING,
    "answered": Stage.ANSWERED,
}


def stage_of_text(text: str) -> Stage:
    """The stage a (partial) SpatialThinker output has reached."""
    return _STAGE_NAMES.get(stream_stage(text), Stage.OBSERVING)


class StageTracker:
    """The stage of a streamed output, updated per delta in time linear in the output: stages
    only advance, and the tags that advance them are short, so only the new text and a few
    characters before it are looked at."""

    _OVERLAP = 16  # longer than any tag, so a tag split across deltas is still seen

    def __init__(self) -> None:
        self.stage = Stage.OBSERVING
        self._tail = ""

    def feed(self, delta: str) -> Stage:
        window = self._tail + delta
        if "<" in window:
            self.stage = max(self.stage, stage_of_text(window))
        self._tail = window[-self._OVERLAP :]
        return self.stage


@dataclass(frozen=True)
class FeedbackEvent:
    stage: Stage
    text: str  # text generated since the previous event
    scene_graph: Any = None  # the parsed graph, on the SCENE_GRAPH_READY event only


class FeedbackChannel:
    """Progress events from the worker to one waiting caller. Stage changes are always kept;
    text-only updates of the same stage are merged (their deltas joined), so a slow reader never
    falls behind and never loses text."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._events: deque[tuple[FeedbackEvent, bool]] = deque()
        self._closed = False

    def push(self, event: FeedbackEvent, *, coalesce: bool = False) -> None:
        with self._cond:
            if self._closed:
                return
            if coalesce and self._events:
                last, last_coalescable = self._events[-1]
                if last_coalescable and last.stage == event.stage:
                    self._events.pop()
                    event = FeedbackEvent(event.stage, last.text + event.text)
            self._events.append((event, coalesce))
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        with self._cond:
            return self._closed

    def drain(self, timeout_s: float) -> list[FeedbackEvent]:
        """Pending events; waits up to `timeout_s` for one unless the channel is closed."""
        with self._cond:
            if not self._events and not self._closed:
                self._cond.wait(timeout_s)
            events = [e for e, _ in self._events]
            self._events.clear()
            return events


class Job(Generic[P, R]):
    """One request: its payload, its future result, its stop flag and its feedback channel."""

    def __init__(self, payload: P, timeout_s: float, arrived_at: float | None = None) -> None:
        """`arrived_at`: time.monotonic() when the request arrived (default: now)."""
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.payload = payload
        self.timeout_s = timeout_s
        self.deadline = (time.monotonic() if arrived_at is None else arrived_at) + timeout_s
        self.future: concurrent.futures.Future[R] = concurrent.futures.Future()
        self.feedback = FeedbackChannel()
        self.future.add_done_callback(lambda _f: self.feedback.close())
        self._canceled = threading.Event()
        self._timed_out = False

    def start(self) -> bool:
        """Called by the worker: False when the job was canceled, or reached its deadline,
        while queued."""
        if time.monotonic() > self.deadline:
            self.expire()
        return self.future.set_running_or_notify_cancel()

    def expire(self) -> bool:
        """Past the deadline: a job still queued never runs (its future is cancelled, its stop
        reason TIMEOUT); True when it was still queued."""
        if self.future.cancel():
            self._timed_out = True
            return True
        return False

    def cancel(self) -> None:
        """Stop the job: a queued one never runs, a running one stops at the next token."""
        self._canceled.set()
        self.future.cancel()  # only succeeds while still queued

    @property
    def canceled(self) -> bool:
        return self._canceled.is_set()

    def should_stop(self) -> bool:
        """Polled by the engine between tokens: True once canceled or past the deadline."""
        if self._canceled.is_set():
            return True
        if time.monotonic() > self.deadline:
            self._timed_out = True
            return True
        return False

    @property
    def stop_reason(self) -> StopReason:
        if self._canceled.is_set():
            return StopReason.CANCELED
        if self._timed_out or time.monotonic() > self.deadline:
            return StopReason.TIMEOUT
        return StopReason.NONE


@dataclass(frozen=True)
class WorkerStats:
    submitted: int
    rejected: int  # answered BUSY
    completed: int  # the handler returned
    failed: int  # the handler raised (a bug: handlers are expected to return an error answer)
    canceled_in_queue: int
    queue_depth: int
    busy: bool


class InferenceWorker(Generic[P, R]):
    """Runs `handler(job)` for one job at a time on a dedicated thread."""

    def __init__(
        self,
        handler: Callable[[Job[P, R]], R],
        *,
        max_queue: int = 4,
        name: str = "spatialthinker-inference",
    ) -> None:
        self._handler = handler
        self._name = name
        self._cond = threading.Condition()
        self._queue: deque[Job[P, R]] = deque()
        self._running: Job[P, R] | None = None
        self._max_queue = 0
        self.max_queue = max_queue
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._submitted = self._rejected = self._completed = self._failed = 0
        self._canceled_in_queue = 0

    @property
    def max_queue(self) -> int:
        return self._max_queue

    @max_queue.setter
    def max_queue(self, value: int) -> None:
        if value < 0:
            raise ValueError(f"max_queue must be >= 0, got {value}")
        with self._cond:
            self._max_queue = value

    def start(self) -> None:
        with self._cond:
            self._stopping = False
            if self._thread is not None:  # still running (a stop that timed out): reuse it
                return
            self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
            self._thread.start()

    def submit(self, payload: P, *, timeout_s: float, policy: BusyPolicy,
               arrived_at: float | None = None) -> Job[P, R] | None:
        """Queue a job (its deadline `timeout_s` after `arrived_at`, default now); None when the
        worker is busy (per `policy`) or stopped."""
        job: Job[P, R] = Job(payload, timeout_s, arrived_at)
        with self._cond:
            # Jobs accepted and not finished: the running one (or the next, not yet picked up)
            # plus those waiting behind it.
            pending = len(self._queue) + (self._running is not None)
            capacity = 1 + (self._max_queue if policy is BusyPolicy.QUEUE else 0)
            if self._stopping or self._thread is None or pending >= capacity:
                self._rejected += 1
                return None
            self._submitted += 1
            job.feedback.push(FeedbackEvent(Stage.QUEUED, ""))
            self._queue.append(job)
            self._cond.notify_all()
        return job

    def cancel_all(self) -> int:
        """Cancel queued jobs and stop the running one; returns how many were affected."""
        with self._cond:
            jobs = list(self._queue)
            self._queue.clear()
            self._canceled_in_queue += len(jobs)
            if self._running is not None:
                jobs.append(self._running)
        for job in jobs:
            job.cancel()
        return len(jobs)

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no job runs or waits; False on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._running is not None or self._queue:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def stop(self, timeout_s: float = 10.0) -> bool:
        """Cancel everything and end the thread; False if it did not end in time."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self.cancel_all()
        with self._cond:
            thread = self._thread
        if thread is None:
            return True
        thread.join(timeout_s)
        return not thread.is_alive()

    @property
    def running(self) -> Job[P, R] | None:
        with self._cond:
            return self._running

    @property
    def stats(self) -> WorkerStats:
        with self._cond:
            return WorkerStats(
                self._submitted,
                self._rejected,
                self._completed,
                self._failed,
                self._canceled_in_queue,
                len(self._queue),
                self._running is not None,
            )

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if self._stopping and not self._queue:
                    self._thread = None
                    self._cond.notify_all()
                    return
                job = self._queue.popleft()
                self._running = job
            try:
                if job.start():
                    self._run(job)
            finally:
                with self._cond:
                    self._running = None
                    self._cond.notify_all()

    def _run(self, job: Job[P, R]) -> None:
        try:
            result = self._handler(job)
        except BaseException as exc:  # noqa: BLE001 - the thread must outlive a failing handler
            with self._cond:
                self._failed += 1
            job.future.set_exception(exc)
            return
        with self._cond:
            self._completed += 1
        job.future.set_result(result)
