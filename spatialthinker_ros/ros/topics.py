"""Relative topic names of spatialthinker_node and the per-camera naming rule (no rclpy): remap
them in launch (`launch_args.camera_remappings` builds the launch file's remaps)."""

from __future__ import annotations

import re

# Per camera; a camera named C reads them under C/ (`camera_topic`).
IMAGE = "image"
COMPRESSED_IMAGE = "image/compressed"
DEPTH = "depth"
CAMERA_INFO = "camera_info"
CAMERA_TOPICS = (IMAGE, COMPRESSED_IMAGE, DEPTH, CAMERA_INFO)
QUESTION = "question"
SUBSCRIBED = (*CAMERA_TOPICS, QUESTION)

SCENE_GRAPH = "scene_graph"
ANSWER = "answer"
MARKERS = "markers"
DEBUG_IMAGE = "debug_image"  # per camera: C/debug_image
DETECTIONS = "detections"  # vision_msgs/Detection2DArray (image pixels)
DETECTIONS_3D = "detections_3d"  # vision_msgs/Detection3DArray (the positions' frame)
DIAGNOSTICS = "/diagnostics"

# A camera name is a relative topic name: tokens of letters, digits and _ (not starting with a
# digit) joined by "/". It prefixes the camera's topics, marker namespaces and diagnostics.
CAMERA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(/[A-Za-z_][A-Za-z0-9_]*)*")


def camera_name_problem(name: object) -> str | None:
    """Why `name` cannot name a camera, or None ("" is the node's own topics, checked apart)."""
    if not isinstance(name, str) or not CAMERA_NAME.fullmatch(name):
        return (f"camera name {name!r} must be a relative topic name (letters, digits and _, "
                "tokens joined by /, e.g. head or arm/wrist)")
    return None


def camera_topic(camera: str, base: str) -> str:
    """The relative topic `base` of camera `camera` ("": the node's own `base`)."""
    return f"{camera}/{base}" if camera else base
