"""Core dataclasses <-> generated messages (conversions.py) and the RViz markers (markers.py).

No rclpy context: messages are built, serialized and read back in-process."""

from __future__ import annotations

import math
import os
from dataclasses import replace

import numpy as np
import pytest

pytest.importorskip("spatialthinker_ros.msg", reason=os.environ.get(
    "SPATIALTHINKER_ROS_INTERFACES_UNAVAILABLE", "generated interfaces not importable"))

from builtin_interfaces.msg import Time  # noqa: E402
from rclpy.serialization import deserialize_message, serialize_message  # noqa: E402
from sensor_msgs.msg import CameraInfo, CompressedImage, Image  # noqa: E402
from spatialthinker_ros.msg import SceneGraph as SceneGraphMsg  # noqa: E402
from spatialthinker_ros.msg import SpatialAnswer as SpatialAnswerMsg  # noqa: E402
from std_msgs.msg import Header  # noqa: E402
from visualization_msgs.msg import Marker, MarkerArray  # noqa: E402

from spatialthinker_ros.core.engine import Result, Timings  # noqa: E402
from spatialthinker_ros.core.geometry import CameraIntrinsics  # noqa: E402
from spatialthinker_ros.core.images import ImageConversionError  # noqa: E402
from spatialthinker_ros.core.parsing import parse_output  # noqa: E402
from spatialthinker_ros.core.scene import (  # noqa: E402
    Box,
    ParseStatus,
    Relation,
    SceneGraph,
    SceneObject,
)
from spatialthinker_ros.ros import conversions, markers  # noqa: E402
from spatialthinker_ros.testing.tiny_model import EXAMPLE_OUTPUT  # noqa: E402

CHOICES = ("left", "right", "above", "below")


def header(sec: int = 1_700_000_000, nanosec: int = 250_000_000) -> Header:
    return Header(stamp=Time(sec=sec, nanosec=nanosec), frame_id="camera_color_optical_frame")


def core_graph() -> SceneGraph:
    # Coordinates exactly representable in float32, so the round trip is exact.
    return SceneGraph(
        objects=(
            SceneObject("cube.1", "cube", Box(64.0, 120.5, 256.25, 360.0), (-0.5, 0.25, 2.0)),
            SceneObject("ball.1", "ball", Box(384.0, 180.0, 576.0, 420.0)),
            SceneObject("lamp.1", "lamp"),
        ),
        relations=(Relation("cube.1", "left of", "ball.1"), Relation("lamp.1", "above", "cube.1")),
        image_width=640,
        image_height=480,
    )


def engine_result(text: str = EXAMPLE_OUTPUT, choices: tuple[str, ...] = CHOICES) -> Result:
    """A Result as the engine returns it: the real parser's output on a model text."""
    reasoning = parse_output(text, choices)
    graph = replace(reasoning.scene_graph, image_width=640, image_height=480)
    return Result(
        reasoning=replace(reasoning, scene_graph=graph), question="Where is the cube?",
        choices=choices, source_size=(640, 480), model_size=(644, 476), prompt_tokens=412,
        generated_tokens=97, timings=Timings(preprocess_s=0.25, generate_s=1.5, parse_s=0.005),
    )


def camera_info(width: int = 640, height: int = 480, fx: float = 500.0) -> CameraInfo:
    info = CameraInfo(width=width, height=height)
    info.k = [fx, 0.0, width / 2.0, 0.0, fx, height / 2.0, 0.0, 0.0, 1.0]
    return info


# ------------------------------------------------------------------ scene graphs


def test_scene_graph_to_msg_fields_and_header_copy() -> None:
    source_header = header()
    msg = conversions.scene_graph_to_msg(core_graph(), source_header, "a cube and a ball")
    source_header.frame_id = "changed_later"
    source_header.stamp.sec = 1
    assert msg.header.frame_id == "camera_color_optical_frame"
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (1_700_000_000, 250_000_000)
    assert (msg.image_width, msg.image_height, msg.observation) == (640, 480, "a cube and a ball")
    cube, ball, lamp = msg.objects
    assert (cube.id, cube.label, cube.has_box, cube.has_position) == ("cube.1", "cube", True, True)
    assert (cube.x_min, cube.y_min, cube.x_max, cube.y_max) == (64.0, 120.5, 256.25, 360.0)
    assert (cube.position.x, cube.position.y, cube.position.z) == (-0.5, 0.25, 2.0)
    assert ball.has_box and not ball.has_position
    assert not lamp.has_box and not lamp.has_position
    assert [(r.subject_id, r.predicate, r.object_id) for r in msg.relations] == [
        ("cube.1", "left of", "ball.1"), ("lamp.1", "above", "cube.1")]


def test_scene_graph_round_trip_through_cdr() -> None:
    graph = core_graph()
    msg = conversions.scene_graph_to_msg(graph, header())
    back = deserialize_message(serialize_message(msg), SceneGraphMsg)
    assert conversions.msg_to_scene_graph(back) == graph


def test_empty_graph_and_missing_header() -> None:
    msg = conversions.scene_graph_to_msg(SceneGraph())
    assert msg.header == Header() and list(msg.objects) == [] and msg.image_width == 0
    assert conversions.msg_to_scene_graph(msg) == SceneGraph()


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, 1e39])
def test_unusable_coordinates_become_absent_not_errors(bad: float) -> None:
    graph = SceneGraph(objects=(
        SceneObject("a.1", "a", Box(0.0, 0.0, bad, 10.0), (0.0, bad, 1.0)),
    ))
    obj = conversions.scene_graph_to_msg(graph).objects[0]
    assert not obj.has_box and not obj.has_position
    serialize_message(conversions.scene_graph_to_msg(graph))


# ------------------------------------------------------------------ answers


@pytest.mark.parametrize(("parse_status", "answer_status"), [
    (ParseStatus.OK, SpatialAnswerMsg.STATUS_OK),
    (ParseStatus.PARTIAL, SpatialAnswerMsg.STATUS_PARTIAL),
    (ParseStatus.PARSE_ERROR, SpatialAnswerMsg.STATUS_PARSE_ERROR),
])
def test_parse_status_mapping(parse_status: ParseStatus, answer_status: int) -> None:
    assert conversions.STATUS_OF_PARSE[parse_status] == answer_status
    msg = SpatialAnswerMsg(status=answer_status)
    assert conversions.parse_status_of(msg) is parse_status


def test_statuses_named_and_only_parse_statuses_map_back() -> None:
    assert set(conversions.STATUS_NAMES.values()) == {
        "OK", "PARTIAL", "PARSE_ERROR", "NO_IMAGE", "STALE_IMAGE", "BUSY", "INFERENCE_ERROR",
        "TIMEOUT", "CANCELED", "INVALID_REQUEST"}
    assert conversions.parse_status_of(
        SpatialAnswerMsg(status=SpatialAnswerMsg.STATUS_BUSY)) is None


def test_answer_to_msg_from_engine_result() -> None:
    result = engine_result()
    msg = conversions.answer_to_msg(result, header(), request_id="req-7")
    assert msg.status == SpatialAnswerMsg.STATUS_OK and msg.status_message == ""
    assert (msg.option, msg.answer_text, msg.matched_choice) == ("A", "left", "left")
    assert msg.question == "Where is the cube?" and tuple(msg.choices) == CHOICES
    assert msg.request_id == "req-7"
    assert msg.reasoning.startswith("The cube box ends at x=256")
    assert msg.raw_output == EXAMPLE_OUTPUT
    assert msg.generated_tokens == 97
    assert conversions.duration_to_seconds(msg.inference_time) == pytest.approx(1.755)
    assert msg.header == header() and msg.scene_graph.header == header()
    assert msg.scene_graph.observation.startswith("A red cube stands left of a blue ball")
    assert [o.id for o in msg.scene_graph.objects] == ["cube.1", "ball.1"]
    assert msg.scene_graph.objects[0].x_max == 256.0
    back = deserialize_message(serialize_message(msg), SpatialAnswerMsg)
    assert back == msg


def test_answer_to_msg_partial_and_parse_error_keep_the_reason() -> None:
    partial = conversions.answer_to_msg(engine_result("<answer> (B) right"), header())
    assert partial.status == SpatialAnswerMsg.STATUS_PARTIAL
    assert "missing <scene>" in partial.status_message
    assert (partial.option, partial.matched_choice) == ("B", "right")
    failed = conversions.answer_to_msg(engine_result("I like turtles"), header())
    assert failed.status == SpatialAnswerMsg.STATUS_PARSE_ERROR
    assert failed.option == "" and failed.raw_output == "I like turtles"
    assert failed.status_message


def test_answer_to_msg_reuses_a_streamed_graph() -> None:
    streamed = conversions.scene_graph_to_msg(core_graph(), header(), "streamed")
    msg = conversions.answer_to_msg(engine_result(), header(), scene_graph=streamed)
    assert msg.scene_graph.observation == "streamed"
    assert len(msg.scene_graph.objects) == 3


def test_status_answer_echoes_the_request() -> None:
    msg = conversions.status_answer(
        SpatialAnswerMsg.STATUS_BUSY, "queue full", request_id="r2",
        question="Where is it?", choices=["here", "there"])
    assert msg.status == SpatialAnswerMsg.STATUS_BUSY and msg.status_message == "queue full"
    assert (msg.request_id, msg.question, list(msg.choices)) == ("r2", "Where is it?",
                                                                ["here", "there"])
    assert msg.header == Header() and list(msg.scene_graph.objects) == []
    stale = conversions.status_answer(SpatialAnswerMsg.STATUS_STALE_IMAGE, "old", header=header())
    assert stale.header == header() and stale.scene_graph.header == header()
    serialize_message(stale)


def test_status_answer_rejects_unknown_status() -> None:
    with pytest.raises(ValueError, match="unknown SpatialAnswer status 42"):
        conversions.status_answer(42, "?")


@pytest.mark.parametrize(("seconds", "sec", "nanosec"), [
    (0.0, 0, 0), (1.5, 1, 500_000_000), (-3.0, 0, 0), (math.nan, 0, 0), (2.9999999999, 3, 0),
    (1e12, 2**31 - 1, 999_999_999), (math.inf, 2**31 - 1, 999_999_999),
])
def test_seconds_to_duration(seconds: float, sec: int, nanosec: int) -> None:
    duration = conversions.seconds_to_duration(seconds)
    assert (duration.sec, duration.nanosec) == (sec, nanosec)


# ------------------------------------------------------------------ images


def test_rgb_round_trips_through_an_image_message() -> None:
    rgb = np.random.default_rng(0).integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
    msg = conversions.rgb_to_image_msg(rgb, header())
    assert (msg.width, msg.height, msg.encoding, msg.step) == (64, 48, "rgb8", 192)
    assert msg.header == header()
    back = deserialize_message(serialize_message(msg), Image)
    np.testing.assert_array_equal(conversions.image_msg_to_rgb(back), rgb)
    bgr = conversions.rgb_to_image_msg(rgb, encoding="bgr8")
    assert bytes(bgr.data[:3]) == bytes(rgb[0, 0, ::-1])
    np.testing.assert_array_equal(conversions.image_msg_to_rgb(bgr), rgb)


def test_compressed_image_round_trip() -> None:
    rgb = np.zeros((32, 40, 3), dtype=np.uint8)
    rgb[:, :20] = (200, 30, 30)
    msg = conversions.rgb_to_compressed_msg(rgb, header(), quality=95)
    assert msg.format == "jpeg" and msg.header == header()
    back = conversions.image_msg_to_rgb(deserialize_message(serialize_message(msg),
                                                            CompressedImage))
    assert back.shape == rgb.shape
    assert np.abs(back.astype(int) - rgb.astype(int)).mean() < 8  # JPEG is lossy


def test_bad_image_messages_raise_image_conversion_error() -> None:
    short = Image(width=10, height=10, encoding="rgb8", step=30, data=[0] * 20)
    with pytest.raises(ImageConversionError):
        conversions.image_msg_to_rgb(short)
    with pytest.raises(ImageConversionError):
        conversions.image_msg_to_rgb(Image(width=2, height=2, encoding="yuv9", step=6,
                                           data=[0] * 12))
    with pytest.raises(ImageConversionError):
        conversions.image_msg_to_rgb(CompressedImage(format="jpeg", data=[1, 2, 3]))


def test_depth_message_to_meters() -> None:
    millimetres = np.array([[0, 1000], [1500, 65535]], dtype=np.uint16)
    msg = Image(width=2, height=2, encoding="16UC1", step=4, data=millimetres.tobytes())
    meters = conversions.depth_msg_to_meters(msg)
    assert math.isnan(meters[0, 0])
    assert meters[0, 1] == pytest.approx(1.0) and meters[1, 0] == pytest.approx(1.5)


# ------------------------------------------------------------------ camera info


def test_camera_info_to_intrinsics() -> None:
    info = camera_info(fx=525.0)
    assert conversions.camera_info_to_intrinsics(info) == CameraIntrinsics(525.0, 525.0, 320.0,
                                                                           240.0)
    assert conversions.camera_info_to_intrinsics(CameraInfo()) is None  # uncalibrated: K = 0
    info.k[0] = math.nan
    assert conversions.camera_info_to_intrinsics(info) is None


def test_intrinsics_scaled_to_another_image_size() -> None:
    scaled = conversions.intrinsics_for_size(camera_info(fx=500.0), 320, 240)
    assert scaled == CameraIntrinsics(250.0, 250.0, 160.0, 120.0)


# ------------------------------------------------------------------ markers


def _by_ns(array: MarkerArray, ns: str) -> list[Marker]:
    return [m for m in array.markers if m.ns == ns]


def test_markers_boxes_labels_and_relations() -> None:
    graph_msg = conversions.scene_graph_to_msg(core_graph(), header())
    array = markers.scene_graph_markers(graph_msg, camera_info(fx=500.0), lifetime_s=5.0)
    first = array.markers[0]
    assert first.action == Marker.DELETEALL
    assert all(m.header == header() for m in array.markers)

    (cube,) = _by_ns(array, markers.NAMESPACE_BOXES)  # only cube.1 has a 3D position
    assert cube.type == Marker.CUBE and cube.action == Marker.ADD
    assert (cube.pose.position.x, cube.pose.position.y, cube.pose.position.z) == (-0.5, 0.25, 2.0)
    # box 192.25 x 239.5 px at 2 m with fx = fy = 500 px
    assert cube.scale.x == pytest.approx(192.25 * 2.0 / 500.0)
    assert cube.scale.y == pytest.approx(239.5 * 2.0 / 500.0)
    assert (cube.lifetime.sec, cube.lifetime.nanosec) == (5, 0)
    assert 0.0 < cube.color.a < 1.0

    labels = {m.text: m for m in _by_ns(array, markers.NAMESPACE_LABELS)}
    assert set(labels) == {"cube.1", "ball.1 (no depth)"}  # lamp.1 has no box: nothing to place
    assert all(m.type == Marker.TEXT_VIEW_FACING for m in labels.values())
    assert labels["cube.1"].pose.position.y < cube.pose.position.y  # above the cube (y down)
    ball = labels["ball.1 (no depth)"]
    # Ray through the ball box centre (480, 300) px at the nominal label depth.
    assert ball.pose.position.z == pytest.approx(2.0)
    assert ball.pose.position.x == pytest.approx((480 - 320) * 2.0 / 500.0)
    assert ball.pose.position.y == pytest.approx((300 - 240) * 2.0 / 500.0)

    # Both relations name an object without a 3D position: no arrows.
    assert _by_ns(array, markers.NAMESPACE_RELATIONS) == []
    ids = [(m.ns, m.id) for m in array.markers[1:]]
    assert len(ids) == len(set(ids))
    deserialize_message(serialize_message(array), MarkerArray)


def test_relation_arrow_between_located_objects() -> None:
    graph = core_graph()
    located = graph.with_objects(tuple(replace(o, position=(float(i), 0.0, 1.0))
                                       for i, o in enumerate(graph.objects)))
    array = markers.scene_graph_markers(conversions.scene_graph_to_msg(located, header()))
    relations = _by_ns(array, markers.NAMESPACE_RELATIONS)
    arrows = [m for m in relations if m.type == Marker.ARROW]
    texts = sorted(m.text for m in relations if m.type == Marker.TEXT_VIEW_FACING)
    assert len(arrows) == 2 and texts == ["above", "left of"]
    start, end = arrows[0].points
    assert (start.x, end.x) == (0.0, 1.0)  # cube.1 -> ball.1
    assert len(_by_ns(array, markers.NAMESPACE_BOXES)) == 3


def test_empty_graph_markers_only_clear() -> None:
    array = markers.scene_graph_markers(SceneGraphMsg(header=header()))
    assert [m.action for m in array.markers] == [Marker.DELETEALL]


def test_label_colours_are_stable_per_class() -> None:
    assert markers.label_color("cup") == markers.label_color("cup")
    assert markers.label_color("cup") != markers.label_color("laptop")


def test_detections_mirror_needs_vision_msgs() -> None:
    graph_msg = conversions.scene_graph_to_msg(core_graph(), header())
    try:
        import vision_msgs  # noqa: F401
    except ImportError:
        assert markers.detection_message_type() is None
        assert markers.detections_mirror(graph_msg) is None
        return
    mirror = markers.detections_mirror(graph_msg)  # pragma: no cover - vision_msgs absent here
    assert [d.id for d in mirror.detections] == ["cube.1", "ball.1"]
    assert mirror.detections[0].bbox.size_x == pytest.approx(192.25)
