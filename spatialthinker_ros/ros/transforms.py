"""target_frame: a tf2 Buffer fed from /tf and /tf_static on a helper node with its own executor
thread, and lookups at an image's stamp for the worker thread.

The listener is ours rather than tf2_ros.TransformListener so that hostile input stays bounded
and counted: transforms with frame ids longer than TF_MAX_FRAME_ID, non-finite numbers or a
quaternion tf2 would refuse are dropped (tf2 itself only logs them), at most TF_MAX_FRAMES distinct
frames are kept (tf2 never forgets a frame), and a dynamic transform stamped more than
TF_JUMP_BACK_S before the newest one (a bag looped, a simulator reset) clears the dynamic history,
as tf2_ros does on a clock jump. The subscriptions run on their own executor thread, so a /tf
flood never delays camera frames or requests; lookups poll the buffer (never an executor) and
wait at most transform_timeout_s. Without tf2_ros (a machine without ROS' geometry2) a node with
a target_frame still answers: positions are left out, and `resolve` says why, in one line.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile

from ..core.text import one_line
from ..core.transforms import (
    TF_CACHE_TIME_S,
    TF_JUMP_BACK_S,
    TF_MAX_FRAME_ID,
    TF_MAX_FRAMES,
    RigidTransform,
    TransformError,
)
from .spin_thread import SpinThread

# The limits are replay's too (core.transforms).
POLL_S = 0.005
TF_QOS = QoSProfile(depth=100, durability=DurabilityPolicy.VOLATILE,
                    history=HistoryPolicy.KEEP_LAST)
TF_STATIC_QOS = QoSProfile(depth=100, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                           history=HistoryPolicy.KEEP_LAST)
AUTHORITY = "spatialthinker_ros"


def tf2_missing() -> str | None:
    """Why tf2_ros cannot be used here, or None."""
    try:
        import tf2_msgs.msg  # noqa: F401
        import tf2_ros  # noqa: F401
    except ImportError as exc:
        return (f"tf2_ros is not installed ({one_line(exc, max_chars=120)}): install ROS 2's "
                "tf2_ros_py (rosdep) or build ../shared/vendor/geometry2 (scripts/setup.sh)")
    return None


@dataclass(frozen=True)
class TransformCounts:
    lookups_ok: int
    lookups_failed: int
    transforms_dropped: int  # refused on arrival (see the module doc)
    buffer_clears: int  # time jumped back
    last_error: str


class TargetFrame:
    """Transforms from camera frames to one target frame (see the module doc)."""

    def __init__(self, owner: LifecycleNode, target_frame: str) -> None:
        self.target_frame = target_frame
        self._logger = owner.get_logger()
        self._lock = threading.Lock()
        self._ok = self._failed = self._dropped = self._clears = 0
        self._last_error = ""
        self._frames: set[str] = set()
        self._newest_ns = 0
        self.unavailable = tf2_missing() or ""
        self._buffer: Any = None
        self._node: Any = None
        if self.unavailable:
            self._logger.error(f"target_frame {target_frame!r}: {self.unavailable}; answers come "
                               "without 3D positions")
            return
        import tf2_ros
        from rclpy.duration import Duration
        from tf2_msgs.msg import TFMessage

        self._buffer = tf2_ros.Buffer(cache_time=Duration(seconds=TF_CACHE_TIME_S))
        self._node = rclpy.create_node(
            f"{owner.get_name()}_tf_listener", namespace=owner.get_namespace(),
            context=owner.context, use_global_arguments=False, start_parameter_services=False)
        self._node.create_subscription(TFMessage, "/tf", self._on_tf(static=False), TF_QOS)
        self._node.create_subscription(TFMessage, "/tf_static", self._on_tf(static=True),
                                       TF_STATIC_QOS)
        self._executor = SingleThreadedExecutor(context=owner.context)
        self._executor.add_node(self._node)
        self._spin = SpinThread(self._executor, name="tf-listener", on_error=self._spin_failed)
        self._spin.start()

    # ------------------------------------------------------------------ listener thread

    def _spin_failed(self, exc: BaseException) -> None:  # callbacks are guarded: rclpy itself
        self._logger.error(f"tf listener stopped: {type(exc).__name__}: {exc}")

    def _on_tf(self, *, static: bool):
        def callback(msg: Any) -> None:
            for transform in msg.transforms:
                try:
                    self._add(transform, static)
                except Exception as exc:  # noqa: BLE001 - one bad transform never stops tf
                    self._drop(f"transform dropped: {type(exc).__name__}: {exc}")

        return callback

    def _drop(self, reason: str) -> None:
        with self._lock:
            self._dropped += 1
        self._logger.warning(one_line(reason), throttle_duration_sec=5.0)

    def _add(self, transform: Any, static: bool) -> None:
        parent, child = str(transform.header.frame_id), str(transform.child_frame_id)
        for frame in (parent, child):
            if not frame or len(frame) > TF_MAX_FRAME_ID:
                self._drop(f"transform dropped: frame id of {len(frame)} characters (1 to "
                           f"{TF_MAX_FRAME_ID} allowed)")
                return
        try:
            RigidTransform.from_msg(transform)  # tf2 only logs what it refuses: count it here
        except TransformError as exc:
            self._drop(f"transform {parent!r} <- {child!r} dropped: {exc}")
            return
        with self._lock:
            new = {parent, child} - self._frames
            if len(self._frames) + len(new) > TF_MAX_FRAMES:
                full = True
            else:
                full = False
                self._frames |= new
        if full:
            self._drop(f"transform dropped: more than {TF_MAX_FRAMES} frames")
            return
        if static:
            self._buffer.set_transform_static(transform, AUTHORITY)
            return
        stamp_ns = int(transform.header.stamp.sec) * 10**9 + int(transform.header.stamp.nanosec)
        with self._lock:
            jumped = stamp_ns < self._newest_ns - int(TF_JUMP_BACK_S * 1e9)
            if jumped:
                self._clears += 1
                self._newest_ns = stamp_ns
            else:
                self._newest_ns = max(self._newest_ns, stamp_ns)
        if jumped:
            self._logger.warning("tf time jumped back (a bag looped?): cleared the transforms "
                                 "kept", throttle_duration_sec=5.0)
            self._buffer.clear()
        self._buffer.set_transform(transform, AUTHORITY)

    # ------------------------------------------------------------------ worker thread

    def resolve(self, source_frame: str, sec: int, nanosec: int,
                timeout_s: float) -> RigidTransform | str:
        """target_frame <- source_frame at the stamp (tf2 interpolates), waiting at most
        `timeout_s` for it; or why there is none, one line. Never raises; call it off the
        executors (it sleeps)."""
        reason = self._lookup(source_frame, sec, nanosec, timeout_s)
        with self._lock:
            if isinstance(reason, str):
                self._failed += 1
                self._last_error = reason
            else:
                self._ok += 1
        return reason

    def _lookup(self, source_frame: str, sec: int, nanosec: int,
                timeout_s: float) -> RigidTransform | str:
        target = self.target_frame
        where = f"no transform to target_frame {one_line(target, max_chars=80)!r}"
        if self.unavailable:
            return f"{where}: {self.unavailable}"
        if not source_frame:
            return f"{where}: the image's header has no frame_id"
        if len(source_frame) > TF_MAX_FRAME_ID:
            return f"{where}: the image's frame_id has {len(source_frame)} characters"
        from rclpy.time import Time

        stamp = Time(seconds=sec, nanoseconds=nanosec)
        deadline = time.monotonic() + max(timeout_s, 0.0)
        try:
            while not self._buffer.can_transform_core(target, source_frame, stamp)[0]:
                if time.monotonic() >= deadline:
                    break
                time.sleep(POLL_S)
            found = self._buffer.lookup_transform_core(target, source_frame, stamp)
            return RigidTransform.from_msg(found)
        except Exception as exc:  # noqa: BLE001 - tf2's Lookup/Extrapolation/Connectivity...
            frame = one_line(source_frame, max_chars=80)
            why = one_line(str(exc) or type(exc).__name__, max_chars=200)
            return (f"{where} from {frame!r} at the image's stamp {sec}.{nanosec:09d} within "
                    f"transform_timeout_s = {timeout_s:g} s ({type(exc).__name__}: {why})")

    @property
    def counts(self) -> TransformCounts:
        with self._lock:
            return TransformCounts(self._ok, self._failed, self._dropped, self._clears,
                                   self._last_error)

    def close(self) -> None:
        if self._node is None:
            return
        self._spin.close([self._node], 5.0)  # the spin joined before the node is destroyed
        self._node = None
