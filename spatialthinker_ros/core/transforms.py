"""Rigid transforms between frames and 3D object extents from aligned depth (NumPy, no rclpy).

`RigidTransform` is one tf2 transform (geometry_msgs/TransformStamped's numbers): it maps a
point given in `source_frame` into `target_frame`, p' = R(q) p + t. It is built only from finite
numbers and a unit quaternion; a quaternion whose squared norm is within tf2's own tolerance of
1 (0.01, tf2 BufferCore) is normalised, any other is refused with the reason.

`object_extents` gives an object's 3D box from the aligned depth inside its 2D box, the way
yolo_ros does (`maximum_detection_threshold`): the valid depth pixels inside the box are
back-projected with the camera intrinsics (`core.depth`'s conventions: depth in metres, NaN or
<= 0 invalid, the box in the depth image's pixels, K's cx/cy at pixel centres), the points
farther than `max_distance_m` in depth from the median are dropped (background, floor), and the
centre and size are those of the axis-aligned box around the kept points, each pixel counted
with its footprint (u +- 0.5, v +- 0.5 at its depth). With a transform the points are mapped
first: the size is along the axes of the target frame (the box a planner in `base_link` sees:
its z size is the object's height), not the camera-frame box rotated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .scene import Box

if TYPE_CHECKING:  # core.depth imports this module
    from .depth import CameraIntrinsics

# tf2 BufferCore refuses a transform whose |q|^2 differs from 1 by this much or more.
QUATERNION_TOLERANCE = 10e-3
# yolo_ros's maximum_detection_threshold default: points within 0.3 m of the median depth.
DEFAULT_MAX_DISTANCE_M = 0.3
MIN_POINTS = 4  # and at least MIN_VALID_FRACTION of the box's pixels (as lift_box_to_3d)
MIN_VALID_FRACTION = 0.05

Vector3 = tuple[float, float, float]
Quaternion = tuple[float, float, float, float]  # x, y, z, w (geometry_msgs order)


class TransformError(ValueError):
    """A transform that cannot be used; the message says why, in one line."""


@dataclass(frozen=True)
class RigidTransform:
    """p_target = R(rotation) p_source + translation. Build with `from_xyzq` (checked)."""

    translation: Vector3
    rotation: Quaternion  # unit, x y z w
    target_frame: str = ""
    source_frame: str = ""
    stamp_ns: int = 0

    @classmethod
    def from_xyzq(
        cls,
        x: float, y: float, z: float,
        qx: float, qy: float, qz: float, qw: float,
        target_frame: str = "",
        source_frame: str = "",
        stamp_ns: int = 0,
    ) -> RigidTransform:
        """The transform of these numbers; `TransformError` for a non-finite number or a
        quaternion too far from unit length (one within tolerance is normalised)."""
        try:
            t = tuple(float(v) for v in (x, y, z))
            q = tuple(float(v) for v in (qx, qy, qz, qw))
        except (TypeError, ValueError) as exc:
            raise TransformError(f"transform numbers are not numbers: {exc}") from None
        if not all(math.isfinite(v) for v in t):
            raise TransformError(f"translation is not finite: {_show(t)}")
        if not all(math.isfinite(v) for v in q):
            raise TransformError(f"rotation is not finite: {_show(q)}")
        norm2 = math.fsum(v * v for v in q)
        if not abs(norm2 - 1.0) < QUATERNION_TOLERANCE:
            raise TransformError(
                f"rotation is not a unit quaternion (|q| = {math.sqrt(norm2):.6g}): {_show(q)}"
            )
        n = math.sqrt(norm2)
        unit = (q[0] / n, q[1] / n, q[2] / n, q[3] / n)
        return cls((t[0], t[1], t[2]), unit, str(target_frame), str(source_frame),
                   int(stamp_ns))

    @classmethod
    def from_msg(cls, msg: Any) -> RigidTransform:
        """From a geometry_msgs/TransformStamped (rclpy's or rosbags', read by field name):
        header.frame_id is the target, child_frame_id the source; `TransformError` if unusable."""
        try:
            t, q = msg.transform.translation, msg.transform.rotation
            stamp = msg.header.stamp
            stamp_ns = int(stamp.sec) * 10**9 + int(stamp.nanosec)
            target, source = str(msg.header.frame_id), str(msg.child_frame_id)
        except (AttributeError, TypeError, ValueError) as exc:
            raise TransformError(f"not a TransformStamped: {exc}") from None
        return cls.from_xyzq(t.x, t.y, t.z, q.x, q.y, q.z, q.w, target, source, stamp_ns)

    @classmethod
    def identity(cls, frame: str = "", stamp_ns: int = 0) -> RigidTransform:
        return cls((0.0, 0.0, 0.0), (0.0, 0.0, 0.0, 1.0), frame, frame, stamp_ns)

    def matrix(self) -> np.ndarray:
        """The 3x3 rotation matrix R."""
        x, y, z, w = self.rotation
        return np.array([
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ])

    def apply(self, points: np.ndarray) -> np.ndarray:
        """R p + t for an (N, 3) array of points (or one point of shape (3,))."""
        p = np.asarray(points, dtype=np.float64)
        return p @ self.matrix().T + np.asarray(self.translation)

    def apply_point(self, point: Vector3) -> Vector3:
        x, y, z = (float(v) for v in self.apply(np.asarray(point, dtype=np.float64)))
        return (x, y, z)


def _show(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in values) + ")"


@dataclass(frozen=True)
class Extents:
    """An object's axis-aligned 3D box (metres) in the frame the points were mapped to."""

    center: Vector3
    size: Vector3
    points: int  # depth pixels kept


def box_points(
    box: Box,
    depth_m: np.ndarray,
    intrinsics: CameraIntrinsics,
    max_distance_m: float = DEFAULT_MAX_DISTANCE_M,
) -> tuple[np.ndarray | None, str]:
    """The camera-frame 3D points (N, 3) of the valid depth pixels inside `box` within
    `max_distance_m` of their median depth, each pixel as the two opposite corners of its
    footprint (2N rows); (None, why) when too few."""
    h, w = depth_m.shape[:2]
    x0, x1 = int(math.floor(max(box.x_min, 0))), int(math.ceil(min(box.x_max, w)))
    y0, y1 = int(math.floor(max(box.y_min, 0))), int(math.ceil(min(box.y_max, h)))
    if x1 <= x0 or y1 <= y0:
        return None, "the box is empty inside the depth image"
    patch = depth_m[y0:y1, x0:x1]
    valid = np.isfinite(patch) & (patch > 0)
    count = int(np.count_nonzero(valid))
    if count < max(MIN_POINTS, MIN_VALID_FRACTION * patch.size):
        return None, f"too few valid depth pixels in the box ({count} of {patch.size})"
    z_valid = patch[valid]
    median = float(np.median(z_valid))
    keep = valid & (np.abs(np.where(valid, patch, median) - median) <= max_distance_m)
    vs, us = np.nonzero(keep)
    z = patch[vs, us].astype(np.float64)
    if z.size < MIN_POINTS:
        return None, f"too few depth pixels near the median depth ({z.size})"
    u = us.astype(np.float64) + x0
    v = vs.astype(np.float64) + y0
    fx, fy, cx, cy = intrinsics.fx, intrinsics.fy, intrinsics.cx, intrinsics.cy
    lo = np.stack(((u - 0.5 - cx) * z / fx, (v - 0.5 - cy) * z / fy, z), axis=1)
    hi = np.stack(((u + 0.5 - cx) * z / fx, (v + 0.5 - cy) * z / fy, z), axis=1)
    return np.concatenate((lo, hi)), ""


def aabb(points: np.ndarray) -> tuple[Vector3, Vector3] | None:
    """(centre, size) of the axis-aligned box around `points`; None when not finite."""
    low, high = points.min(axis=0), points.max(axis=0)
    centre, size = (low + high) / 2.0, high - low
    if not (np.all(np.isfinite(centre)) and np.all(np.isfinite(size))):
        return None
    c, s = (float(v) for v in centre), (float(v) for v in size)
    return tuple(c), tuple(s)  # type: ignore[return-value]


def object_extents(
    box: Box,
    depth_m: np.ndarray,
    intrinsics: CameraIntrinsics,
    transform: RigidTransform | None = None,
    max_distance_m: float = DEFAULT_MAX_DISTANCE_M,
) -> tuple[Extents | None, str]:
    """The object's 3D box from the depth inside `box` (the depth image's pixels), in the camera
    frame or, with `transform`, in its target frame (size along the target frame's axes);
    (None, why) when too few depth points."""
    points, why = box_points(box, depth_m, intrinsics, max_distance_m)
    if points is None:
        return None, why
    if transform is not None:
        points = transform.apply(points)
    box3d = aabb(points)
    if box3d is None:
        return None, "the depth points are not finite"
    return Extents(box3d[0], box3d[1], points.shape[0] // 2), ""
