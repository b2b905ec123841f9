"""Newest-frame stores for camera callbacks (no rclpy): O(1) puts, frames dropped, never queued.

Camera callbacks must never wait on the model: they hand the message over untouched (no
conversion, no copy) and return. The inference worker takes the newest frame when it starts a
request. A frame replaced before anyone used it counts as dropped.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")
# How often a wait for a frame checks whether it should stop waiting.
WAIT_POLL_S = 0.05


@dataclass(frozen=True)
class Frame(Generic[T]):
    """One stored message. `stamp_s` is the message's header stamp (seconds; the receipt time
    when the header was left at zero), `received_s` the node clock when it arrived."""

    message: T
    stamp_s: float
    received_s: float
    seq: int  # 1, 2, ... in arrival order

    def age_s(self, now_s: float) -> float:
        return now_s - self.stamp_s

    def staleness_s(self, now_s: float) -> float:
        """The age staleness is judged by: by stamp or by receipt, whichever is older."""
        return max(self.age_s(now_s), now_s - self.received_s)

    def unusable_reason(self, now_s: float, max_age_s: float, max_future_s: float) -> str | None:
        """Why this frame may not be answered about now, or None. Too old by its stamp, stamped
        further ahead of the clock than `max_future_s` (clock skew: such a frame would never go
        stale by its stamp), or received longer than `max_age_s` ago (a stopped camera goes
        stale whatever its stamps say)."""
        ahead = self.stamp_s - now_s
        if ahead > max_future_s:
            return (f"newest image is stamped {ahead:.2f} s ahead of the node's clock "
                    f"(more than max_future_stamp_s = {max_future_s:g}: clock skew?)")
        age = self.staleness_s(now_s)
        if age > max_age_s:
            return f"newest image is {age:.2f} s old; max_image_age_s is {max_age_s:g}"
        return None


@dataclass(frozen=True)
class FrameStats:
    received: int
    dropped: int  # replaced before any request used them


class LatestFrame(Generic[T]):
    """The newest message of one topic; older ones are dropped on arrival of a newer one."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._frame: Frame[T] | None = None
        self._used = False
        self._received = 0
        self._dropped = 0

    def put(self, message: T, stamp_s: float, received_s: float | None = None) -> None:
        """Store `message` as the newest frame. O(1): keeps a reference, copies nothing."""
        received = time.monotonic() if received_s is None else received_s
        with self._cond:
            if self._frame is not None and not self._used:
                self._dropped += 1
            self._received += 1
            stamp = stamp_s if stamp_s > 0.0 else received
            self._frame = Frame(message, stamp, received, self._received)
            self._used = False
            self._cond.notify_all()

    def peek(self) -> Frame[T] | None:
        """The newest frame without marking it used."""
        with self._cond:
            return self._frame

    def take(self) -> Frame[T] | None:
        """The newest frame, marked used (it stays available to later requests)."""
        with self._cond:
            self._used = self._frame is not None
            return self._frame

    def mark_used(self, frame: Frame[T]) -> None:
        """Mark `frame` used (from `peek`), unless a newer one replaced it meanwhile."""
        with self._cond:
            if self._frame is frame:
                self._used = True

    def wait_for(self, stamp_s: float, timeout_s: float,
                 stop: Callable[[], bool] = lambda: False) -> Frame[T] | None:
        """The newest frame once one stamped at or after `stamp_s` is there (waits up to
        `timeout_s`); None on timeout or as soon as `stop()` is true (polled every
        WAIT_POLL_S: deactivation, an action cancel)."""
        deadline = time.monotonic() + max(timeout_s, 0.0)
        with self._cond:
            while True:
                frame = self._frame
                if frame is not None and frame.stamp_s >= stamp_s:
                    return frame
                left = deadline - time.monotonic()
                if left <= 0.0 or stop():
                    return None
                self._cond.wait(min(left, WAIT_POLL_S))

    def clear(self) -> None:
        with self._cond:
            self._frame = None
            self._used = False

    @property
    def stats(self) -> FrameStats:
        with self._cond:
            return FrameStats(self._received, self._dropped)


class StampedHistory(Generic[T]):
    """The last few messages of a topic, to pick the one whose stamp is closest to another
    stream's (aligned depth for an image). Bounded: the oldest falls out on each put."""

    def __init__(self, capacity: int = 8) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self._lock = threading.Lock()
        self._items: deque[tuple[float, T]] = deque(maxlen=capacity)

    def put(self, message: T, stamp_s: float) -> None:
        with self._lock:
            self._items.append((stamp_s, message))

    def closest(self, stamp_s: float, tolerance_s: float) -> T | None:
        """The message whose stamp is nearest to `stamp_s`, if within `tolerance_s`."""
        with self._lock:
            items = list(self._items)
        best: tuple[float, T] | None = None
        for item_stamp, message in items:
            gap = abs(item_stamp - stamp_s)
            if gap <= tolerance_s and (best is None or gap < best[0]):
                best = (gap, message)
        return None if best is None else best[1]

    def newest(self) -> T | None:
        with self._lock:
            return self._items[-1][1] if self._items else None

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)
