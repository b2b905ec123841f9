"""The contents of every output for one answer, built once for the live node and for replay.

A result (+ the source image's header, aligned depth, camera info, the transform to a target
frame) becomes a SceneGraph, a SpatialAnswer, a MarkerArray (core.markers), vision_msgs
Detection2DArray and Detection3DArray (core.detections) and an annotated debug image. The
messages are built through a `MessageFactory`, `make("pkg/msg/Type", **fields)`: the node's makes
rclpy messages (`ros.conversions.rclpy_message`), replay's makes rosbags messages
(`bag_types.BagMessages`). So a replayed bag holds exactly what the live node publishes: same
fields, same markers, same statuses. No rclpy here.

Every string field is made safe (`core.text.safe_text`) by the factories, the one place.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .depth import AlignedDepth, CameraIntrinsics, intrinsics_for_size  # noqa: F401
from .detections import detections_3d_msg, detections_msg
from .fields import (  # noqa: F401 - re-exported: the factories' shared helpers
    FrameHeader,
    MessageFactory,
    duration_fields,
    duration_msg,
    finite,
    header_msg,
    positions_frame,
    positions_header,
    uint32,
)
from .markers import (  # noqa: F401 - re-exported
    MARKER_ADD,
    MARKER_ARROW,
    MARKER_CUBE,
    MARKER_DELETE,
    MARKER_DELETEALL,
    MARKER_TEXT_VIEW_FACING,
    NAMESPACE_BOXES,
    NAMESPACE_LABELS,
    NAMESPACE_RELATIONS,
    MarkerSource,
    label_rgb,
    markers_msg,
    nominal_intrinsics,
)
from .prompt import PROMPT_VERSION
from .scene import SceneGraph, SceneObject
from .status import STATUS_OF_PARSE, AnswerStatus
from .transforms import RigidTransform
from .types import Result
from .visualize import draw_scene_graph

# The transform from the image's frame to the target frame at the image's stamp, or why there is
# none (called once per answer, on the thread building it, when positions are first needed).
TransformSource = Callable[[], "RigidTransform | str"]


# ------------------------------------------------------------------ scene graph and answer


def scene_object_msg(make: MessageFactory, obj: SceneObject) -> Any:
    """A box or position with NaN/inf (or beyond float32) coordinates counts as absent."""
    fields: dict[str, Any] = {"id": obj.id, "label": obj.label}
    if obj.box is not None:
        coords = [float(v) for v in obj.box.as_list()]
        if finite(coords):
            fields.update(has_box=True, x_min=coords[0], y_min=coords[1], x_max=coords[2],
                          y_max=coords[3])
    if obj.position is not None:
        x, y, z = (float(v) for v in obj.position)
        if finite((x, y, z)):
            fields.update(has_position=True,
                          position=make("geometry_msgs/msg/Point", x=x, y=y, z=z))
            if obj.size is not None and finite(obj.size):
                sx, sy, sz = (float(v) for v in obj.size)
                fields.update(has_size=True,
                              size=make("geometry_msgs/msg/Vector3", x=sx, y=sy, z=sz))
    return make("spatialthinker_ros/msg/SceneObject", **fields)


def scene_graph_msg(
    make: MessageFactory, graph: SceneGraph, header: FrameHeader, observation: str = ""
) -> Any:
    """SceneGraph message: boxes in source-image pixels, the source image's header."""
    return make(
        "spatialthinker_ros/msg/SceneGraph",
        header=header_msg(make, header),
        image_width=uint32(graph.image_width),
        image_height=uint32(graph.image_height),
        positions_frame_id=positions_frame(graph, header),
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
        generated_tokens=uint32(result.generated_tokens),
    )


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
    graph is the same, so positions are lifted and messages built once per answer.

    With `transform` (a target frame), positions and sizes are placed in its target frame: it is
    called once, when the first graph with objects is located (so a tf2 lookup at the image's
    stamp waits on the thread building the answer, late, when the transform is most likely
    there); its reason (str) means no positions at all, said by `note`."""

    def __init__(
        self,
        make: MessageFactory,
        request: Request,
        header: Any,
        *,
        depth: AlignedDepth | None = None,
        camera_info: Any | None = None,
        marker_source: MarkerSource | None = None,
        transform: TransformSource | None = None,
    ) -> None:
        self.make = make
        self.request = request
        self.header = FrameHeader.of(header)
        self.depth = depth
        self.camera_info = camera_info
        self.marker_source = marker_source
        self._transform = transform
        self._scene: tuple[SceneGraph, SceneOutputs] | None = None

    def _located(self, graph: SceneGraph) -> SceneGraph:
        if self.depth is None:
            return graph
        if self._transform is not None and graph.objects and self.depth.available:
            source, self._transform = self._transform, None
            try:
                resolved = source()
            except Exception as exc:  # noqa: BLE001 - no transform is a note, never a failure
                resolved = f"transform lookup failed: {type(exc).__name__}: {exc}"
            self.depth = self.depth.with_transform(resolved)
        return self.depth.locate(graph)

    def note(self, graph: SceneGraph) -> str:
        """Why objects of `graph` got no 3D position ("" when all have one, or no depth)."""
        return self.depth.note(graph) if self.depth is not None else ""

    def scene(self, graph: SceneGraph, observation: str) -> SceneOutputs:
        if self._scene is not None and self._scene[0] == graph:
            return self._scene[1]
        located = self._located(graph)
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
        """vision_msgs/Detection2DArray (boxes, the image's header)."""
        return detections_msg(self.make, scene.graph, self.header)

    def detections_3d(self, scene: SceneOutputs) -> Any:
        """vision_msgs/Detection3DArray (the objects with a position, in their frame)."""
        return detections_3d_msg(self.make, scene.graph, self.header)

    def debug_image(self, annotated: np.ndarray) -> Any:
        """sensor_msgs/Image of an annotated frame (see `annotate`)."""
        return image_msg(self.make, annotated, self.header)

    @staticmethod
    def annotate(rgb: np.ndarray, scene: SceneOutputs, result: Result) -> np.ndarray:
        """The frame with boxes, ids, relations and the answer drawn."""
        return draw_scene_graph(rgb, scene.graph, result.reasoning.answer)
