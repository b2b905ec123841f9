"""The contents of every output for one answer, built once for the live node and for replay.

A result (+ the source image's header, aligned depth, camera info) becomes a SceneGraph, a
SpatialAnswer, a MarkerArray, a vision_msgs Detection2DArray and an annotated debug image. The
messages are built through a `MessageFactory`, `make("pkg/msg/Type", **fields)`: the node's makes
rclpy messages (`ros.conversions.rclpy_message`), replay's makes rosbags messages
(`bag_types.BagMessages`). So a replayed bag holds exactly what the live node publishes: same
fields, same markers, same statuses. No rclpy here.

Every string field is made safe (`core.text.safe_text`) by the factories, the one place.
"""

from __future__ import annotations

import colorsys
import math
import threading
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .depth import AlignedDepth, CameraIntrinsics, intrinsics_for_size
from .prompt import PROMPT_VERSION
from .scene import SceneGraph, SceneObject
from .status import STATUS_OF_PARSE, AnswerStatus
from .types import Result
from .visualize import draw_scene_graph

MessageFactory = Callable[..., Any]  # make(msgtype: str, **fields) -> message

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
_FLOAT32_MAX = 3.4028234e38
_UINT32_MAX = 2**32 - 1
_INT32_MAX = 2**31 - 1


@dataclass(frozen=True)
class FrameHeader:
    """The source image's std_msgs/Header as plain values (read from rclpy or rosbags)."""

    sec: int = 0
    nanosec: int = 0
    frame_id: str = ""

    @classmethod
    def of(cls, header: Any) -> FrameHeader:
        if header is None:
            return cls()
        if isinstance(header, FrameHeader):
            return header
        return cls(int(header.stamp.sec), int(header.stamp.nanosec), str(header.frame_id))

    @property
    def stamp_s(self) -> float:
        return self.sec + self.nanosec * 1e-9


# ------------------------------------------------------------------ small field helpers


def header_msg(make: MessageFactory, header: FrameHeader) -> Any:
    stamp = make("builtin_interfaces/msg/Time", sec=header.sec, nanosec=header.nanosec)
    return make("std_msgs/msg/Header", stamp=stamp, frame_id=header.frame_id)


def duration_fields(seconds: float) -> tuple[int, int]:
    """Seconds -> (sec, nanosec): negative and NaN become 0, huge values saturate."""
    if math.isnan(seconds) or seconds <= 0.0:
        return 0, 0
    if seconds >= _INT32_MAX:
        return _INT32_MAX, 999_999_999
    whole = int(seconds)
    nanosec = int(round((seconds - whole) * 1e9))
    if nanosec >= 1_000_000_000:  # rounding carried into the next second
        whole, nanosec = whole + 1, 0
    return whole, nanosec


def duration_msg(make: MessageFactory, seconds: float) -> Any:
    sec, nanosec = duration_fields(seconds)
    return make("builtin_interfaces/msg/Duration", sec=sec, nanosec=nanosec)


def _finite(values: Sequence[float]) -> bool:
    return all(math.isfinite(v) and abs(v) <= _FLOAT32_MAX for v in values)


def _uint32(value: int) -> int:
    return min(max(int(value), 0), _UINT32_MAX)


# ------------------------------------------------------------------ scene graph and answer


def scene_object_msg(make: MessageFactory, obj: SceneObject) -> Any:
    """A box or position with NaN/inf (or beyond float32) coordinates counts as absent."""
    fields: dict[str, Any] = {"id": obj.id, "label": obj.label}
    if obj.box is not None:
        coords = [float(v) for v in obj.box.as_list()]
        if _finite(coords):
            fields.update(has_box=True, x_min=coords[0], y_min=coords[1], x_max=coords[2],
                          y_max=coords[3])
    if obj.position is not None:
        x, y, z = (float(v) for v in obj.position)
        if _finite((x, y, z)):
            fields.update(has_position=True,
                          position=make("geometry_msgs/msg/Point", x=x, y=y, z=z))
    return make("spatialthinker_ros/msg/SceneObject", **fields)


def scene_graph_msg(
    make: MessageFactory, graph: SceneGraph, header: FrameHeader, observation: str = ""
) -> Any:
    """SceneGraph message: boxes in source-image pixels, the source image's header."""
    return make(
        "spatialthinker_ros/msg/SceneGraph",
        header=header_msg(make, header),
        image_width=_uint32(graph.image_width),
        image_height=_uint32(graph.image_height),
        observation=observation,
        objects=[scene_object_msg(make, o) for o in graph.objects],
        relations=[
            make("spatialthinker_ros/msg/SceneRelation", subject_id=r.subject,
                 predicate=r.predicate, object_id=r.object)
            for r in graph.relations
        ],
    )


@dataclass(frozen=True)
class Request:
    """What an answer echoes of its request."""

    question: str
    choices: tuple[str, ...] = ()
    request_id: str = ""
    camera: str = ""


def status_answer_msg(
    make: MessageFactory,
    request: Request,
    status: AnswerStatus,
    message: str,
    header: FrameHeader | None = None,
    *,
    raw_output: str = "",
    inference_time_s: float = 0.0,
) -> Any:
    """A SpatialAnswer without a model answer (NO_IMAGE, BUSY, TIMEOUT, INVALID_REQUEST, ...):
    the request echoed, the header of the image it concerned (empty when none)."""
    header = header or FrameHeader()
    return make(
        "spatialthinker_ros/msg/SpatialAnswer",
        header=header_msg(make, header),
        request_id=request.request_id,
        camera=request.camera,
        question=request.question,
        choices=list(request.choices),
        matched_index=-1,
        scene_graph=scene_graph_msg(make, SceneGraph(), header),
        status=int(AnswerStatus(status)),
        status_message=message,
        raw_output=raw_output,
        inference_time=duration_msg(make, inference_time_s),
    )


def answer_msg(
    make: MessageFactory,
    result: Result,
    request: Request,
    header: FrameHeader,
    scene_graph: Any,
) -> Any:
    """A SpatialAnswer for a model answer; `scene_graph` is the graph message already built for
    it (published on its own first)."""
    reasoning = result.reasoning
    answer = reasoning.answer
    matched_index = result.choices.index(answer.matched_choice) if answer.matched_choice else -1
    return make(
        "spatialthinker_ros/msg/SpatialAnswer",
        header=header_msg(make, header),
        request_id=request.request_id,
        camera=request.camera,
        question=result.question,
        choices=list(result.choices),
        option=answer.option,
        answer_text=answer.text,
        matched_choice=answer.matched_choice,
        matched_index=matched_index,
        reasoning=reasoning.thought,
        scene_graph=scene_graph,
        status=int(STATUS_OF_PARSE[reasoning.status]),
        status_message=reasoning.message,
        raw_output=reasoning.raw,
        model=result.model,
        prompt_version=result.prompt_version or PROMPT_VERSION,
        inference_time=duration_msg(make, result.timings.total_s),
        generated_tokens=_uint32(result.generated_tokens),
    )


# ------------------------------------------------------------------ markers


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
            points: Sequence[tuple[float, float, float]] = ()) -> None:
        m = self.make
        if not _finite((*position, *scale, *(c for p in points for c in p))):
            return  # RViz refuses the marker (absurd intrinsics, e.g. fx 1e-300, give inf sizes)
        if self.source is not None:
            ns = self.source.namespace(ns)
        marker_id = self.next_id.get(ns, 0)
        self.next_id[ns] = marker_id + 1
        pose = self.pose(position)
        self.markers.append(m(
            "visualization_msgs/msg/Marker", header=header_msg(m, self.header), ns=ns,
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
    """RViz MarkerArray in the header's frame (camera optical frame: x right, y down, z ahead):
    a DELETEALL (the previous graph's objects vanish; with a `source`, DELETEs of its own
    previous markers only and namespaces under its name: see MarkerSource); per object with a
    3D position a translucent CUBE sized from its box at that depth and a text label above it;
    per object with a box but no position a label on the ray through the box centre at
    LABEL_DEPTH_M; per relation between two placed objects an ARROW subject -> object and the
    predicate at its middle. `intrinsics` (of an image of the graph's size) place the rays;
    without them a nominal 60 degree field of view does."""
    k = intrinsics or nominal_intrinsics(graph.image_width, graph.image_height)
    out = _Markers(make, header, lifetime_s, source)
    text_scale = (0.0, 0.0, TEXT_HEIGHT_M)
    positions: dict[str, tuple[float, float, float]] = {}
    for obj in graph.objects:
        rgb = label_rgb(obj.label)
        position = obj.position if obj.position is not None and _finite(obj.position) else None
        if position is not None:
            x, y, z = (float(v) for v in position)
            positions[obj.id] = (x, y, z)
            width = height = 0.1
            if obj.box is not None and z > 0.0:
                size = (obj.box.width * z / k.fx, obj.box.height * z / k.fy)
                if _finite(size):  # else the nominal size (a focal length of almost nothing)
                    width, height = (max(s, MIN_EXTENT_M) for s in size)
            out.add(NAMESPACE_BOXES, MARKER_CUBE, (x, y, z), (width, height, min(width, height)),
                    out.color(rgb, 0.35))
            out.add(NAMESPACE_LABELS, MARKER_TEXT_VIEW_FACING,
                    (x, y - height / 2.0 - TEXT_HEIGHT_M, z), text_scale, out.color(rgb, 1.0),
                    text=obj.id)
        elif obj.box is not None and _finite(obj.box.as_list()):
            u, v = obj.box.center
            z = LABEL_DEPTH_M
            ray = ((u - k.cx) * z / k.fx, (v - k.cy) * z / k.fy, z)
            if _finite(ray):
                out.add(NAMESPACE_LABELS, MARKER_TEXT_VIEW_FACING, ray, text_scale,
                        out.color(rgb, 1.0), text=f"{obj.id} (no depth)")
    white = (1.0, 1.0, 1.0)
    for rel in graph.relations:
        start, end = positions.get(rel.subject), positions.get(rel.object)
        if start is None or end is None:
            continue
        # shaft diameter, head diameter, head length
        out.add(NAMESPACE_RELATIONS, MARKER_ARROW, (0.0, 0.0, 0.0), (0.01, 0.02, 0.03),
                out.color(white, 0.9), points=[start, end])
        middle = tuple((a + b) / 2.0 for a, b in zip(start, end, strict=True))
        out.add(NAMESPACE_RELATIONS, MARKER_TEXT_VIEW_FACING, middle, text_scale,
                out.color(white, 0.9), text=rel.predicate)
    return out.array()


# ------------------------------------------------------------------ vision_msgs mirror


def detections_msg(make: MessageFactory, graph: SceneGraph, header: FrameHeader) -> Any:
    """The graph's boxes as a vision_msgs/Detection2DArray (vision_msgs 4.x: Humble on).

    One Detection2D per object with a box. `Detection2D.id` stays empty: vision_msgs defines it
    as a tracking id, and SpatialThinker's ids are unique only within one graph. The label goes
    in the hypothesis' class_id; the model reports no confidence, so score is 1.0."""
    detections = []
    for obj in graph.objects:
        if obj.box is None or not _finite(obj.box.as_list()):
            continue
        cx, cy = obj.box.center
        center = make("vision_msgs/msg/Pose2D",
                      position=make("vision_msgs/msg/Point2D", x=float(cx), y=float(cy)),
                      theta=0.0)
        bbox = make("vision_msgs/msg/BoundingBox2D", center=center,
                    size_x=float(obj.box.width), size_y=float(obj.box.height))
        hypothesis = make("vision_msgs/msg/ObjectHypothesisWithPose",
                          hypothesis=make("vision_msgs/msg/ObjectHypothesis",
                                          class_id=obj.label, score=1.0))
        detections.append(make("vision_msgs/msg/Detection2D", header=header_msg(make, header),
                               results=[hypothesis], bbox=bbox, id=""))
    return make("vision_msgs/msg/Detection2DArray", header=header_msg(make, header),
                detections=detections)


# ------------------------------------------------------------------ images


def image_msg(make: MessageFactory, rgb: np.ndarray, header: FrameHeader) -> Any:
    """An H x W x 3 uint8 RGB array as sensor_msgs/Image rgb8."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    height, width = rgb.shape[:2]
    return make("sensor_msgs/msg/Image", header=header_msg(make, header), height=height,
                width=width, encoding="rgb8", is_bigendian=0, step=width * 3,
                data=rgb.reshape(-1))


# ------------------------------------------------------------------ one answer's outputs


@dataclass(frozen=True)
class SceneOutputs:
    """What is published as soon as the scene graph is known."""

    graph: SceneGraph  # boxes in source pixels, 3D positions where depth gave them
    scene_graph: Any  # SceneGraph message
    markers: Any  # MarkerArray message


class AnswerOutputs:
    """Builds the outputs of one answer about one frame, each once.

    `scene(graph, observation)` may be called while the model still generates (`</scene>`
    closed) and again with the final result: the second call reuses the first outputs when the
    graph is the same, so positions are lifted and messages built once per answer."""

    def __init__(
        self,
        make: MessageFactory,
        request: Request,
        header: Any,
        *,
        depth: AlignedDepth | None = None,
        camera_info: Any | None = None,
        marker_source: MarkerSource | None = None,
    ) -> None:
        self.make = make
        self.request = request
        self.header = FrameHeader.of(header)
        self.depth = depth
        self.camera_info = camera_info
        self.marker_source = marker_source
        self._scene: tuple[SceneGraph, SceneOutputs] | None = None

    def scene(self, graph: SceneGraph, observation: str) -> SceneOutputs:
        if self._scene is not None and self._scene[0] == graph:
            return self._scene[1]
        located = self.depth.locate(graph) if self.depth is not None else graph
        intrinsics = None
        if self.camera_info is not None:
            intrinsics = intrinsics_for_size(self.camera_info, graph.image_width,
                                             graph.image_height)
        outputs = SceneOutputs(
            graph=located,
            scene_graph=scene_graph_msg(self.make, located, self.header, observation),
            markers=markers_msg(self.make, located, self.header, intrinsics,
                                source=self.marker_source),
        )
        self._scene = (graph, outputs)
        return outputs

    @property
    def streamed(self) -> SceneOutputs | None:
        """The scene outputs built so far (None before `scene` was called)."""
        return self._scene[1] if self._scene is not None else None

    def answer(self, result: Result) -> tuple[SceneOutputs, Any]:
        """The scene outputs (reused when streamed) and the SpatialAnswer for `result`."""
        scene = self.scene(result.reasoning.scene_graph, result.reasoning.observation)
        return scene, answer_msg(self.make, result, self.request, self.header, scene.scene_graph)

    def status(self, status: AnswerStatus, message: str, *, raw_output: str = "",
               inference_time_s: float = 0.0) -> Any:
        """A SpatialAnswer without a model answer, about this frame."""
        return status_answer_msg(self.make, self.request, status, message, self.header,
                                 raw_output=raw_output, inference_time_s=inference_time_s)

    def detections(self, scene: SceneOutputs) -> Any:
        return detections_msg(self.make, scene.graph, self.header)

    def debug_image(self, annotated: np.ndarray) -> Any:
        """sensor_msgs/Image of an annotated frame (see `annotate`)."""
        return image_msg(self.make, annotated, self.header)

    @staticmethod
    def annotate(rgb: np.ndarray, scene: SceneOutputs, result: Result) -> np.ndarray:
        """The frame with boxes, ids, relations and the answer drawn."""
        return draw_scene_graph(rgb, scene.graph, result.reasoning.answer)
