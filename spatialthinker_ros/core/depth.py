"""3D object positions and sizes from an aligned depth image and the camera intrinsics, in the
camera frame or mapped by a `core.transforms.RigidTransform` into a target frame (no rclpy).

Messages are read by field name, so rclpy's and rosbags' `sensor_msgs/Image` and `CameraInfo`
both work. Bad input never raises here: an uncalibrated CameraInfo (K all zero), NaN or infinite
intrinsics, an undecodable depth image or too few valid depth pixels mean "no 3D position".
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .geometry import Size, map_box
from .images import DEFAULT_MAX_IMAGE_PIXELS, ImageConversionError, depth_to_meters
from .scene import Box, SceneGraph
from .text import one_line
from .transforms import RigidTransform, object_extents


@dataclass(frozen=True)
class CameraIntrinsics:
    """Pinhole intrinsics (sensor_msgs/CameraInfo K) of the image the boxes are in."""

    fx: float
    fy: float
    cx: float
    cy: float


def intrinsics_from_camera_info(info: Any) -> CameraIntrinsics | None:
    """The pinhole intrinsics of CameraInfo.k (row-major 3x3: fx 0 cx / 0 fy cy / 0 0 1), for an
    image of info.width x info.height. None when K is unset or unusable: not 9 numbers, zero or
    negative focal lengths (an uncalibrated camera sends all zeros), NaN or infinity."""
    try:
        k = [float(v) for v in info.k]
    except (TypeError, ValueError, AttributeError):
        return None
    if len(k) != 9:
        return None
    fx, cx, fy, cy = k[0], k[2], k[4], k[5]
    if not all(math.isfinite(v) for v in (fx, fy, cx, cy)) or fx <= 0.0 or fy <= 0.0:
        return None
    return CameraIntrinsics(fx=fx, fy=fy, cx=cx, cy=cy)


def intrinsics_for_size(info: Any, width: int, height: int) -> CameraIntrinsics | None:
    """CameraInfo's intrinsics scaled to an image of width x height (a resized stream, the depth
    image); None when K is unusable. CameraInfo width/height 0 means "the same size"."""
    intrinsics = intrinsics_from_camera_info(info)
    if intrinsics is None or width <= 0 or height <= 0:
        return None
    info_w, info_h = int(getattr(info, "width", 0) or 0), int(getattr(info, "height", 0) or 0)
    sx = width / info_w if info_w > 0 else 1.0
    sy = height / info_h if info_h > 0 else 1.0
    return CameraIntrinsics(
        fx=intrinsics.fx * sx, fy=intrinsics.fy * sy, cx=intrinsics.cx * sx, cy=intrinsics.cy * sy
    )


def lift_box_to_3d(
    box: Box, depth_m: np.ndarray, intrinsics: CameraIntrinsics, min_valid_fraction: float = 0.05
) -> tuple[float, float, float] | None:
    """Centre of the object in the camera optical frame (metres): median valid depth inside the
    box, back-projected at the box centre. `depth_m` is HxW metres, aligned to the image the box
    is in, NaN/<=0 where invalid. None when too few valid depth pixels lie in the box."""
    h, w = depth_m.shape[:2]
    x0, x1 = int(math.floor(max(box.x_min, 0))), int(math.ceil(min(box.x_max, w)))
    y0, y1 = int(math.floor(max(box.y_min, 0))), int(math.ceil(min(box.y_max, h)))
    if x1 <= x0 or y1 <= y0:
        return None
    patch = depth_m[y0:y1, x0:x1]
    valid = patch[np.isfinite(patch) & (patch > 0)]
    if valid.size == 0 or valid.size < min_valid_fraction * patch.size:
        return None
    z = float(np.median(valid))
    u, v = box.center
    position = ((u - intrinsics.cx) * z / intrinsics.fx, (v - intrinsics.cy) * z / intrinsics.fy, z)
    return position if all(math.isfinite(c) for c in position) else None


def _same_aspect(a: Size, b: Size, tolerance: float = 0.02) -> bool:
    """Two sizes of one picture, up to rounding (640 x 480 and 320 x 240, 1280 x 720 and
    424 x 240)."""
    return abs(a[0] * b[1] - b[0] * a[1]) <= tolerance * a[0] * b[1]


def _header_frame(msg: Any) -> str:
    frame = getattr(getattr(msg, "header", None), "frame_id", "")
    return frame if isinstance(frame, str) else ""


def _frame_problem(image_frame: str, depth: Any, info: Any) -> str:
    """Why depth or camera_info stamped with another frame_id cannot be used for an image of
    `image_frame`, or "" (a frame left empty is not judged)."""
    if not image_frame:
        return ""
    for what, msg in (("depth image", depth), ("camera_info", info)):
        frame = _header_frame(msg)
        if frame and frame != image_frame:
            return one_line(f"the {what} is in frame {frame!r}, the colour image in "
                            f"{image_frame!r}: not aligned to this image", 300)
    return ""


class AlignedDepth:
    """The depth frame aligned with one colour image, converted on first use.

    `image_size` is the colour image's (w, h): the boxes' frame. The depth image may have
    another size (boxes and intrinsics are scaled). `error` says why no position can be given
    ("" while none was needed or all is well).

    With `transform` (camera optical frame -> target frame, at the image's stamp) positions and
    sizes are in its target frame; `transform_error` (why the target frame's transform could not
    be had) means no positions at all: never positions in another frame than the graph says."""

    def __init__(
        self,
        depth: Any | None,
        camera_info: Any | None,
        image_size: Size,
        max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
        missing: str = "",
        image_frame_id: str = "",
        *,
        transform: RigidTransform | None = None,
        transform_error: str = "",
    ) -> None:
        """`missing`: why `depth` or `camera_info` is None, when the caller knows;
        `image_frame_id`: the colour image's header.frame_id (depth and camera_info stamped
        with another frame are another camera's, or depth not aligned to this image)."""
        self._frame_id = image_frame_id
        self.transform = transform
        self.transform_error = one_line(transform_error) if transform_error else ""
        self._depth = depth
        self._info = camera_info
        self._image_size = image_size
        self._max_pixels = max_pixels
        self._meters: np.ndarray | None = None
        self._intrinsics: CameraIntrinsics | None = None
        self.error = missing

    @property
    def available(self) -> bool:
        return self._depth is not None and self._info is not None

    @property
    def positions_frame_id(self) -> str:
        """The frame the positions are in: the transform's target frame, "" = the image's."""
        return self.transform.target_frame if self.transform is not None else ""

    def with_transform(self, transform: RigidTransform | str) -> AlignedDepth:
        """This depth frame placing its positions with `transform`, or, given a reason (str),
        placing none; the depth image is converted once for all of them."""
        self._prepare()
        other = copy.copy(self)
        if isinstance(transform, str):
            other.transform, other.transform_error = None, one_line(transform or "no transform")
        else:
            other.transform, other.transform_error = transform, ""
        return other

    def _prepare(self) -> bool:
        if self._meters is not None:
            return True
        if not self.available or self.error:
            return False
        d = self._depth
        self.error = _frame_problem(self._frame_id, d, self._info)
        if self.error:
            return False
        try:
            meters = depth_to_meters(
                d.encoding, d.width, d.height, d.step, d.data, bool(d.is_bigendian),
                self._max_pixels,
            )
        except ImageConversionError as exc:
            self.error = f"depth image: {exc}"
            return False
        # camera_info describes the colour image; the aligned depth frame may be scaled, but
        # only uniformly: another aspect ratio is another stream (a resolution switched
        # mid-stream, a CameraInfo or depth of another camera).
        depth_size = (meters.shape[1], meters.shape[0])
        info_size = (int(getattr(self._info, "width", 0) or 0),
                     int(getattr(self._info, "height", 0) or 0))
        for what, size in (("colour image", self._image_size), ("camera_info", info_size)):
            if size[0] > 0 and size[1] > 0 and not _same_aspect(size, depth_size):
                self.error = (f"the depth image ({depth_size[0]} x {depth_size[1]}) is not "
                              f"aligned with the {what} ({size[0]} x {size[1]}): another "
                              "aspect ratio")
                return False
        intrinsics = intrinsics_for_size(self._info, meters.shape[1], meters.shape[0])
        if intrinsics is None:
            self.error = "camera_info has no usable intrinsics (K unset, zero or not finite)"
            return False
        self._meters, self._intrinsics = meters, intrinsics
        return True

    def note(self, graph: SceneGraph) -> str:
        """Why objects of `graph` with a box got no 3D position, one line; "" when all have one."""
        missing = [obj.id for obj in graph.objects if obj.box is not None and obj.position is None]
        if not missing:
            return ""
        if self.transform_error:
            return one_line(f"no 3D positions: {self.transform_error}")
        if self.error:
            return one_line(f"no 3D positions: {self.error}")
        more = ", ..." if len(missing) > 5 else ""
        names = ", ".join(repr(name) for name in missing[:5]) + more
        return one_line(f"no 3D position for {names}: too few valid depth pixels in the box")

    def locate(self, graph: SceneGraph) -> SceneGraph:
        """`graph` with a 3D position (and a size where the depth points allow) on every object
        whose box has enough valid depth, in `positions_frame_id`."""
        frame = self.positions_frame_id
        if not graph.objects or self.transform_error or not self._prepare():
            # No position comes in another frame than the graph names.
            unplaced = tuple(replace(o, position=None, size=None) for o in graph.objects)
            return replace(graph, objects=unplaced, positions_frame_id=frame)
        assert self._meters is not None and self._intrinsics is not None
        depth_size = (self._meters.shape[1], self._meters.shape[0])
        objects = []
        for obj in graph.objects:
            position = size = None
            if obj.box is not None:
                box = map_box(obj.box, self._image_size, depth_size)
                position = lift_box_to_3d(box, self._meters, self._intrinsics)
                if position is not None:
                    extents, _ = object_extents(box, self._meters, self._intrinsics,
                                                self.transform)
                    size = extents.size if extents is not None else None
                    if self.transform is not None:
                        position = self.transform.apply_point(position)
            objects.append(replace(obj, position=position, size=size))
        return replace(graph, objects=tuple(objects), positions_frame_id=frame)
