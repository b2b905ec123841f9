"""The scene graph as vision_msgs detections (vision_msgs 4.x: Humble on), for the live node and
replay alike, through a `core.outputs.MessageFactory`. No rclpy.

Detection2DArray: the boxes, in the source image's pixels and header. Detection3DArray: the
objects with a 3D position, in the frame the positions are in (the graph's positions_frame_id:
the camera's optical frame or the node's target_frame). Both leave `id` empty (vision_msgs
defines it as a tracking id; SpatialThinker's ids are unique only within one graph) and put the
label in the hypothesis' class_id with score 1.0 (the model reports no confidence).
"""

from __future__ import annotations

from typing import Any

from .fields import FrameHeader, MessageFactory, finite, header_msg, positions_header
from .scene import SceneGraph, SceneObject


def _hypothesis(make: MessageFactory, obj: SceneObject, pose: Any = None) -> Any:
    fields: dict[str, Any] = {
        "hypothesis": make("vision_msgs/msg/ObjectHypothesis", class_id=obj.label, score=1.0)}
    if pose is not None:
        fields["pose"] = make("geometry_msgs/msg/PoseWithCovariance", pose=pose,
                              covariance=[0.0] * 36)
    return make("vision_msgs/msg/ObjectHypothesisWithPose", **fields)


def detections_msg(make: MessageFactory, graph: SceneGraph, header: FrameHeader) -> Any:
    """vision_msgs/Detection2DArray: one Detection2D per object with a box (pixels)."""
    detections = []
    for obj in graph.objects:
        if obj.box is None or not finite(obj.box.as_list()):
            continue
        cx, cy = obj.box.center
        center = make("vision_msgs/msg/Pose2D",
                      position=make("vision_msgs/msg/Point2D", x=float(cx), y=float(cy)),
                      theta=0.0)
        bbox = make("vision_msgs/msg/BoundingBox2D", center=center,
                    size_x=float(obj.box.width), size_y=float(obj.box.height))
        detections.append(make("vision_msgs/msg/Detection2D", header=header_msg(make, header),
                               results=[_hypothesis(make, obj)], bbox=bbox, id=""))
    return make("vision_msgs/msg/Detection2DArray", header=header_msg(make, header),
                detections=detections)


def detections_3d_msg(make: MessageFactory, graph: SceneGraph, header: FrameHeader) -> Any:
    """vision_msgs/Detection3DArray in the positions' frame (header: the image's stamp, frame_id
    = positions_frame_id): one Detection3D per object with a position; the bbox centre (and the
    hypothesis pose) is the position, identity orientation (the size is along the frame's axes),
    the size the object's size, all zero where the depth gave none."""
    out_header = positions_header(graph, header)
    detections = []
    for obj in graph.objects:
        if obj.position is None or not finite(obj.position):
            continue
        x, y, z = (float(v) for v in obj.position)
        sx, sy, sz = (0.0, 0.0, 0.0)
        if obj.size is not None and finite(obj.size):
            sx, sy, sz = (float(v) for v in obj.size)

        def pose(x: float = x, y: float = y, z: float = z) -> Any:
            return make("geometry_msgs/msg/Pose",
                        position=make("geometry_msgs/msg/Point", x=x, y=y, z=z),
                        orientation=make("geometry_msgs/msg/Quaternion", x=0.0, y=0.0, z=0.0,
                                         w=1.0))

        bbox = make("vision_msgs/msg/BoundingBox3D", center=pose(),
                    size=make("geometry_msgs/msg/Vector3", x=sx, y=sy, z=sz))
        detections.append(make("vision_msgs/msg/Detection3D",
                               header=header_msg(make, out_header),
                               results=[_hypothesis(make, obj, pose())], bbox=bbox, id=""))
    return make("vision_msgs/msg/Detection3DArray", header=header_msg(make, out_header),
                detections=detections)
