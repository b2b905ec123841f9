"""Generated ROS messages <-> numpy and the core dataclasses (imports message types, never
creates a node).

- `rclpy_message` is the `core.outputs.MessageFactory` of the live node: the node publishes what
  `core.outputs` builds through it (replay builds the same contents through rosbags).
- Camera images to RGB arrays (pixel work in `core.images`, which raises ImageConversionError).
- Received answers back to the core dataclasses (what a planner's client reads).
"""

from __future__ import annotations

import array
import functools
import importlib
from typing import Any

import numpy as np
from sensor_msgs.msg import CompressedImage, Image

from spatialthinker_ros.msg import SceneGraph as SceneGraphMsg

from ..core.images import DEFAULT_MAX_IMAGE_PIXELS, encode_jpeg, message_to_rgb
from ..core.outputs import FrameHeader, header_msg, image_msg
from ..core.scene import Box, Relation, SceneGraph, SceneObject
from ..core.spatial_result import SpatialResult
from ..core.status import AnswerStatus
from ..core.text import safe_fields

# ---------------------------------------------------------------- the message factory


@functools.cache
def message_class(msgtype: str) -> type:
    """`pkg/msg/Type` -> the generated Python class (imported on first use)."""
    package, kind, name = msgtype.split("/")
    return getattr(importlib.import_module(f"{package}.{kind}"), name)


def _byte_array(data: bytes) -> array.array:
    # rclpy stores uint8[] as array.array('B'); handing it one avoids a per-byte type check.
    out = array.array("B")
    out.frombytes(data)
    return out


def rclpy_message(msgtype: str, **fields: Any) -> Any:
    """A generated rclpy message with `fields` (strings made safe, uint8 arrays as rclpy keeps
    them): the node's `core.outputs.MessageFactory`."""
    values = safe_fields(fields)
    for name, value in values.items():
        if isinstance(value, np.ndarray) and value.dtype == np.uint8:
            values[name] = _byte_array(value.tobytes())
    return message_class(msgtype)(**values)


def header_of(header: Any) -> Any:
    """A new std_msgs/Header with the same stamp and frame_id (an empty one for None)."""
    return header_msg(rclpy_message, FrameHeader.of(header))


# ---------------------------------------------------------------- images


def image_msg_to_rgb(
    msg: Image | CompressedImage, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
) -> np.ndarray:
    """sensor_msgs/Image or CompressedImage -> H x W x 3 uint8 RGB.

    Raises core.images.ImageConversionError on unsupported or inconsistent input.
    """
    return message_to_rgb(msg, isinstance(msg, CompressedImage), max_pixels)


def rgb_to_image_msg(rgb: np.ndarray, header: Any = None) -> Image:
    """H x W x 3 uint8 RGB -> sensor_msgs/Image rgb8 with a copy of `header`."""
    return image_msg(rclpy_message, rgb, FrameHeader.of(header))


def rgb_to_compressed_msg(
    rgb: np.ndarray, header: Any = None, quality: int = 90
) -> CompressedImage:
    """H x W x 3 uint8 RGB -> sensor_msgs/CompressedImage (JPEG)."""
    return CompressedImage(
        header=header_of(header), format="jpeg", data=_byte_array(encode_jpeg(rgb, quality))
    )


# ---------------------------------------------------------------- received answers


def stamp_to_seconds(stamp: Any) -> float:
    """builtin_interfaces Time or Duration -> seconds."""
    return float(stamp.sec) + float(stamp.nanosec) * 1e-9


def msg_to_scene_graph(msg: SceneGraphMsg) -> SceneGraph:
    """spatialthinker_ros/SceneGraph -> core SceneGraph (the observation stays on the message;
    positions_frame_id "" when the positions are in the header's frame, as in core)."""
    objects = []
    for obj in msg.objects:
        box = Box(obj.x_min, obj.y_min, obj.x_max, obj.y_max) if obj.has_box else None
        position = (
            (obj.position.x, obj.position.y, obj.position.z) if obj.has_position else None
        )
        size = ((obj.size.x, obj.size.y, obj.size.z)
                if obj.has_position and obj.has_size else None)
        objects.append(SceneObject(id=obj.id, label=obj.label, box=box, position=position,
                                   size=size))
    relations = tuple(Relation(r.subject_id, r.predicate, r.object_id) for r in msg.relations)
    return SceneGraph(
        objects=tuple(objects),
        relations=relations,
        image_width=int(msg.image_width),
        image_height=int(msg.image_height),
        # core's "" is the image's own frame (the header's).
        positions_frame_id=("" if msg.positions_frame_id == msg.header.frame_id
                            else str(msg.positions_frame_id)),
    )


def msg_to_spatial_result(msg: Any) -> SpatialResult:
    """spatialthinker_ros/SpatialAnswer -> core SpatialResult. Raises ValueError for a status
    this package does not know (a newer node)."""
    graph = msg.scene_graph
    return SpatialResult(
        status=AnswerStatus(msg.status),
        status_message=msg.status_message,
        question=msg.question,
        choices=tuple(msg.choices),
        option=msg.option,
        answer_text=msg.answer_text,
        matched_choice=msg.matched_choice,
        matched_index=int(msg.matched_index),
        reasoning=msg.reasoning,
        observation=graph.observation,
        scene_graph=msg_to_scene_graph(graph),
        header=FrameHeader.of(msg.header),
        camera=msg.camera,
        request_id=msg.request_id,
        model=msg.model,
        prompt_version=msg.prompt_version,
        raw_output=msg.raw_output,
        inference_time_s=stamp_to_seconds(msg.inference_time),
        generated_tokens=int(msg.generated_tokens),
    )
