"""`replay --target-frame`: a bag's /tf and /tf_static in tf2's own BufferCore (tf2_py), looked
up at each image's stamp (tf2 interpolates), as the live node's tf2 Buffer does. No rclpy.

tf2_py's C extension imports the `rclpy` and `rclpy.time` modules when it loads (for
`get_latest_common_time`, which replay never calls); where rclpy is not loaded yet, placeholder
modules stand in during that import and are removed right after, so replay never loads rclpy.

Untrusted transforms never reach tf2's error paths: each is checked first
(`core.transforms.RigidTransform`: finite, unit quaternion within tf2's tolerance, normalised),
frame ids are checked (not empty, not the same, at most TF_MAX_FRAME_ID characters) and at most
TF_MAX_FRAMES distinct frames are kept; the rest are dropped with a note once per kind. Memory
stays bounded: tf2 keeps TF_CACHE_TIME_S of each frame's history. Time jumping back by more than
TF_JUMP_BACK_S (a looped bag) clears the buffer, static transforms kept, with a note.
"""

from __future__ import annotations

import importlib
import sys
import types
from collections import Counter
from collections.abc import Callable
from typing import Any

from .bag_io import ReplayError
from .core.text import one_line
from .core.transforms import (
    TF_CACHE_TIME_S,
    TF_JUMP_BACK_S,
    TF_MAX_FRAME_ID,
    TF_MAX_FRAMES,
    RigidTransform,
    TransformError,
)

TF_TOPIC, TF_STATIC_TOPIC = "/tf", "/tf_static"
TF_MESSAGE = "tf2_msgs/msg/TFMessage"
# A selected image is looked up this long (bag time) after it was recorded, so that the
# transforms after its stamp had time to arrive (tf2 interpolates between the two around it).
TF_WAIT_S = 0.5


def import_tf2_py() -> Any:
    """The tf2_py module, loaded without loading rclpy; `ReplayError` (one line) when absent."""
    loaded = sys.modules.get("tf2_py")
    if loaded is not None:
        return loaded
    stand_ins: list[str] = []
    if "rclpy" not in sys.modules:
        rclpy, rclpy_time = types.ModuleType("rclpy"), types.ModuleType("rclpy.time")
        rclpy.time = rclpy_time  # type: ignore[attr-defined]
        sys.modules.update({"rclpy": rclpy, "rclpy.time": rclpy_time})
        stand_ins = ["rclpy", "rclpy.time"]
    try:
        module = importlib.import_module("tf2_py")
        importlib.import_module("geometry_msgs.msg")
    except Exception as exc:  # noqa: BLE001 - ImportError, a missing shared library (OSError)
        raise ReplayError(one_line(
            "--target-frame needs tf2 for Python (tf2_py, ROS 2 geometry2; scripts/setup.sh "
            f"builds it from ../shared/vendor, a ROS install has it): {type(exc).__name__}: "
            f"{exc}", 400)) from None
    finally:
        for name in stand_ins:
            sys.modules.pop(name, None)
    return module


def _stamp_ns(stamp: Any) -> int:
    return int(stamp.sec) * 10**9 + int(stamp.nanosec)


class BagTransforms:
    """tf2's BufferCore fed from a bag's TFMessages; `lookup` at an image's stamp."""

    def __init__(self, target_frame: str, warn: Callable[[str], None],
                 cache_time_s: float = TF_CACHE_TIME_S) -> None:
        self._tf2 = import_tf2_py()
        from builtin_interfaces.msg import Duration, Time
        from geometry_msgs.msg import TransformStamped

        self._time, self._message = Time, TransformStamped
        self.target_frame = target_frame
        self._warn = warn
        self._cache_ns = int(cache_time_s * 1e9)
        self.buffer = self._tf2.BufferCore(Duration(sec=int(cache_time_s)))
        self._statics: dict[str, Any] = {}  # child frame -> its latest static transform
        self._latest_ns: dict[str, int] = {}  # child frame -> newest dynamic stamp inserted
        self._frames: set[str] = set()
        self._newest_ns: int | None = None
        self.dropped: Counter[str] = Counter()  # kind -> transforms dropped
        self.clears = 0

    # --- input ----------------------------------------------------------------------------
    def add(self, msg: Any, static: bool, bag_ns: int) -> None:
        """Every TransformStamped of one TFMessage (from /tf, or /tf_static when `static`)."""
        for ts in msg.transforms:
            self._add(ts, static, bag_ns)

    def _drop(self, kind: str, detail: str) -> None:
        if not self.dropped[kind]:
            self._warn(one_line(f"dropped a transform ({kind}; further ones are counted): "
                                f"{detail}", 400))
        self.dropped[kind] += 1

    def _add(self, ts: Any, static: bool, bag_ns: int) -> None:
        where = f"{'/tf_static' if static else '/tf'} at bag time {bag_ns / 1e9:.3f} s"
        try:
            parent = str(ts.header.frame_id).lstrip("/")
            child = str(ts.child_frame_id).lstrip("/")
            checked = RigidTransform.from_msg(ts)
        except TransformError as exc:
            self._drop("bad numbers", f"{where}: {exc}")
            return
        if not parent or not child or parent == child:
            self._drop("bad frame ids", f"{where}: frame_id {parent[:60]!r}, child_frame_id "
                                        f"{child[:60]!r}")
            return
        if max(len(parent), len(child)) > TF_MAX_FRAME_ID:
            self._drop("frame id too long", f"{where}: a frame id of "
                                            f"{max(len(parent), len(child))} characters (at "
                                            f"most {TF_MAX_FRAME_ID})")
            return
        new = {parent, child} - self._frames
        if len(self._frames) + len(new) > TF_MAX_FRAMES:
            self._drop("too many frames", f"{where}: more than {TF_MAX_FRAMES} frames")
            return
        stamp_ns = checked.stamp_ns
        if not static and not self._in_order(child, stamp_ns, where):
            return
        self._frames |= new
        fresh = self._copy(checked, parent, child)
        if static:
            self._statics[child] = fresh
            self.buffer.set_transform_static(fresh, "bag")
        else:
            self._latest_ns[child] = stamp_ns
            self._newest_ns = max(self._newest_ns or stamp_ns, stamp_ns)
            self.buffer.set_transform(fresh, "bag")

    def _in_order(self, child: str, stamp_ns: int, where: str) -> bool:
        """False for a transform tf2 would refuse (older than its cache, repeated); clears the
        buffer when time jumped back (a looped bag)."""
        if self._newest_ns is not None and stamp_ns < self._newest_ns - TF_JUMP_BACK_S * 1e9:
            self._warn(one_line(
                f"transform time jumped back by {(self._newest_ns - stamp_ns) / 1e9:.3f} s "
                f"({where}; a looped bag?): transform buffer cleared, static transforms kept"))
            self.clear()
            return True
        latest = self._latest_ns.get(child)
        if latest is not None and stamp_ns <= latest - self._cache_ns:
            self._drop("older than the cache", f"{where}: {child!r} at {stamp_ns / 1e9:.3f} s")
            return False
        if latest is not None and stamp_ns == latest:
            self.dropped["repeated"] += 1  # tf2 ignores it too (TF_REPEATED_DATA)
            return False
        return True

    def clear(self) -> None:
        self.clears += 1
        self.buffer.clear()
        self._latest_ns.clear()
        self._newest_ns = None
        for fresh in self._statics.values():
            self.buffer.set_transform_static(fresh, "bag")

    def _copy(self, t: RigidTransform, parent: str, child: str) -> Any:
        """A geometry_msgs TransformStamped of the checked numbers (tf2_py reads no other)."""
        msg = self._message()
        msg.header.stamp = self._time(sec=t.stamp_ns // 10**9, nanosec=t.stamp_ns % 10**9)
        msg.header.frame_id, msg.child_frame_id = parent, child
        tr, rot = msg.transform.translation, msg.transform.rotation
        tr.x, tr.y, tr.z = t.translation
        rot.x, rot.y, rot.z, rot.w = t.rotation
        return msg

    # --- lookup ---------------------------------------------------------------------------
    def lookup(self, source_frame: str, stamp_ns: int) -> RigidTransform | str:
        """source_frame -> target frame at `stamp_ns`, or why not (one line)."""
        source = str(source_frame).lstrip("/")
        at = f"at {stamp_ns / 1e9:.3f} s"
        if not source:
            return f"the image has no frame_id: no transform to {self.target_frame!r} {at}"
        if source == self.target_frame:
            return RigidTransform.identity(source, stamp_ns)
        if len(source) > TF_MAX_FRAME_ID:
            return (f"the image's frame_id has {len(source)} characters (at most "
                    f"{TF_MAX_FRAME_ID}): no transform to {self.target_frame!r} {at}")
        stamp = self._time(sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9)
        try:
            ts = self.buffer.lookup_transform_core(self.target_frame, source, stamp)
            return RigidTransform.from_msg(ts)
        except (self._tf2.TransformException, TransformError) as exc:
            return one_line(f"no transform {source!r} -> {self.target_frame!r} {at}: {exc}",
                            400)
