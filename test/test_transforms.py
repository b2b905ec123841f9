"""core.transforms: rigid transforms (checked), 3D extents from depth, positions and sizes in a
target frame (core.depth.AlignedDepth). Expected values are computed here independently."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spatialthinker_ros.core.depth import AlignedDepth, CameraIntrinsics
from spatialthinker_ros.core.scene import Box, SceneGraph, SceneObject
from spatialthinker_ros.core.serialize import scene_graph_to_dict
from spatialthinker_ros.core.transforms import (
    QUATERNION_TOLERANCE,
    RigidTransform,
    TransformError,
    object_extents,
)

K = CameraIntrinsics(fx=525.0, fy=525.0, cx=320.0, cy=240.0)


def axis_angle_quaternion(axis, angle):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    return (*(axis * math.sin(angle / 2)), math.cos(angle / 2))


def rodrigues(axis, angle):
    """Rotation matrix from axis-angle (independent of the quaternion formula under test)."""
    k = np.asarray(axis, float) / np.linalg.norm(axis)
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + math.sin(angle) * kx + (1 - math.cos(angle)) * kx @ kx


def test_apply_is_rotation_then_translation():
    axis, angle = (0.3, -1.0, 0.5), 1.1
    t = RigidTransform.from_xyzq(0.5, -0.2, 1.0, *axis_angle_quaternion(axis, angle),
                                 target_frame="base_link", source_frame="cam", stamp_ns=7)
    points = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [-0.4, 0.1, 2.5]])
    expected = points @ rodrigues(axis, angle).T + [0.5, -0.2, 1.0]
    assert t.apply(points) == pytest.approx(expected, abs=1e-12)
    assert t.apply_point((1.0, 2.0, 3.0)) == pytest.approx(tuple(expected[0]), abs=1e-12)
    assert (t.target_frame, t.source_frame, t.stamp_ns) == ("base_link", "cam", 7)


def test_optical_to_base_link_convention():
    # The usual camera_optical -> camera_link rotation (z ahead -> x ahead, x right -> -y).
    t = RigidTransform.from_xyzq(0.1, 0.0, 1.2, -0.5, 0.5, -0.5, 0.5)
    assert t.apply_point((0.0, 0.0, 2.0)) == pytest.approx((2.1, 0.0, 1.2))
    assert t.apply_point((1.0, 0.0, 0.0)) == pytest.approx((0.1, -1.0, 1.2))
    assert t.apply_point((0.0, 1.0, 0.0)) == pytest.approx((0.1, 0.0, 0.2))


def test_near_unit_quaternion_is_normalised_far_one_refused():
    q = np.array(axis_angle_quaternion((1, 2, 3), 0.7))
    near = RigidTransform.from_xyzq(0, 0, 0, *(q * 1.004))
    assert math.fsum(v * v for v in near.rotation) == pytest.approx(1.0, abs=1e-12)
    assert near.rotation == pytest.approx(tuple(q), abs=1e-12)
    with pytest.raises(TransformError, match="not a unit quaternion"):
        RigidTransform.from_xyzq(0, 0, 0, *(q * 1.1))
    with pytest.raises(TransformError, match="not a unit quaternion"):
        RigidTransform.from_xyzq(0, 0, 0, 0, 0, 0, 0)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("where", range(7))
def test_non_finite_numbers_are_refused_with_the_part(bad, where):
    values = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]
    values[where] = bad
    with pytest.raises(TransformError, match="translation" if where < 3 else "rotation"):
        RigidTransform.from_xyzq(*values)


def test_non_numbers_are_refused():
    with pytest.raises(TransformError, match="not numbers"):
        RigidTransform.from_xyzq("x", 0, 0, 0, 0, 0, 1)  # type: ignore[arg-type]


finite = st.floats(-1e6, 1e6, allow_nan=False)
anything = st.floats(allow_nan=True, allow_infinity=True)


@settings(max_examples=500, deadline=None)
@given(t=st.tuples(anything, anything, anything), q=st.tuples(anything, anything, anything,
                                                               anything))
def test_fuzz_any_numbers_give_a_checked_transform_or_a_reason(t, q):
    try:
        transform = RigidTransform.from_xyzq(*t, *q)
    except TransformError as exc:
        text = str(exc)
        assert text and "\n" not in text
        norm2 = math.fsum(v * v for v in q) if all(map(math.isfinite, q)) else math.nan
        assert not (all(map(math.isfinite, t)) and abs(norm2 - 1.0) < QUATERNION_TOLERANCE)
        return
    assert all(map(math.isfinite, transform.translation))
    assert math.fsum(v * v for v in transform.rotation) == pytest.approx(1.0, abs=1e-9)
    r = transform.matrix()
    assert r @ r.T == pytest.approx(np.eye(3), abs=1e-9)
    assert np.linalg.det(r) == pytest.approx(1.0, abs=1e-9)


@settings(max_examples=300, deadline=None)
@given(q=st.tuples(finite, finite, finite, finite), scale=st.floats(0.0, 3.0))
def test_fuzz_bad_quaternions(q, scale):
    n = math.sqrt(math.fsum(v * v for v in q))
    if n == 0.0:
        with pytest.raises(TransformError):
            RigidTransform.from_xyzq(0, 0, 0, *q)
        return
    scaled = tuple(v / n * scale for v in q)
    norm2 = math.fsum(v * v for v in scaled)
    if abs(norm2 - 1.0) < QUATERNION_TOLERANCE * 0.99:
        transform = RigidTransform.from_xyzq(0, 0, 0, *scaled)
        assert transform.rotation == pytest.approx(tuple(v / n for v in q), abs=1e-9)
    elif abs(norm2 - 1.0) > QUATERNION_TOLERANCE * 1.01:
        with pytest.raises(TransformError, match="unit quaternion"):
            RigidTransform.from_xyzq(0, 0, 0, *scaled)


# ------------------------------------------------------------------ extents


def scene_depth():
    """Floor at 3 m, a 192 x 240 px box-face at 1.5 m (the sample bag's cube)."""
    depth = np.full((480, 640), 3.0, np.float32)
    depth[120:360, 64:256] = 1.5
    return depth


def test_extents_of_a_flat_face_in_the_camera_frame():
    box = Box(50, 110, 270, 370)  # larger than the face: the floor at 3 m is dropped
    extents, why = object_extents(box, scene_depth(), K)
    assert why == ""
    assert extents.points == 192 * 240
    # pixels 64..255 with their footprints: u in [63.5, 255.5]; x = (u - cx) z / fx
    x0, x1 = (63.5 - 320) * 1.5 / 525, (255.5 - 320) * 1.5 / 525
    y0, y1 = (119.5 - 240) * 1.5 / 525, (359.5 - 240) * 1.5 / 525
    assert extents.size == pytest.approx((x1 - x0, y1 - y0, 0.0))
    assert extents.center == pytest.approx(((x0 + x1) / 2, (y0 + y1) / 2, 1.5))


def test_extents_keep_points_within_the_threshold_of_the_median():
    depth = scene_depth()
    depth[200:210, 100:110] = 1.6  # a bump within 0.3 m: kept
    depth[220:230, 100:110] = 0.5  # an occluder 1 m in front: dropped
    extents, _ = object_extents(Box(64, 120, 256, 360), depth, K)
    assert extents.size[2] == pytest.approx(0.1, abs=1e-6)
    assert extents.points == 192 * 240 - 100
    narrow, _ = object_extents(Box(64, 120, 256, 360), depth, K, max_distance_m=0.05)
    assert narrow.size[2] == pytest.approx(0.0)


def test_extents_give_the_reason_when_too_few_points():
    depth = np.full((480, 640), np.nan, np.float32)
    depth[0, 0] = 1.0
    extents, why = object_extents(Box(0, 0, 100, 100), depth, K)
    assert extents is None and "too few valid depth pixels" in why
    extents, why = object_extents(Box(700, 10, 800, 20), depth, K)
    assert extents is None and "empty" in why
    zeros = np.zeros((480, 640), np.float32)
    assert object_extents(Box(0, 0, 640, 480), zeros, K)[0] is None


def test_extents_in_a_target_frame_are_the_transformed_points_box():
    t = RigidTransform.from_xyzq(0.1, 0.0, 1.2, -0.5, 0.5, -0.5, 0.5, target_frame="base_link")
    extents, _ = object_extents(Box(64, 120, 256, 360), scene_depth(), K, t)
    cam, _ = object_extents(Box(64, 120, 256, 360), scene_depth(), K)
    # optical x -> -y, y -> -z, z -> x: a flat face becomes flat along base_link's x
    assert extents.size == pytest.approx((cam.size[2], cam.size[0], cam.size[1]), abs=1e-9)
    assert extents.center == pytest.approx(t.apply_point(cam.center), abs=1e-9)


def test_extents_after_a_general_rotation_are_the_mapped_pixel_footprints_box():
    axis, angle = (1.0, 1.0, 0.2), 0.8
    t = RigidTransform.from_xyzq(1, 2, 3, *axis_angle_quaternion(axis, angle))
    depth = scene_depth()
    depth[120:360, 64:256] += np.linspace(0, 0.2, 192, dtype=np.float32)  # a slanted face
    extents, _ = object_extents(Box(64, 120, 160, 240), depth, K, t)  # < MAX_SAMPLES: exact
    vs, us = np.mgrid[120:240, 64:160]
    z = depth[120:240, 64:160].astype(float)
    corners = np.concatenate([  # every pixel's square, its four corners at its depth
        np.stack([(us + du - 320) * z / 525, (vs + dv - 240) * z / 525, z], -1).reshape(-1, 3)
        for du in (-0.5, 0.5) for dv in (-0.5, 0.5)])
    mapped = corners @ rodrigues(axis, angle).T + [1, 2, 3]
    low, high = mapped.min(0), mapped.max(0)
    assert extents.size == pytest.approx(tuple(high - low), abs=1e-9)
    assert extents.center == pytest.approx(tuple((high + low) / 2), abs=1e-9)


def test_a_large_box_is_sampled_and_exact_to_a_cell():
    depth = np.full((1080, 1920), 3.0, np.float32)
    depth[200:900, 300:1500] = 1.5  # a 1200 x 700 face: sampled every 8 pixels
    k = CameraIntrinsics(fx=1400.0, fy=1400.0, cx=960.0, cy=540.0)
    extents, _ = object_extents(Box(296, 196, 1504, 904), depth, k)
    assert extents.points == pytest.approx(1200 * 700, rel=0.03)
    cell = 8 * 1.5 / 1400
    assert extents.size[0] == pytest.approx(1200 * 1.5 / 1400, abs=cell)
    assert extents.size[1] == pytest.approx(700 * 1.5 / 1400, abs=cell)
    assert extents.size[2] == 0.0


# ------------------------------------------------------------------ AlignedDepth with a frame


class Msg:
    def __init__(self, **fields):
        self.__dict__.update(fields)


def depth_message(depth_m: np.ndarray):
    h, w = depth_m.shape
    return Msg(encoding="32FC1", width=w, height=h, step=w * 4, is_bigendian=0,
               data=depth_m.astype("<f4").tobytes())


INFO = Msg(k=[525.0, 0, 320.0, 0, 525.0, 240.0, 0, 0, 1], width=640, height=480)
GRAPH = SceneGraph((SceneObject("cube.1", "cube", Box(64, 120, 256, 360)),
                    SceneObject("air.1", "air", None)), image_width=640, image_height=480)


def test_positions_and_sizes_in_the_target_frame_equal_r_p_plus_t():
    camera = AlignedDepth(depth_message(scene_depth()), INFO, (640, 480)).locate(GRAPH)
    axis, angle = (0.2, 1.0, -0.4), 2.0
    q = axis_angle_quaternion(axis, angle)
    t = RigidTransform.from_xyzq(0.3, -0.1, 0.9, *q, target_frame="base_link")
    located = AlignedDepth(depth_message(scene_depth()), INFO, (640, 480),
                           transform=t).locate(GRAPH)
    assert camera.positions_frame_id == "" and located.positions_frame_id == "base_link"
    p = np.array(camera.objects[0].position)
    expected = rodrigues(axis, angle) @ p + [0.3, -0.1, 0.9]
    assert np.abs(np.array(located.objects[0].position) - expected).max() < 1e-3
    assert camera.objects[0].size == pytest.approx((192 * 1.5 / 525, 240 * 1.5 / 525, 0.0))
    assert located.objects[0].size is not None
    assert located.objects[1].position is None and located.objects[1].size is None
    record = scene_graph_to_dict(located)
    assert record["positions_frame_id"] == "base_link"
    assert record["objects"][0]["size"] == [round(v, 4) for v in located.objects[0].size]


def test_a_missing_transform_means_no_positions_and_says_why():
    placed = GRAPH.with_objects((SceneObject("cube.1", "cube", Box(64, 120, 256, 360),
                                             position=(1.0, 2.0, 3.0), size=(1.0, 1.0, 1.0)),))
    depth = AlignedDepth(depth_message(scene_depth()), INFO, (640, 480),
                         transform_error='"map" passed to lookupTransform does not exist\nx')
    located = depth.locate(placed)
    assert located.objects[0].position is None and located.objects[0].size is None
    assert depth.note(located) == 'no 3D positions: "map" passed to lookupTransform does not ' \
                                  "exist x"


def test_from_msg_reads_a_transform_stamped_by_field_name():
    msg = Msg(header=Msg(frame_id="base_link", stamp=Msg(sec=3, nanosec=5)),
              child_frame_id="cam",
              transform=Msg(translation=Msg(x=1.0, y=2.0, z=3.0),
                            rotation=Msg(x=0.0, y=0.0, z=0.0, w=1.0)))
    t = RigidTransform.from_msg(msg)
    assert (t.target_frame, t.source_frame, t.stamp_ns) == ("base_link", "cam", 3 * 10**9 + 5)
    assert t.apply_point((0.0, 0.0, 0.0)) == (1.0, 2.0, 3.0)
    with pytest.raises(TransformError, match="not a TransformStamped"):
        RigidTransform.from_msg(Msg(header=None))


def test_with_transform_shares_the_depth_and_takes_a_reason():
    depth = AlignedDepth(depth_message(scene_depth()), INFO, (640, 480))
    t = RigidTransform.from_xyzq(1, 0, 0, 0, 0, 0, 1, target_frame="odom")
    moved = depth.with_transform(t).locate(GRAPH)
    assert moved.positions_frame_id == "odom"
    assert moved.objects[0].position == pytest.approx(
        np.add(depth.locate(GRAPH).objects[0].position, (1, 0, 0)))
    refused = depth.with_transform("extrapolation into the future")
    assert refused.locate(GRAPH).objects[0].position is None
    assert refused.note(refused.locate(GRAPH)) == "no 3D positions: extrapolation into the future"
    assert depth.locate(GRAPH).objects[0].position is not None  # the original is unchanged


# ------------------------------------------------------------------ what a planner gets


def test_planner_result_and_tool_json_name_the_positions_frame():
    from spatialthinker_ros.core.fields import FrameHeader
    from spatialthinker_ros.core.spatial_result import SpatialResult, result_to_json
    from spatialthinker_ros.core.status import AnswerStatus
    from spatialthinker_ros.tool_schema import tool_description

    header = FrameHeader(1, 0, "camera_color_optical_frame")
    placed = SceneObject("cube.1", "cube", Box(0, 0, 1, 1), position=(1.0, 2.0, 0.5),
                         size=(0.2, 0.3, 0.4))
    in_camera = SpatialResult(AnswerStatus.OK, scene_graph=SceneGraph((placed,)), header=header)
    in_base = SpatialResult(AnswerStatus.OK, header=header, scene_graph=SceneGraph(
        (placed,), positions_frame_id="base_link"))
    unplaced = SpatialResult(AnswerStatus.OK, header=header, scene_graph=SceneGraph(
        (SceneObject("cube.1", "cube", Box(0, 0, 1, 1)),), positions_frame_id="base_link"))
    assert in_camera.positions_frame_id == "camera_color_optical_frame"
    assert in_base.positions_frame_id == "base_link"
    assert unplaced.positions_frame_id == ""
    record = result_to_json(in_base)
    assert record["positions_frame_id"] == record["scene_graph"]["positions_frame_id"] \
        == "base_link"
    assert record["frame_id"] == "camera_color_optical_frame"  # the image's, for the boxes
    assert record["scene_graph"]["objects"][0]["size"] == [0.2, 0.3, 0.4]
    assert result_to_json(in_camera)["scene_graph"]["positions_frame_id"] == \
        "camera_color_optical_frame"
    assert "positions_frame_id" in tool_description() and "size" in tool_description()
