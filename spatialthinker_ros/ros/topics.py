"""Relative topic names of spatialthinker_node (no rclpy): remap them in launch."""

from __future__ import annotations

# Per camera; a camera named C reads them under C/ (see intake.Camera).
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
DEBUG_IMAGE = "debug_image"
DETECTIONS = "detections"
DIAGNOSTICS = "/diagnostics"
