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
with its footprint (the square u +- 0.5, v +- 0.5 at its depth). With a transform the points
are mapped first: the size is along the axes of the target frame (the box a planner in
`base_link` sees: its z size is the object's height), not the camera-frame box rotated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from .scene import Box


class Pinhole(Protocol):
    """Pinhole intrinsics (core.depth.CameraIntrinsics; core.depth imports this module)."""

    fx: float
    fy: float
    cx: float
    cy: float

# tf2 BufferCore refuses a transform whose |q|^2 differs from 1 by this much or more.
QUATERNION_TOLERANCE = 10e-3
# yolo_ros's maximum_detection_threshold default: points within 0.3 m of the median depth.
DEFAULT_MAX_DISTANCE_M = 0.3
MIN_POINTS = 4  # and at least MIN_VALID_FRACTION of the box's pixels (as lift_box_to_3d)
MIN_VALID_FRACTION = 0.05
# Larger boxes are sampled every `step` pixels in both directions (each sample standing for its
# step x step cell), so the cost per object is bounded whatever the resolution.
MAX_SAMPLES = 16_384

# Untrusted /tf (the node's listener and replay alike): what is kept, what is dropped.
TF_CACHE_TIME_S = 10.0  # history per frame (tf2's default): memory stays bounded under a flood
TF_MAX_FRAMES = 1000  # distinct frame ids kept; transforms naming more are dropped
TF_MAX_FRAME_ID = 256  # characters of a frame id; longer ones are dropped
TF_JUMP_BACK_S = 3.0  # a stamp this far before the newest: time jumped back (a looped bag)

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
    points: int  # depth pixels kept (samples x step^2 for a sampled box)


def object_extents(
    box: Box,
    depth_m: np.ndarray,
    intrinsics: Pinhole,
    transform: RigidTransform | None = None,
    max_distance_m: float = DEFAULT_MAX_DISTANCE_M,
) -> tuple[Extents | None, str]:
    """The object's 3D box from the depth inside `box` (the depth image's pixels), in the camera
    frame or, with `transform`, in its target frame (size along the target frame's axes);
    (None, why) when too few depth points. A box over MAX_SAMPLES pixels is sampled every
    `step` pixels: its size is then exact to a cell (step pixels) at the edges.

    Exact for the pixel footprints, without building the points: the back-projected pixel
    (u, v) at depth z is z d(u, v) with d = ((u - cx) / fx, (v - cy) / fy, 1), so its target
    coordinate j is z (r_j . d) + t_j, linear in (u, v) over the pixel's square: its extreme is
    at a corner, the centre's value +- z h_j, h_j = (|r_j0| / fx + |r_j1| / fy) / 2."""
    h, w = depth_m.shape[:2]
    x0, x1 = int(math.floor(max(box.x_min, 0))), int(math.ceil(min(box.x_max, w)))
    y0, y1 = int(math.floor(max(box.y_min, 0))), int(math.ceil(min(box.y_max, h)))
    if x1 <= x0 or y1 <= y0:
        return None, "the box is empty inside the depth image"
    step = max(1, math.ceil(math.sqrt((x1 - x0) * (y1 - y0) / MAX_SAMPLES)))
    patch = depth_m[y0:y1:step, x0:x1:step]
    valid = np.isfinite(patch) & (patch > 0)  # NaN compares False, without a warning
    count = int(np.count_nonzero(valid))
    if count < max(MIN_POINTS, MIN_VALID_FRACTION * patch.size):
        return None, (f"too few valid depth pixels in the box ({count * step * step} of "
                      f"{(x1 - x0) * (y1 - y0)})")
    median = float(np.median(patch[valid]))
    keep = valid & (np.abs(patch - np.float32(median)) <= max_distance_m)
    kept = int(np.count_nonzero(keep))
    if kept < MIN_POINTS:
        return None, f"too few depth pixels near the median depth ({kept})"
    fx, fy, cx, cy = intrinsics.fx, intrinsics.fy, intrinsics.cx, intrinsics.cy
    middle = (step - 1) / 2.0  # a sample's cell: [u - 0.5, u + step - 0.5]
    du = (np.arange(x0, x1, step, dtype=np.float64) + middle - cx) / fx  # a row
    dv = ((np.arange(y0, y1, step, dtype=np.float64) + middle - cy) / fy)[:, None]  # a column
    z = patch.astype(np.float64, copy=False)
    if transform is None:
        rotation, translation = np.eye(3), np.zeros(3)
    else:
        rotation, translation = transform.matrix(), np.asarray(transform.translation)
    low, high = np.empty(3), np.empty(3)
    for j, (a, b, c) in enumerate(rotation):
        half = step / 2.0 * (abs(a) / fx + abs(b) / fy)
        # coordinate j (before t_j) of the pixel squares' far and near corners
        row, column = a * du, b * dv + c
        high[j] = np.where(keep, z * (row + (column + half)), -np.inf).max()
        low[j] = np.where(keep, z * (row + (column - half)), np.inf).min()
    low, high = low + translation, high + translation
    centre, size = (low + high) / 2.0, high - low
    if not (np.all(np.isfinite(centre)) and np.all(np.isfinite(size))):
        return None, "the depth points are not finite"
    cx_, cy_, cz_ = (float(v) for v in centre)
    sx, sy, sz = (float(v) for v in size)
    return Extents((cx_, cy_, cz_), (sx, sy, sz), kept * step * step), ""
