"""RViz views of a SceneGraph message: a MarkerArray, and a vision_msgs mirror where available.

Markers live in the graph's header frame (the camera optical frame: x right, y down, z forward):
- objects with a 3D position: a translucent CUBE sized from the box extent at that depth, and a
  TEXT_VIEW_FACING label above it; relations between two such objects: an ARROW subject -> object
  with the predicate as text at its middle;
- objects with a box but no position: a text label on the ray through the box centre at
  `label_depth_m` (no depth to place it better);
- the first marker is a DELETEALL, so objects of the previous graph vanish.
Pixel -> ray needs intrinsics: from `camera_info` when given, else a nominal 60 degree horizontal
field of view (labels only land roughly right then; positions always come from the graph).
"""

from __future__ import annotations

import colorsys
import math
import zlib
from typing import Any

from builtin_interfaces.msg import Duration
from geometry_msgs.msg import Point, Pose, Quaternion, Vector3
from sensor_msgs.msg import CameraInfo
from std_msgs.msg import ColorRGBA
from visualization_msgs.msg import Marker, MarkerArray

from spatialthinker_ros.msg import SceneGraph as SceneGraphMsg
from spatialthinker_ros.msg import SceneObject as SceneObjectMsg

from ..core.geometry import CameraIntrinsics
from .conversions import copy_header, intrinsics_for_size, seconds_to_duration

NAMESPACE_BOXES = "objects"
NAMESPACE_LABELS = "labels"
NAMESPACE_RELATIONS = "relations"
NOMINAL_HFOV_RAD = math.radians(60.0)
MIN_EXTENT_M = 0.02  # a box collapsed to a line still shows up


def label_color(label: str, alpha: float = 1.0) -> ColorRGBA:
    """A stable, saturated colour per object class (same label -> same colour in every frame)."""
    hue = (zlib.crc32(label.encode("utf-8")) % 360) / 360.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return ColorRGBA(r=r, g=g, b=b, a=alpha)


def _nominal_intrinsics(width: int, height: int) -> CameraIntrinsics:
    f = (width / 2.0) / math.tan(NOMINAL_HFOV_RAD / 2.0) if width else 1.0
    return CameraIntrinsics(fx=f, fy=f, cx=width / 2.0, cy=height / 2.0)


def _pose(x: float, y: float, z: float) -> Pose:
    return Pose(position=Point(x=x, y=y, z=z), orientation=Quaternion(w=1.0))


def _box_extent_m(obj: SceneObjectMsg, k: CameraIntrinsics, depth: float) -> tuple[float, float]:
    width = max((obj.x_max - obj.x_min) * depth / k.fx, MIN_EXTENT_M)
    height = max((obj.y_max - obj.y_min) * depth / k.fy, MIN_EXTENT_M)
    return width, height


class _Builder:
    """Collects markers sharing one header and lifetime, numbering ids per namespace."""

    def __init__(self, graph: SceneGraphMsg, lifetime: Duration):
        self.graph = graph
        self.lifetime = lifetime
        self.array = MarkerArray()
        self._next_id: dict[str, int] = {}
        clear = Marker(header=copy_header(graph.header), action=Marker.DELETEALL)
        self.array.markers.append(clear)

    def add(self, ns: str, marker_type: int, pose: Pose, scale: Vector3, color: ColorRGBA,
            text: str = "", points: list[Point] | None = None) -> Marker:
        marker_id = self._next_id.get(ns, 0)
        self._next_id[ns] = marker_id + 1
        marker = Marker(
            header=copy_header(self.graph.header), ns=ns, id=marker_id, type=marker_type,
            action=Marker.ADD, pose=pose, scale=scale, color=color, lifetime=self.lifetime,
            text=text, points=points or [],
        )
        self.array.markers.append(marker)
        return marker


def scene_graph_markers(
    graph: SceneGraphMsg,
    camera_info: CameraInfo | None = None,
    *,
    lifetime_s: float = 30.0,
    label_depth_m: float = 2.0,
    text_height_m: float = 0.06,
) -> MarkerArray:
    """MarkerArray for RViz (see module doc). `camera_info` may describe an image of another size
    than the graph's (intrinsics are scaled). `lifetime_s` <= 0 keeps markers until replaced."""
    intrinsics = None
    if camera_info is not None:
        intrinsics = intrinsics_for_size(camera_info, graph.image_width, graph.image_height)
    k = intrinsics or _nominal_intrinsics(graph.image_width, graph.image_height)
    builder = _Builder(graph, seconds_to_duration(lifetime_s))
    text_scale = Vector3(z=text_height_m)
    positions: dict[str, Point] = {}

    for obj in graph.objects:
        color = label_color(obj.label)
        if obj.has_position:
            p = obj.position
            positions[obj.id] = p
            if obj.has_box and p.z > 0.0:
                width, height = _box_extent_m(obj, k, p.z)
            else:
                width = height = 0.1
            depth = min(width, height)
            box_color = label_color(obj.label, alpha=0.35)
            builder.add(NAMESPACE_BOXES, Marker.CUBE, _pose(p.x, p.y, p.z),
                        Vector3(x=width, y=height, z=depth), box_color)
            label_pose = _pose(p.x, p.y - height / 2.0 - text_height_m, p.z)
            builder.add(NAMESPACE_LABELS, Marker.TEXT_VIEW_FACING, label_pose, text_scale, color,
                        text=obj.id)
        elif obj.has_box:
            u = (obj.x_min + obj.x_max) / 2.0
            v = (obj.y_min + obj.y_max) / 2.0
            z = label_depth_m
            pose = _pose((u - k.cx) * z / k.fx, (v - k.cy) * z / k.fy, z)
            builder.add(NAMESPACE_LABELS, Marker.TEXT_VIEW_FACING, pose, text_scale, color,
                        text=f"{obj.id} (no depth)")

    white = ColorRGBA(r=1.0, g=1.0, b=1.0, a=0.9)
    for rel in graph.relations:
        start, end = positions.get(rel.subject_id), positions.get(rel.object_id)
        if start is None or end is None:
            continue
        arrow_scale = Vector3(x=0.01, y=0.02, z=0.03)  # shaft diameter, head diameter, head length
        builder.add(NAMESPACE_RELATIONS, Marker.ARROW, _pose(0.0, 0.0, 0.0), arrow_scale, white,
                    points=[Point(x=start.x, y=start.y, z=start.z),
                            Point(x=end.x, y=end.y, z=end.z)])
        middle = _pose((start.x + end.x) / 2, (start.y + end.y) / 2, (start.z + end.z) / 2)
        builder.add(NAMESPACE_RELATIONS, Marker.TEXT_VIEW_FACING, middle, text_scale, white,
                    text=rel.predicate)
    return builder.array


# ------------------------------------------------------------------ vision_msgs mirror
# vision_msgs is not installable from PyPI here, so this part is untested in this repository.
# It follows the vision_msgs 4.x API (Humble, Jazzy): BoundingBox2D.center is a
# vision_msgs/Pose2D (position.x/y, theta); older releases used geometry_msgs/Pose2D (x, y).


def detection_message_type() -> type | None:
    """vision_msgs/Detection2DArray when vision_msgs is importable, else None."""
    try:
        from vision_msgs.msg import Detection2DArray
    except ImportError:
        return None
    return Detection2DArray


def detections_mirror(graph: SceneGraphMsg) -> Any | None:
    """The graph's boxes as a vision_msgs/Detection2DArray (None without vision_msgs).

    One Detection2D per object with a box: id = object id, class_id = label; the model reports
    no confidence, so score is 1.0. Objects without a box are left out.
    """
    if detection_message_type() is None:
        return None
    from vision_msgs.msg import (
        Detection2D,
        Detection2DArray,
        ObjectHypothesisWithPose,
    )

    out = Detection2DArray(header=copy_header(graph.header))
    for obj in graph.objects:
        if not obj.has_box:
            continue
        det = Detection2D(header=copy_header(graph.header))
        det.id = obj.id
        bbox = det.bbox
        center = bbox.center
        cx, cy = (obj.x_min + obj.x_max) / 2.0, (obj.y_min + obj.y_max) / 2.0
        if hasattr(center, "position"):
            center.position.x, center.position.y = cx, cy
        else:
            center.x, center.y = cx, cy
        bbox.size_x = float(obj.x_max - obj.x_min)
        bbox.size_y = float(obj.y_max - obj.y_min)
        hypothesis = ObjectHypothesisWithPose()
        if hasattr(hypothesis, "hypothesis"):
            hypothesis.hypothesis.class_id = obj.label
            hypothesis.hypothesis.score = 1.0
        else:
            hypothesis.id = obj.label
            hypothesis.score = 1.0
        det.results.append(hypothesis)
        out.detections.append(det)
    return out
