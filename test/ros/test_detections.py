"""The vision_msgs mirrors the live node publishes (issue 22 item 3, issue 26), with real rclpy,
vision_msgs built from ../shared/vendor (scripts/build_vendor.sh) and the tiny offline model:
`detections` (Detection2DArray) holds the boxes, labels and header of the SceneGraph of the same
answer; `detections_3d` (Detection3DArray) its positions and sizes, in the positions' frame.
"""

from __future__ import annotations

import pytest

rclpy = pytest.importorskip("rclpy")
vision_msgs = pytest.importorskip("vision_msgs.msg", reason="vision_msgs not built "
                                  "(scripts/build_vendor.sh)")

from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from test_node import wait_until  # noqa: E402

Detection2DArray = vision_msgs.Detection2DArray
Detection3DArray = vision_msgs.Detection3DArray
RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)


def subscribe(harness):
    got: dict[str, list] = {"2d": [], "3d": []}
    harness.client.create_subscription(Detection2DArray, "detections", got["2d"].append,
                                       RELIABLE)
    harness.client.create_subscription(Detection3DArray, "detections_3d", got["3d"].append,
                                       RELIABLE)
    node = harness.node
    wait_until(lambda: node.outputs.subscribers("detections") > 0
               and node.outputs.subscribers("detections_3d") > 0,
               what="the detections subscriptions")
    return got


def of_stamp(messages: list, stamp) -> list:
    return [m for m in messages if m.header.stamp == stamp]


def test_detections_2d_equal_the_scene_graph_of_the_same_answer(make_harness) -> None:
    harness = make_harness()
    got = subscribe(harness)
    header = harness.send_frame(frame_id="cam_2d")
    answer = harness.ask()
    assert answer.status == harness.SpatialAnswer.STATUS_OK
    graph = answer.scene_graph
    arrays = wait_until(lambda: of_stamp(got["2d"], header.stamp), what="a Detection2DArray")
    array = arrays[-1]
    assert array.header == graph.header == answer.header
    boxed = [o for o in graph.objects if o.has_box]
    assert len(boxed) == len(array.detections) >= 2
    for obj, det in zip(boxed, array.detections, strict=True):
        assert det.header == graph.header
        assert [r.hypothesis.class_id for r in det.results] == [obj.label]
        assert det.results[0].hypothesis.score == 1.0
        assert det.id == ""
        c, b = det.bbox.center.position, det.bbox
        assert (c.x - b.size_x / 2, c.y - b.size_y / 2, c.x + b.size_x / 2,
                c.y + b.size_y / 2) == pytest.approx((obj.x_min, obj.y_min, obj.x_max,
                                                      obj.y_max), abs=1e-3)  # float32
    # Without depth no object has a position: an empty Detection3DArray, in the image's stamp.
    empty = wait_until(lambda: of_stamp(got["3d"], header.stamp), what="a Detection3DArray")
    assert empty[-1].detections == []


def test_detections_3d_hold_positions_and_sizes_in_the_target_frame(make_harness) -> None:
    tf2_ros = pytest.importorskip("tf2_ros", reason="tf2_ros not built")
    from test_target_frame import HEAD_Q, HEAD_T, publish_depth, transform, unique

    base, cam = unique("base_link"), unique("det_optical")
    harness = make_harness(use_depth=True, target_frame=base)
    tf2_ros.StaticTransformBroadcaster(harness.client).sendTransform(
        transform(base, cam, HEAD_T, HEAD_Q))
    got = subscribe(harness)
    stamp = harness.now()
    publish_depth(harness, stamp, cam)
    harness.send_frame(stamp=stamp, frame_id=cam)
    answer = harness.ask()
    assert answer.status == harness.SpatialAnswer.STATUS_OK, answer.status_message
    graph = answer.scene_graph
    assert graph.positions_frame_id == base
    array = wait_until(lambda: of_stamp(got["3d"], stamp), what="a Detection3DArray")[-1]
    assert array.header.frame_id == base and array.header.stamp == stamp
    placed = [o for o in graph.objects if o.has_position]
    assert len(placed) == len(array.detections) >= 2
    for obj, det in zip(placed, array.detections, strict=True):
        assert det.header == array.header
        assert det.results[0].hypothesis.class_id == obj.label
        centre = det.bbox.center.position
        assert (centre.x, centre.y, centre.z) == (obj.position.x, obj.position.y,
                                                  obj.position.z)
        assert det.results[0].pose.pose.position == det.bbox.center.position
        assert obj.has_size
        assert (det.bbox.size.x, det.bbox.size.y, det.bbox.size.z) == (obj.size.x, obj.size.y,
                                                                      obj.size.z)
    # The 2D mirror stays in the image's frame and pixels.
    array_2d = wait_until(lambda: of_stamp(got["2d"], stamp), what="a Detection2DArray")[-1]
    assert array_2d.header.frame_id == cam
