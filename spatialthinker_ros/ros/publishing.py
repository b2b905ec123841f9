"""The node's outputs: lifecycle publishers for what `core.outputs` builds.

Publishing never fails a request: a message rclpy cannot publish (or a publisher destroyed by a
concurrent cleanup) is logged and counted, and the caller still gets its answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rclpy.lifecycle import LifecycleNode
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from visualization_msgs.msg import MarkerArray

from spatialthinker_ros.msg import SceneGraph as SceneGraphMsg
from spatialthinker_ros.msg import SpatialAnswer as SpatialAnswerMsg

from ..core.outputs import AnswerOutputs, SceneOutputs
from . import topics
from .diagnostics import ServingStats

RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
LATEST_ONLY_RELIABLE = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)


def detection_message_types() -> tuple[type, type] | None:
    """vision_msgs' (Detection2DArray, Detection3DArray) when vision_msgs imports, else None."""
    try:
        from vision_msgs.msg import Detection2DArray, Detection3DArray
    except ImportError:
        return None
    return Detection2DArray, Detection3DArray


class Publishers:
    """scene_graph, answer, markers (shared by the cameras: the header tells the camera), a
    debug_image per camera (`C/debug_image`), and (where vision_msgs imports) detections and
    detections_3d. Each
    publisher is known by its relative topic name."""

    def __init__(self, node: LifecycleNode, stats: ServingStats) -> None:
        self._node = node
        self._stats = stats
        self._pubs: dict[str, Any] = {}

    @property
    def active(self) -> bool:
        return bool(self._pubs)

    def create(self, cameras: Sequence[str]) -> None:
        node = self._node
        specs = [
            (SceneGraphMsg, topics.SCENE_GRAPH, RELIABLE),
            (SpatialAnswerMsg, topics.ANSWER, RELIABLE),
            *[(Image, topics.camera_topic(c, topics.DEBUG_IMAGE), LATEST_ONLY_RELIABLE)
              for c in cameras],
            (MarkerArray, topics.MARKERS, RELIABLE),
        ]
        detections = detection_message_types()
        if detections is not None:
            specs += [(detections[0], topics.DETECTIONS, RELIABLE),
                      (detections[1], topics.DETECTIONS_3D, RELIABLE)]
        self._pubs = {
            topic: node.create_lifecycle_publisher(msg_type, topic, qos)
            for msg_type, topic, qos in specs
        }

    def destroy(self) -> None:
        pubs, self._pubs = self._pubs, {}
        for pub in pubs.values():
            self._node.destroy_lifecycle_publisher(pub)

    def subscribers(self, name: str) -> int:
        pub = self._pubs.get(name)
        return pub.get_subscription_count() if pub is not None else 0

    @property
    def publishes_detections(self) -> bool:
        return topics.DETECTIONS in self._pubs

    def publish(self, name: str, msg: Any) -> bool:
        """Publish on `name` if it exists; False (logged, counted) when rclpy refused."""
        pub = self._pubs.get(name)
        if pub is None or msg is None or not self._node.context.ok():
            return False
        try:
            pub.publish(msg)
        except Exception as exc:  # noqa: BLE001 - an output never fails the answer
            reason = f"{name} not published: {type(exc).__name__}: {exc}"
            self._stats.publish_failure(reason)
            self._node.get_logger().warning(reason, throttle_duration_sec=5.0)
            return False
        return True

    def publish_scene(self, scene: SceneOutputs, outputs: AnswerOutputs | None = None) -> None:
        """scene_graph, then its markers (and, with `outputs` where vision_msgs is there, the
        detections mirrors, built only then)."""
        self.publish(topics.SCENE_GRAPH, scene.scene_graph)
        self.publish(topics.MARKERS, scene.markers)
        if outputs is not None and self.publishes_detections:
            self.publish(topics.DETECTIONS, outputs.detections(scene))
            self.publish(topics.DETECTIONS_3D, outputs.detections_3d(scene))
