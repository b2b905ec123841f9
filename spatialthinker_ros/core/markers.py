"""RViz markers of a scene graph (visualization_msgs/MarkerArray) through a message factory, for
the live node and replay alike (no rclpy). See `markers_msg`."""

from __future__ import annotations

import colorsys
import math
import threading
import zlib
from collections.abc import Sequence
from typing import Any

from .depth import CameraIntrinsics
from .fields import FrameHeader, MessageFactory, duration_msg, finite, header_msg
from .scene import SceneGraph

# visualization_msgs/Marker constants (pinned to the generated message by a test).
MARKER_ARROW = 0
MARKER_CUBE = 1
MARKER_TEXT_VIEW_FACING = 9
MARKER_ADD = 0
MARKER_DELETE = 2
MARKER_DELETEALL = 3

NAMESPACE_BOXES = "objects"
NAMESPACE_LABELS = "labels"
NAMESPACE_RELATIONS = "relations"
NOMINAL_HFOV_RAD = math.radians(60.0)
MIN_EXTENT_M = 0.02  # a box collapsed to a line still shows up
MARKER_LIFETIME_S = 30.0
LABEL_DEPTH_M = 2.0  # where labels of objects without depth are placed along their ray
TEXT_HEIGHT_M = 0.06


def label_rgb(label: str) -> tuple[float, float, float]:
    """A stable, saturated colour per object class (same label -> same colour in every frame)."""
    hue = (zlib.crc32(label.encode("utf-8", "replace")) % 360) / 360.0
    return colorsys.hsv_to_rgb(hue, 0.85, 0.95)


def nominal_intrinsics(width: int, height: int) -> CameraIntrinsics:
    """A 60 degree horizontal field of view: where labels go when no CameraInfo is known."""
    f = (width / 2.0) / math.tan(NOMINAL_HFOV_RAD / 2.0) if width else 1.0
    return CameraIntrinsics(fx=f, fy=f, cx=width / 2.0, cy=height / 2.0)


class MarkerSource:
    """One camera's markers on a topic several cameras share: its namespaces are `<name>/objects`
    etc., and each of its arrays replaces exactly its previous one (same namespace and id: the
    marker is modified in place; ids it no longer uses: DELETE). A DELETEALL cannot do this: RViz
    applies it to every namespace of the display, so it would clear the other cameras' markers."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._published: dict[str, int] = {}  # namespace -> ids 0 .. n-1 of the last array

    def namespace(self, base: str) -> str:
        return f"{self.name}/{base}"

    def replace(self, counts: dict[str, int]) -> dict[str, int]:
        """Record the ids of the array being published; returns the previous array's."""
        with self._lock:
            previous, self._published = self._published, dict(counts)
        return previous


class _Markers:
    """Collects markers sharing one header and lifetime, numbering ids per namespace (prefixed
    with the source's name when there is one)."""

    def __init__(self, make: MessageFactory, header: FrameHeader, lifetime_s: float,
                 source: MarkerSource | None) -> None:
        self.make = make
        self.header = header
        self.lifetime = lifetime_s
        self.source = source
        self.markers: list[Any] = []
        self.next_id: dict[str, int] = {}

    def control(self, action: int, **which: Any) -> Any:
        """A marker with only an action (DELETEALL; DELETE with its ns and id)."""
        return self.make("visualization_msgs/msg/Marker", header=header_msg(self.make, self.header),
                         action=action, pose=self.pose((0.0, 0.0, 0.0)), **which)

    def color(self, rgb: tuple[float, float, float], alpha: float) -> Any:
        return self.make("std_msgs/msg/ColorRGBA", r=rgb[0], g=rgb[1], b=rgb[2], a=alpha)

    def point(self, x: float, y: float, z: float) -> Any:
        return self.make("geometry_msgs/msg/Point", x=x, y=y, z=z)

    def pose(self, position: tuple[float, float, float]) -> Any:
        # Every field given: rclpy fills Quaternion.w with the .msg default 1, rosbags with 0.
        m = self.make
        return m("geometry_msgs/msg/Pose", position=self.point(*position),
                 orientation=m("geometry_msgs/msg/Quaternion", x=0.0, y=0.0, z=0.0, w=1.0))

    def add(self, ns: str, marker_type: int, position: tuple[float, float, float],
            scale: tuple[float, float, float], color: Any, text: str = "",
            points: Sequence[tuple[float, float, float]] = (), frame_id: str = "") -> None:
        """A marker in the header's frame, or in `frame_id` (the positions' frame)."""
        m = self.make
        if not finite((*position, *scale, *(c for p in points for c in p))):
            return  # RViz refuses the marker (absurd intrinsics, e.g. fx 1e-300, give inf sizes)
        if self.source is not None:
            ns = self.source.namespace(ns)
        marker_id = self.next_id.get(ns, 0)
        self.next_id[ns] = marker_id + 1
        pose = self.pose(position)
        self.markers.append(m(
            "visualization_msgs/msg/Marker", ns=ns,
            header=header_msg(m, FrameHeader(self.header.sec, self.header.nanosec,
                                             frame_id or self.header.frame_id)),
            id=marker_id, type=marker_type, action=MARKER_ADD, pose=pose,
            scale=m("geometry_msgs/msg/Vector3", x=scale[0], y=scale[1], z=scale[2]),
            color=color, lifetime=duration_msg(m, self.lifetime), text=text,
            points=[self.point(*p) for p in points],
        ))

    def array(self) -> Any:
        """The MarkerArray: first what clears the previous array (a DELETEALL, or with a source
        a DELETE per id of its previous array not reused), then the markers."""
        if self.source is None:
            clear = [self.control(MARKER_DELETEALL)]
        else:
            previous = self.source.replace(self.next_id)
            clear = [self.control(MARKER_DELETE, ns=ns, id=marker_id)
                     for ns, count in previous.items()
                     for marker_id in range(self.next_id.get(ns, 0), count)]
        return self.make("visualization_msgs/msg/MarkerArray", markers=clear + self.markers)


def markers_msg(
    make: MessageFactory,
    graph: SceneGraph,
    header: FrameHeader,
    intrinsics: CameraIntrinsics | None = None,
    *,
    lifetime_s: float = MARKER_LIFETIME_S,
    source: MarkerSource | None = None,
) -> Any:
    """RViz MarkerArray: a DELETEALL (the previous graph's objects vanish; with a `source`,
    DELETEs of its own previous markers only and namespaces under its name: see MarkerSource);
    in the positions' frame (the graph's positions_frame_id, else the header's camera optical
    frame: x right, y down, z ahead), per object with a 3D position a translucent CUBE of its
    size (without one: sized from its box at that depth in the camera frame, 0.1 m in a target
    frame) and a text label above it (-y in the optical frame, +z in a target frame, REP 103);
    per relation between two placed objects an ARROW subject -> object and the predicate at its
    middle; in the header's frame, per object with a box but no position a label on the ray
    through the box centre at LABEL_DEPTH_M. `intrinsics` (of an image of the graph's size)
    place the rays; without them a nominal 60 degree field of view does."""
    k = intrinsics or nominal_intrinsics(graph.image_width, graph.image_height)
    out = _Markers(make, header, lifetime_s, source)
    text_scale = (0.0, 0.0, TEXT_HEIGHT_M)
    frame = graph.positions_frame_id  # "" = the header's (camera optical) frame
    positions: dict[str, tuple[float, float, float]] = {}
    for obj in graph.objects:
        rgb = label_rgb(obj.label)
        position = obj.position if obj.position is not None and finite(obj.position) else None
        if position is not None:
            x, y, z = (float(v) for v in position)
            positions[obj.id] = (x, y, z)
            scale = (0.1, 0.1, 0.1)
            if obj.size is not None and finite(obj.size):
                scale = tuple(max(float(s), MIN_EXTENT_M) for s in obj.size)  # type: ignore
            elif not frame and obj.box is not None and z > 0.0:
                size = (obj.box.width * z / k.fx, obj.box.height * z / k.fy)
                if finite(size):  # else the nominal size (a focal length of almost nothing)
                    width, height = (max(s, MIN_EXTENT_M) for s in size)
                    scale = (width, height, min(width, height))
            out.add(NAMESPACE_BOXES, MARKER_CUBE, (x, y, z), scale, out.color(rgb, 0.35),
                    frame_id=frame)
            above = ((x, y, z + scale[2] / 2.0 + TEXT_HEIGHT_M) if frame
                     else (x, y - scale[1] / 2.0 - TEXT_HEIGHT_M, z))
            out.add(NAMESPACE_LABELS, MARKER_TEXT_VIEW_FACING, above, text_scale,
                    out.color(rgb, 1.0), text=obj.id, frame_id=frame)
        elif obj.box is not None and finite(obj.box.as_list()):
            u, v = obj.box.center
            z = LABEL_DEPTH_M
            ray = ((u - k.cx) * z / k.fx, (v - k.cy) * z / k.fy, z)
            if finite(ray):
                out.add(NAMESPACE_LABELS, MARKER_TEXT_VIEW_FACING, ray, text_scale,
                        out.color(rgb, 1.0), text=f"{obj.id} (no depth)")
    white = (1.0, 1.0, 1.0)
    for rel in graph.relations:
        start, end = positions.get(rel.subject), positions.get(rel.object)
        if start is None or end is None:
            continue
        # shaft diameter, head diameter, head length
        out.add(NAMESPACE_RELATIONS, MARKER_ARROW, (0.0, 0.0, 0.0), (0.01, 0.02, 0.03),
                out.color(white, 0.9), points=[start, end], frame_id=frame)
        middle = tuple((a + b) / 2.0 for a, b in zip(start, end, strict=True))
        out.add(NAMESPACE_RELATIONS, MARKER_TEXT_VIEW_FACING, middle, text_scale,
                out.color(white, 0.9), text=rel.predicate, frame_id=frame)
    return out.array()
