"""Core dataclasses <-> generated ROS messages, and sensor_msgs images <-> numpy.

The one place that knows both sides: the node, the tests and tools convert through here. Pixel
work is delegated to `core.images` (which raises `ImageConversionError` on bad input); this module
only moves fields. It imports message types, never creates a node.
"""

from __future__ import annotations

import array
import math
from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np
from builtin_interfaces.msg import Duration, Time
from geometry_msgs.msg import Point
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header

from spatialthinker_ros.msg import SceneGraph as SceneGraphMsg
from spatialthinker_ros.msg import SceneObject as SceneObjectMsg
from spatialthinker_ros.msg import SceneRelation as SceneRelationMsg
from spatialthinker_ros.msg import SpatialAnswer as SpatialAnswerMsg

from ..core.geometry import CameraIntrinsics
from ..core.images import (
    DEFAULT_MAX_IMAGE_PIXELS,
    decode_compressed,
    depth_to_meters,
    encode_jpeg,
    image_to_rgb,
    rgb_to_image_fields,
)
from ..core.scene import Box, ParseStatus, Relation, SceneGraph, SceneObject

if TYPE_CHECKING:
    from ..core.engine import Result

# Parse status of a model output -> SpatialAnswer.status.
STATUS_OF_PARSE: dict[ParseStatus, int] = {
    ParseStatus.OK: SpatialAnswerMsg.STATUS_OK,
    ParseStatus.PARTIAL: SpatialAnswerMsg.STATUS_PARTIAL,
    ParseStatus.PARSE_ERROR: SpatialAnswerMsg.STATUS_PARSE_ERROR,
}

# Every SpatialAnswer.STATUS_* constant: value -> name without the prefix ("BUSY").
STATUS_NAMES: dict[int, str] = {
    getattr(SpatialAnswerMsg, name): name.removeprefix("STATUS_")
    for name in dir(SpatialAnswerMsg)
    if name.startswith("STATUS_")
}


# ---------------------------------------------------------------- headers and durations


def copy_header(header: Header | None) -> Header:
    """A new Header with the same stamp and frame_id (an empty one for None)."""
    if header is None:
        return Header()
    return Header(
        stamp=Time(sec=header.stamp.sec, nanosec=header.stamp.nanosec), frame_id=header.frame_id
    )


def seconds_to_duration(seconds: float) -> Duration:
    """Seconds -> builtin_interfaces/Duration: negative and NaN become 0, huge values saturate."""
    if math.isnan(seconds) or seconds <= 0.0:
        return Duration()
    if seconds >= 2**31 - 1:
        return Duration(sec=2**31 - 1, nanosec=999_999_999)
    whole = int(seconds)
    nanosec = int(round((seconds - whole) * 1e9))
    if nanosec >= 1_000_000_000:  # rounding carried into the next second
        whole, nanosec = whole + 1, 0
    return Duration(sec=whole, nanosec=nanosec)


def duration_to_seconds(duration: Duration) -> float:
    return float(duration.sec) + float(duration.nanosec) * 1e-9


# ---------------------------------------------------------------- scene graphs


_FLOAT32_MAX = 3.4028234e38


def _all_finite(values: Iterable[float]) -> bool:
    return all(math.isfinite(v) and abs(v) <= _FLOAT32_MAX for v in values)


def _object_to_msg(obj: SceneObject) -> SceneObjectMsg:
    """A box or position with NaN/inf (or beyond float32) coordinates counts as absent."""
    msg = SceneObjectMsg(id=obj.id, label=obj.label)
    if obj.box is not None:
        coords = [float(v) for v in obj.box.as_list()]
        if _all_finite(coords):
            msg.has_box = True
            msg.x_min, msg.y_min, msg.x_max, msg.y_max = coords
    if obj.position is not None:
        x, y, z = (float(v) for v in obj.position)
        if _all_finite((x, y, z)):
            msg.has_position = True
            msg.position = Point(x=x, y=y, z=z)
    return msg


def _size_field(value: int) -> int:
    return min(max(int(value), 0), 2**32 - 1)


def scene_graph_to_msg(
    graph: SceneGraph, header: Header | None = None, observation: str = ""
) -> SceneGraphMsg:
    """Core SceneGraph (boxes in source-image pixels) -> spatialthinker_ros/SceneGraph.

    `header` is the source image's (copied); `observation` is the model's <observe> text, which
    lives on `Reasoning`, not on the core graph.
    """
    return SceneGraphMsg(
        header=copy_header(header),
        image_width=_size_field(graph.image_width),
        image_height=_size_field(graph.image_height),
        observation=observation,
        objects=[_object_to_msg(obj) for obj in graph.objects],
        relations=[
            SceneRelationMsg(subject_id=r.subject, predicate=r.predicate, object_id=r.object)
            for r in graph.relations
        ],
    )


def msg_to_scene_graph(msg: SceneGraphMsg) -> SceneGraph:
    """spatialthinker_ros/SceneGraph -> core SceneGraph (the observation stays on the message)."""
    objects = []
    for obj in msg.objects:
        box = Box(obj.x_min, obj.y_min, obj.x_max, obj.y_max) if obj.has_box else None
        position = (
            (obj.position.x, obj.position.y, obj.position.z) if obj.has_position else None
        )
        objects.append(SceneObject(id=obj.id, label=obj.label, box=box, position=position))
    relations = tuple(Relation(r.subject_id, r.predicate, r.object_id) for r in msg.relations)
    return SceneGraph(
        objects=tuple(objects),
        relations=relations,
        image_width=int(msg.image_width),
        image_height=int(msg.image_height),
    )


# ---------------------------------------------------------------- answers


def answer_to_msg(
    result: Result,
    header: Header | None = None,
    *,
    request_id: str = "",
    scene_graph: SceneGraphMsg | None = None,
) -> SpatialAnswerMsg:
    """An engine Result -> SpatialAnswer.

    status / status_message come from the parse status (OK, PARTIAL, PARSE_ERROR);
    inference_time is the engine's total time. `scene_graph` reuses a graph message already
    built for this answer (e.g. the one streamed when </scene> closed); otherwise the result's
    graph is converted with `header`.
    """
    reasoning = result.reasoning
    if scene_graph is None:
        scene_graph = scene_graph_to_msg(reasoning.scene_graph, header, reasoning.observation)
    return SpatialAnswerMsg(
        header=copy_header(header),
        request_id=request_id,
        question=result.question,
        choices=list(result.choices),
        option=reasoning.answer.option,
        answer_text=reasoning.answer.text,
        matched_choice=reasoning.answer.matched_choice,
        reasoning=reasoning.thought,
        scene_graph=scene_graph,
        status=STATUS_OF_PARSE[reasoning.status],
        status_message=reasoning.message,
        raw_output=reasoning.raw,
        inference_time=seconds_to_duration(result.timings.total_s),
        generated_tokens=_size_field(result.generated_tokens),
    )


def status_answer(
    status: int,
    message: str,
    *,
    header: Header | None = None,
    request_id: str = "",
    question: str = "",
    choices: Iterable[str] = (),
) -> SpatialAnswerMsg:
    """A SpatialAnswer that carries no model output: NO_IMAGE, BUSY, TIMEOUT, INVALID_REQUEST...

    The request is echoed; the scene graph gets the same header (empty when no image was used).
    Raises ValueError for a status that is not one of SpatialAnswer.STATUS_*.
    """
    if status not in STATUS_NAMES:
        raise ValueError(f"unknown SpatialAnswer status {status!r}")
    return SpatialAnswerMsg(
        header=copy_header(header),
        request_id=request_id,
        question=question,
        choices=list(choices),
        scene_graph=SceneGraphMsg(header=copy_header(header)),
        status=status,
        status_message=message,
    )


def parse_status_of(msg: SpatialAnswerMsg) -> ParseStatus | None:
    """The parse status behind an answer's status, None for statuses without model output."""
    return next((p for p, s in STATUS_OF_PARSE.items() if s == msg.status), None)


# ---------------------------------------------------------------- images


def image_msg_to_rgb(
    msg: Image | CompressedImage, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
) -> np.ndarray:
    """sensor_msgs/Image or CompressedImage -> H x W x 3 uint8 RGB.

    Raises core.images.ImageConversionError on unsupported or inconsistent input.
    """
    if isinstance(msg, CompressedImage):
        return decode_compressed(msg.data, max_pixels)
    return image_to_rgb(
        msg.encoding, msg.width, msg.height, msg.step, msg.data, bool(msg.is_bigendian), max_pixels
    )


def depth_msg_to_meters(msg: Image, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    """sensor_msgs/Image depth (16UC1 mm, 32FC1 m) -> H x W float32 metres, NaN where invalid."""
    return depth_to_meters(
        msg.encoding, msg.width, msg.height, msg.step, msg.data, bool(msg.is_bigendian), max_pixels
    )


def _byte_array(data: bytes) -> array.array:
    # rclpy stores uint8[] as array.array('B'); handing it one avoids a per-byte type check.
    out = array.array("B")
    out.frombytes(data)
    return out


def rgb_to_image_msg(
    rgb: np.ndarray, header: Header | None = None, encoding: str = "rgb8"
) -> Image:
    """H x W x 3 uint8 RGB -> sensor_msgs/Image (rgb8 by default; bgr8, rgba8, bgra8, mono8)."""
    encoding, width, height, step, data = rgb_to_image_fields(rgb, encoding)
    return Image(
        header=copy_header(header),
        height=height,
        width=width,
        encoding=encoding,
        is_bigendian=0,
        step=step,
        data=_byte_array(data),
    )


def rgb_to_compressed_msg(
    rgb: np.ndarray, header: Header | None = None, quality: int = 90
) -> CompressedImage:
    """H x W x 3 uint8 RGB -> sensor_msgs/CompressedImage (JPEG)."""
    return CompressedImage(
        header=copy_header(header), format="jpeg", data=_byte_array(encode_jpeg(rgb, quality))
    )


# ---------------------------------------------------------------- camera info


def camera_info_to_intrinsics(msg: CameraInfo) -> CameraIntrinsics | None:
    """The pinhole intrinsics of CameraInfo.k (row-major 3x3 K: fx 0 cx / 0 fy cy / 0 0 1).

    None when K is unset or unusable (zero, negative or non-finite focal lengths), as in an
    uncalibrated camera's all-zero CameraInfo. The intrinsics describe an image of
    msg.width x msg.height; scale them for images of another size.
    """
    k = [float(v) for v in msg.k]
    if len(k) != 9:
        return None
    fx, cx, fy, cy = k[0], k[2], k[4], k[5]
    if not all(math.isfinite(v) for v in (fx, fy, cx, cy)) or fx <= 0.0 or fy <= 0.0:
        return None
    return CameraIntrinsics(fx=fx, fy=fy, cx=cx, cy=cy)


def intrinsics_for_size(msg: CameraInfo, width: int, height: int) -> CameraIntrinsics | None:
    """CameraInfo's intrinsics scaled to an image of width x height (e.g. a resized stream, or
    the depth image); None when K is unusable. CameraInfo width/height 0 means "same size"."""
    intrinsics = camera_info_to_intrinsics(msg)
    if intrinsics is None:
        return None
    sx = width / msg.width if msg.width else 1.0
    sy = height / msg.height if msg.height else 1.0
    return CameraIntrinsics(
        fx=intrinsics.fx * sx, fy=intrinsics.fy * sy, cx=intrinsics.cx * sx, cy=intrinsics.cy * sy
    )
