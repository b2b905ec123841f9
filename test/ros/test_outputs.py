"""The output contents (core.outputs) built through both message factories: rclpy's (the live
node) and rosbags' (replay). The same result must give the same messages either way, so a
replayed bag shows exactly what the node publishes.

No rclpy context: messages are built, serialized and read back in-process."""

from __future__ import annotations

import math
import os
from dataclasses import fields, is_dataclass, replace
from typing import Any

import numpy as np
import pytest

pytest.importorskip("spatialthinker_ros.msg", reason=os.environ.get(
    "SPATIALTHINKER_ROS_INTERFACES_UNAVAILABLE", "generated interfaces not importable"))

from builtin_interfaces.msg import Time  # noqa: E402
from rclpy.serialization import deserialize_message, serialize_message  # noqa: E402
from rosbags.typesys import get_types_from_msg  # noqa: E402
from sensor_msgs.msg import CameraInfo, CompressedImage, Image  # noqa: E402
from spatialthinker_ros.msg import SceneGraph as SceneGraphMsg  # noqa: E402
from spatialthinker_ros.msg import SpatialAnswer as SpatialAnswerMsg  # noqa: E402
from std_msgs.msg import Header  # noqa: E402
from visualization_msgs.msg import Marker, MarkerArray  # noqa: E402

from spatialthinker_ros.bag_types import BagMessages, make_typestore  # noqa: E402
from spatialthinker_ros.core import detections, outputs  # noqa: E402
from spatialthinker_ros.core.depth import (  # noqa: E402
    AlignedDepth,
    CameraIntrinsics,
    intrinsics_for_size,
    intrinsics_from_camera_info,
)
from spatialthinker_ros.core.images import ImageConversionError  # noqa: E402
from spatialthinker_ros.core.outputs import AnswerOutputs, FrameHeader, Request  # noqa: E402
from spatialthinker_ros.core.parsing import parse_output  # noqa: E402
from spatialthinker_ros.core.scene import (  # noqa: E402
    Box,
    ParseStatus,
    Relation,
    SceneGraph,
    SceneObject,
)
from spatialthinker_ros.core.status import (  # noqa: E402
    RETRYABLE,
    AnswerStatus,
    GoalOutcome,
    goal_outcome,
)
from spatialthinker_ros.core.types import Result, Timings  # noqa: E402
from spatialthinker_ros.ros import conversions  # noqa: E402
from spatialthinker_ros.ros.conversions import rclpy_message  # noqa: E402
from spatialthinker_ros.testing.tiny_model import EXAMPLE_OUTPUT  # noqa: E402

CHOICES = ("left", "right", "above", "below")
HEADER = FrameHeader(1_700_000_000, 250_000_000, "camera_color_optical_frame")
REQUEST = Request("Where is the cube?", CHOICES, "req-7", "")

# vision_msgs 4.x (Humble, Jazzy, Kilted), as upstream defines them: not installable here, so
# the mirror is checked against these definitions through rosbags.
VISION_MSGS = {
    "Point2D": "float64 x\nfloat64 y\n",
    "Pose2D": "vision_msgs/Point2D position\nfloat64 theta\n",
    "BoundingBox2D": "vision_msgs/Pose2D center\nfloat64 size_x\nfloat64 size_y\n",
    "ObjectHypothesis": "string class_id\nfloat64 score\n",
    "ObjectHypothesisWithPose": "vision_msgs/ObjectHypothesis hypothesis\n"
                                "geometry_msgs/PoseWithCovariance pose\n",
    "Detection2D": "std_msgs/Header header\nvision_msgs/ObjectHypothesisWithPose[] results\n"
                   "vision_msgs/BoundingBox2D bbox\nstring id\n",
    "Detection2DArray": "std_msgs/Header header\nvision_msgs/Detection2D[] detections\n",
}


@pytest.fixture(scope="module")
def store():
    store = make_typestore()
    types = {}
    for name, text in VISION_MSGS.items():
        types.update(get_types_from_msg(text, f"vision_msgs/msg/{name}"))
    store.register(types)
    return store


@pytest.fixture(scope="module")
def bag_make(store) -> BagMessages:
    return BagMessages(store)


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
        model="OX-PIXL/SpatialThinker-3B",
    )


def camera_info(width: int = 640, height: int = 480, fx: float = 500.0) -> CameraInfo:
    info = CameraInfo(width=width, height=height)
    info.k = [fx, 0.0, width / 2.0, 0.0, fx, height / 2.0, 0.0, 0.0, 1.0]
    return info


def depth_image(value_m: float = 2.0) -> Image:
    depth = np.full((480, 640), value_m, dtype=np.float32)
    return Image(width=640, height=480, encoding="32FC1", step=640 * 4, data=depth.tobytes())


def plain(value: Any) -> Any:
    """A rosbags message as nested dicts/lists (numpy arrays as lists), for equality."""
    if is_dataclass(value):
        return {f.name: plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def as_bag(store, msg: Any, msgtype: str) -> Any:
    """An rclpy message read back through rosbags (CDR in between)."""
    return plain(store.deserialize_cdr(bytes(serialize_message(msg)), msgtype))


def in_bag(store, msg: Any, msgtype: str) -> Any:
    """A rosbags message as a bag holds it (CDR: float32 fields rounded to float32)."""
    return plain(store.deserialize_cdr(store.serialize_cdr(msg, msgtype), msgtype))


# ------------------------------------------------------------------ node == replay


def test_node_and_replay_build_the_same_outputs(store, bag_make) -> None:
    """The same result, depth and camera info through both factories: every message equal."""
    result = engine_result()
    built = {}
    for name, make, info, depth in (
        ("node", rclpy_message, camera_info(), depth_image()),
        ("bag", bag_make, store.deserialize_cdr(bytes(serialize_message(camera_info())),
                                                "sensor_msgs/msg/CameraInfo"),
         store.deserialize_cdr(bytes(serialize_message(depth_image())),
                               "sensor_msgs/msg/Image")),
    ):
        out = AnswerOutputs(make, REQUEST, HEADER, depth=AlignedDepth(depth, info, (640, 480)),
                            camera_info=info)
        scene, answer = out.answer(result)
        rgb = np.zeros((480, 640, 3), dtype=np.uint8)
        built[name] = {
            "spatialthinker_ros/msg/SceneGraph": scene.scene_graph,
            "spatialthinker_ros/msg/SpatialAnswer": answer,
            "visualization_msgs/msg/MarkerArray": scene.markers,
            "sensor_msgs/msg/Image": out.debug_image(out.annotate(rgb, scene, result)),
        }
        assert all(o.position is not None for o in scene.graph.objects)
    for msgtype, node_msg in built["node"].items():
        # Both through CDR (float32 fields rounded alike), read back by rosbags.
        bag_msg = store.deserialize_cdr(store.serialize_cdr(built["bag"][msgtype], msgtype),
                                        msgtype)
        assert as_bag(store, node_msg, msgtype) == plain(bag_msg), msgtype
    arrows = [m for m in built["node"]["visualization_msgs/msg/MarkerArray"].markers
              if m.type == Marker.ARROW and m.action == Marker.ADD]
    assert len(arrows) == 1  # cube.1 -> ball.1, both placed by depth


def test_marker_constants_match_visualization_msgs() -> None:
    assert outputs.MARKER_ARROW == Marker.ARROW
    assert outputs.MARKER_CUBE == Marker.CUBE
    assert outputs.MARKER_TEXT_VIEW_FACING == Marker.TEXT_VIEW_FACING
    assert outputs.MARKER_ADD == Marker.ADD
    assert outputs.MARKER_DELETE == Marker.DELETE
    assert outputs.MARKER_DELETEALL == Marker.DELETEALL


def test_status_enum_matches_the_message_constants() -> None:
    generated = {n.removeprefix("STATUS_"): getattr(SpatialAnswerMsg, n)
                 for n in dir(SpatialAnswerMsg) if n.startswith("STATUS_")}
    assert generated == {s.name: int(s) for s in AnswerStatus}
    assert {s.name for s in RETRYABLE} == {"BUSY", "NO_IMAGE", "STALE_IMAGE", "TIMEOUT"}
    assert goal_outcome(AnswerStatus.PARTIAL, False) is GoalOutcome.SUCCEEDED
    assert goal_outcome(AnswerStatus.CANCELED, True) is GoalOutcome.CANCELED
    assert goal_outcome(AnswerStatus.CANCELED, False) is GoalOutcome.ABORTED
    assert goal_outcome(AnswerStatus.BUSY, True) is GoalOutcome.ABORTED


# ------------------------------------------------------------------ scene graphs


@pytest.mark.parametrize("factory", ["rclpy", "bag"])
def test_scene_graph_fields(factory: str, bag_make) -> None:
    make = rclpy_message if factory == "rclpy" else bag_make
    msg = outputs.scene_graph_msg(make, core_graph(), HEADER, "a cube and a ball")
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
    msg = outputs.scene_graph_msg(rclpy_message, graph, HEADER)
    back = deserialize_message(serialize_message(msg), SceneGraphMsg)
    assert conversions.msg_to_scene_graph(back) == graph


def test_header_of_copies_any_header() -> None:
    source = Header(stamp=Time(sec=3, nanosec=4), frame_id="cam")
    copy = conversions.header_of(source)
    source.frame_id = "changed later"
    assert (copy.stamp.sec, copy.stamp.nanosec, copy.frame_id) == (3, 4, "cam")
    assert conversions.header_of(None) == Header()


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, 1e39])
def test_unusable_coordinates_become_absent_not_errors(bad: float) -> None:
    graph = SceneGraph(objects=(
        SceneObject("a.1", "a", Box(0.0, 0.0, bad, 10.0), (0.0, bad, 1.0)),
    ))
    msg = outputs.scene_graph_msg(rclpy_message, graph, HEADER)
    assert not msg.objects[0].has_box and not msg.objects[0].has_position
    serialize_message(msg)
    serialize_message(outputs.markers_msg(rclpy_message, graph, HEADER))


@pytest.mark.parametrize("fx", [1e-300, 5e-324])
def test_markers_never_carry_non_finite_values(fx: float) -> None:
    """A CameraInfo with a focal length of almost nothing (positive and finite, so usable)
    made the cube of a placed object infinitely large: RViz refuses such a marker."""
    k = outputs.CameraIntrinsics(fx=fx, fy=fx, cx=320.0, cy=240.0)
    array = outputs.markers_msg(rclpy_message, core_graph(), HEADER, k)
    for marker in array.markers:
        values = [marker.pose.position.x, marker.pose.position.y, marker.pose.position.z,
                  marker.scale.x, marker.scale.y, marker.scale.z,
                  *(c for p in marker.points for c in (p.x, p.y, p.z))]
        assert all(math.isfinite(v) for v in values), (marker.ns, values)
    assert any(m.text == "cube.1" for m in array.markers)  # the label of the placed object stays


@pytest.mark.parametrize("factory", ["rclpy", "bag"])
def test_untrusted_strings_always_serialise(factory: str, store, bag_make) -> None:
    """Surrogates, NULs and control characters from a model or a bag never break a message."""
    make = rclpy_message if factory == "rclpy" else bag_make
    bad = "cup\ud800.1\x00\x07"
    graph = SceneGraph(objects=(SceneObject(bad, bad, Box(1.0, 1.0, 5.0, 5.0)),),
                       relations=(Relation(bad, "on\udfff", bad),), image_width=8,
                       image_height=8)
    header = FrameHeader(1, 2, "cam\ud800")
    msg = outputs.scene_graph_msg(make, graph, header, "obs\x00")
    if factory == "rclpy":
        data = serialize_message(msg)
        back = deserialize_message(data, SceneGraphMsg)
    else:
        data = store.serialize_cdr(msg, "spatialthinker_ros/msg/SceneGraph")
        back = store.deserialize_cdr(data, "spatialthinker_ros/msg/SceneGraph")
    assert back.objects[0].id == "cup\ufffd.1\ufffd\ufffd"
    assert back.relations[0].predicate == "on\ufffd" and back.observation == "obs\ufffd"
    assert back.header.frame_id == "cam\ufffd"


# ------------------------------------------------------------------ answers


def test_answer_from_engine_result() -> None:
    scene, msg = AnswerOutputs(rclpy_message, REQUEST, HEADER).answer(engine_result())
    assert msg.status == AnswerStatus.OK and msg.status_message == ""
    assert (msg.option, msg.answer_text, msg.matched_choice, msg.matched_index) == (
        "A", "left", "left", 0)
    assert msg.question == "Where is the cube?" and tuple(msg.choices) == CHOICES
    assert msg.request_id == "req-7"
    assert (msg.model, msg.prompt_version) == ("OX-PIXL/SpatialThinker-3B", "card-1")
    assert msg.reasoning.startswith("The cube box ends at x=256")
    assert msg.raw_output == EXAMPLE_OUTPUT
    assert msg.generated_tokens == 97
    assert conversions.stamp_to_seconds(msg.inference_time) == pytest.approx(1.755)
    assert msg.header == conversions.header_of(HEADER)
    assert msg.scene_graph is scene.scene_graph
    assert msg.scene_graph.observation.startswith("A red cube stands left of a blue ball")
    assert [o.id for o in msg.scene_graph.objects] == ["cube.1", "ball.1"]
    back = deserialize_message(serialize_message(msg), SpatialAnswerMsg)
    assert back == msg


def test_partial_and_parse_error_keep_the_reason() -> None:
    out = AnswerOutputs(rclpy_message, REQUEST, HEADER)
    _, partial = out.answer(engine_result("<answer> (B) right"))
    assert partial.status == AnswerStatus.PARTIAL
    assert "missing <scene>" in partial.status_message
    assert (partial.option, partial.matched_choice, partial.matched_index) == ("B", "right", 1)
    _, failed = AnswerOutputs(rclpy_message, REQUEST, HEADER).answer(
        engine_result("I like turtles"))
    assert failed.status == AnswerStatus.PARSE_ERROR
    assert failed.option == "" and failed.raw_output == "I like turtles"
    assert failed.matched_index == -1 and failed.status_message


def test_streamed_scene_outputs_are_reused_by_the_answer() -> None:
    result = engine_result()
    out = AnswerOutputs(rclpy_message, REQUEST, HEADER)
    streamed = out.scene(result.reasoning.scene_graph, "streamed")
    scene, answer = out.answer(result)
    assert scene is streamed and answer.scene_graph.observation == "streamed"


def test_status_answer_echoes_the_request() -> None:
    request = Request("Where is it?", ("here", "there"), "r2", "wrist")
    msg = outputs.status_answer_msg(rclpy_message, request, AnswerStatus.BUSY, "queue full")
    assert msg.status == AnswerStatus.BUSY and msg.status_message == "queue full"
    assert (msg.request_id, msg.question, list(msg.choices), msg.camera) == (
        "r2", "Where is it?", ["here", "there"], "wrist")
    assert msg.header == Header() and list(msg.scene_graph.objects) == []
    assert msg.matched_index == -1
    stale = outputs.status_answer_msg(rclpy_message, request, AnswerStatus.STALE_IMAGE, "old",
                                      HEADER)
    assert stale.header == conversions.header_of(HEADER)
    assert stale.scene_graph.header == stale.header
    serialize_message(stale)


def test_unknown_status_is_refused() -> None:
    with pytest.raises(ValueError):
        outputs.status_answer_msg(rclpy_message, REQUEST, 42, "?")


@pytest.mark.parametrize(("seconds", "sec", "nanosec"), [
    (0.0, 0, 0), (1.5, 1, 500_000_000), (-3.0, 0, 0), (math.nan, 0, 0), (2.9999999999, 3, 0),
    (1e12, 2**31 - 1, 999_999_999), (math.inf, 2**31 - 1, 999_999_999),
])
def test_duration_fields(seconds: float, sec: int, nanosec: int) -> None:
    assert outputs.duration_fields(seconds) == (sec, nanosec)


# ------------------------------------------------------------------ images


def test_rgb_round_trips_through_an_image_message() -> None:
    rgb = np.random.default_rng(0).integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
    msg = conversions.rgb_to_image_msg(rgb, HEADER)
    assert (msg.width, msg.height, msg.encoding, msg.step) == (64, 48, "rgb8", 192)
    back = deserialize_message(serialize_message(msg), Image)
    np.testing.assert_array_equal(conversions.image_msg_to_rgb(back), rgb)


def test_compressed_image_round_trip() -> None:
    rgb = np.zeros((32, 40, 3), dtype=np.uint8)
    rgb[:, :20] = (200, 30, 30)
    msg = conversions.rgb_to_compressed_msg(rgb, conversions.header_of(HEADER), quality=95)
    assert msg.format == "jpeg"
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


# ------------------------------------------------------------------ camera info and depth


def test_intrinsics_from_camera_info() -> None:
    info = camera_info(fx=525.0)
    assert intrinsics_from_camera_info(info) == CameraIntrinsics(525.0, 525.0, 320.0, 240.0)
    assert intrinsics_from_camera_info(CameraInfo()) is None  # uncalibrated: K = 0
    info.k[0] = math.nan
    assert intrinsics_from_camera_info(info) is None
    assert intrinsics_for_size(camera_info(fx=500.0), 320, 240) == CameraIntrinsics(
        250.0, 250.0, 160.0, 120.0)


@pytest.mark.parametrize("k0", [0.0, math.nan, math.inf, -5.0])
def test_bad_intrinsics_mean_no_position_never_a_crash(k0: float) -> None:
    info = camera_info()
    info.k[0] = k0
    depth = AlignedDepth(depth_image(), info, (640, 480))
    unplaced = core_graph().with_objects(
        tuple(replace(o, position=None) for o in core_graph().objects))
    graph = depth.locate(unplaced)
    assert all(o.position is None for o in graph.objects)
    assert "intrinsics" in depth.error


def test_depth_gives_positions_through_scaled_intrinsics() -> None:
    depth = AlignedDepth(depth_image(2.0), camera_info(fx=500.0), (1280, 960))
    graph = SceneGraph(objects=(SceneObject("a.1", "a", Box(640.0, 480.0, 660.0, 500.0)),),
                       image_width=1280, image_height=960)
    (obj,) = depth.locate(graph).objects
    # box centre (650, 490) px of 1280x960 -> (325, 245) of the 640x480 depth, fx 500, z 2 m
    assert obj.position == pytest.approx(((325 - 320) * 2 / 500, (245 - 240) * 2 / 500, 2.0))


# ------------------------------------------------------------------ markers


def _by_ns(array: MarkerArray, ns: str) -> list[Marker]:
    return [m for m in array.markers if m.ns == ns]


def test_markers_boxes_labels_and_relations() -> None:
    array = outputs.markers_msg(rclpy_message, core_graph(), HEADER,
                                intrinsics_from_camera_info(camera_info(fx=500.0)),
                                lifetime_s=5.0)
    first = array.markers[0]
    assert first.action == Marker.DELETEALL
    assert all(m.header == conversions.header_of(HEADER) for m in array.markers)

    (cube,) = _by_ns(array, outputs.NAMESPACE_BOXES)  # only cube.1 has a 3D position
    assert cube.type == Marker.CUBE and cube.action == Marker.ADD
    assert (cube.pose.position.x, cube.pose.position.y, cube.pose.position.z) == (-0.5, 0.25, 2.0)
    # box 192.25 x 239.5 px at 2 m with fx = fy = 500 px
    assert cube.scale.x == pytest.approx(192.25 * 2.0 / 500.0)
    assert cube.scale.y == pytest.approx(239.5 * 2.0 / 500.0)
    assert (cube.lifetime.sec, cube.lifetime.nanosec) == (5, 0)
    assert 0.0 < cube.color.a < 1.0

    labels = {m.text: m for m in _by_ns(array, outputs.NAMESPACE_LABELS)}
    assert set(labels) == {"cube.1", "ball.1 (no depth)"}  # lamp.1 has no box: nothing to place
    assert all(m.type == Marker.TEXT_VIEW_FACING for m in labels.values())
    assert labels["cube.1"].pose.position.y < cube.pose.position.y  # above the cube (y down)
    ball = labels["ball.1 (no depth)"]
    # Ray through the ball box centre (480, 300) px at the nominal label depth.
    assert ball.pose.position.z == pytest.approx(2.0)
    assert ball.pose.position.x == pytest.approx((480 - 320) * 2.0 / 500.0)
    assert ball.pose.position.y == pytest.approx((300 - 240) * 2.0 / 500.0)

    # Both relations name an object without a 3D position: no arrows.
    assert _by_ns(array, outputs.NAMESPACE_RELATIONS) == []
    ids = [(m.ns, m.id) for m in array.markers[1:]]
    assert len(ids) == len(set(ids))
    deserialize_message(serialize_message(array), MarkerArray)


def test_relation_arrow_between_located_objects() -> None:
    graph = core_graph()
    located = graph.with_objects(tuple(replace(o, position=(float(i), 0.0, 1.0))
                                       for i, o in enumerate(graph.objects)))
    array = outputs.markers_msg(rclpy_message, located, HEADER)
    relations = _by_ns(array, outputs.NAMESPACE_RELATIONS)
    arrows = [m for m in relations if m.type == Marker.ARROW]
    texts = sorted(m.text for m in relations if m.type == Marker.TEXT_VIEW_FACING)
    assert len(arrows) == 2 and texts == ["above", "left of"]
    start, end = arrows[0].points
    assert (start.x, end.x) == (0.0, 1.0)  # cube.1 -> ball.1
    assert len(_by_ns(array, outputs.NAMESPACE_BOXES)) == 3


def test_empty_graph_markers_only_clear() -> None:
    array = outputs.markers_msg(rclpy_message, SceneGraph(), HEADER)
    assert [m.action for m in array.markers] == [Marker.DELETEALL]


class RVizMarkers:
    """What a MarkerArray display shows, by (ns, id): ADD sets (or modifies) a marker, DELETE
    removes one, DELETEALL removes every marker of the display (RViz 2, Foxglove)."""

    def __init__(self) -> None:
        self.shown: dict[tuple[str, int], str] = {}

    def apply(self, array: MarkerArray) -> None:
        for m in array.markers:
            if m.action == Marker.DELETEALL:
                self.shown.clear()
            elif m.action == Marker.DELETE:
                self.shown.pop((m.ns, m.id), None)
            else:
                self.shown[(m.ns, m.id)] = m.text


def graph_of(n_located: int, n_relations: int = 0) -> SceneGraph:
    objects = tuple(SceneObject(f"o.{i}", "o", Box(10.0 * i, 0.0, 10.0 * i + 5, 5.0),
                                (float(i), 0.0, 2.0)) for i in range(n_located))
    relations = tuple(Relation(f"o.{i}", "near", f"o.{i + 1}") for i in range(n_relations))
    return SceneGraph(objects=objects, relations=relations, image_width=640, image_height=480)


def test_cameras_sharing_the_markers_topic_replace_only_their_own_markers() -> None:
    """Per-camera namespaces; each array clears exactly its camera's previous markers (a
    DELETEALL would clear every camera's): after any sequence, the display shows the union of
    each camera's newest graph."""
    sources = {name: outputs.MarkerSource(name) for name in ("head", "arm/wrist")}
    display = RVizMarkers()
    newest: dict[str, set[tuple[str, int]]] = {}
    sequence = [("head", graph_of(3, 2)), ("arm/wrist", graph_of(2, 1)), ("head", graph_of(1)),
                ("arm/wrist", graph_of(4, 3)), ("head", SceneGraph()), ("head", graph_of(2, 1)),
                ("arm/wrist", graph_of(0))]
    for name, graph in sequence:
        array = outputs.markers_msg(rclpy_message, graph, HEADER, source=sources[name])
        assert Marker.DELETEALL not in [m.action for m in array.markers]
        added = {(m.ns, m.id) for m in array.markers if m.action == Marker.ADD}
        assert all(ns.startswith(f"{name}/") for ns, _ in added)
        deleted = [(m.ns, m.id) for m in array.markers if m.action == Marker.DELETE]
        assert all(ns.startswith(f"{name}/") for ns, _ in deleted)
        assert not added & set(deleted)  # ids reused are modified in place, never deleted
        display.apply(array)
        newest[name] = added
        assert set(display.shown) == set().union(*newest.values())
    # Namespaces are the camera's name + the single-camera ones.
    array = outputs.markers_msg(rclpy_message, graph_of(2, 1), HEADER, source=sources["head"])
    assert {m.ns for m in array.markers if m.action == Marker.ADD} == {
        f"head/{outputs.NAMESPACE_BOXES}", f"head/{outputs.NAMESPACE_LABELS}",
        f"head/{outputs.NAMESPACE_RELATIONS}"}


def test_camera_markers_are_the_same_through_both_factories(bag_make, store) -> None:
    """Replay builds per-camera markers exactly as the node does."""
    built = {}
    for name, make in (("node", rclpy_message), ("bag", bag_make)):
        source = outputs.MarkerSource("wrist")
        outputs.markers_msg(make, graph_of(3, 2), HEADER, source=source)
        built[name] = outputs.markers_msg(make, graph_of(1), HEADER, source=source)
    msgtype = "visualization_msgs/msg/MarkerArray"
    assert as_bag(store, built["node"], msgtype) == in_bag(store, built["bag"], msgtype)
    # 3 cubes, 3 labels, 2 arrows + 2 predicates, then 1 cube and 1 label: 8 deleted
    assert [m.action for m in built["node"].markers].count(Marker.DELETE) == 2 + 2 + 4


def test_label_colours_are_stable_per_class() -> None:
    assert outputs.label_rgb("cup") == outputs.label_rgb("cup")
    assert outputs.label_rgb("cup") != outputs.label_rgb("laptop")


# ------------------------------------------------------------------ vision_msgs mirror


def test_detections_mirror_against_the_vision_msgs_definitions(store, bag_make) -> None:
    msg = detections.detections_msg(bag_make, core_graph(), HEADER)
    data = store.serialize_cdr(msg, "vision_msgs/msg/Detection2DArray")
    back = store.deserialize_cdr(data, "vision_msgs/msg/Detection2DArray")
    assert len(back.detections) == 2  # lamp.1 has no box
    cube = back.detections[0]
    assert cube.id == ""  # a tracking id in vision_msgs; ours are per graph
    assert cube.results[0].hypothesis.class_id == "cube"
    assert cube.results[0].hypothesis.score == 1.0
    assert cube.bbox.size_x == pytest.approx(192.25) and cube.bbox.size_y == pytest.approx(239.5)
    assert cube.bbox.center.position.x == pytest.approx(160.125)
    assert back.header.frame_id == HEADER.frame_id


def test_parse_status_mapping() -> None:
    from spatialthinker_ros.core.status import STATUS_OF_PARSE

    assert STATUS_OF_PARSE[ParseStatus.OK] == SpatialAnswerMsg.STATUS_OK
    assert STATUS_OF_PARSE[ParseStatus.PARTIAL] == SpatialAnswerMsg.STATUS_PARTIAL
    assert STATUS_OF_PARSE[ParseStatus.PARSE_ERROR] == SpatialAnswerMsg.STATUS_PARSE_ERROR
