"""target_frame (issue 26) with real rclpy, real tf2 (geometry2 built by scripts/setup.sh) and the
tiny offline model, in a loopback-only namespace.

The camera-frame position of each object is computed here from the answer's box, the CameraInfo
K and the depth (2 m everywhere), and the transform's R·p + t with NumPy from the quaternion the
test broadcast: independent of core.transforms and of tf2. Each test uses frame names of its
own (/tf is global; a static transform of an earlier test's node could otherwise linger).
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from typing import Any

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
tf2_ros = pytest.importorskip("tf2_ros", reason="tf2_ros not built (scripts/build_vendor.sh)")

from geometry_msgs.msg import TransformStamped  # noqa: E402
from lifecycle_msgs.srv import GetState  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402
from test_node import WAIT_S, wait_future, wait_until  # noqa: E402
from tf2_msgs.msg import TFMessage  # noqa: E402
from visualization_msgs.msg import MarkerArray  # noqa: E402

DEPTH_M = 2.0
K = (500.0, 500.0, 320.0, 240.0)  # fx, fy, cx, cy
MM = 1e-3
_names = itertools.count()


def unique(name: str) -> str:
    return f"{name}_{next(_names)}_{time.monotonic_ns() % 10**6}"


def rotation(q: tuple[float, float, float, float]) -> np.ndarray:
    """The rotation matrix of a unit quaternion (x, y, z, w), written out here."""
    x, y, z, w = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def quaternion(axis: tuple[float, float, float], angle: float) -> tuple[float, ...]:
    a = np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis)
    s = math.sin(angle / 2)
    return (a[0] * s, a[1] * s, a[2] * s, math.cos(angle / 2))


# The camera looks along base_link's x (optical z forward, x right, y down), turned 30 degrees
# about base_link's z and mounted 0.1 m ahead, 0.2 m left, 1.2 m up: a head camera.
OPTICAL_TO_BASE = (-0.5, 0.5, -0.5, 0.5)
YAW = quaternion((0.0, 0.0, 1.0), math.radians(30))


def compose(a: tuple[float, ...], b: tuple[float, ...]) -> tuple[float, ...]:
    """Quaternion product a * b (x, y, z, w)."""
    ax, ay, az, aw = a
    bx, by, bz, bw = b
    return (aw * bx + ax * bw + ay * bz - az * by, aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw, aw * bw - ax * bx - ay * by - az * bz)


HEAD_Q = compose(YAW, OPTICAL_TO_BASE)
HEAD_T = (0.1, 0.2, 1.2)


def transform(parent: str, child: str, t: tuple[float, ...], q: tuple[float, ...],
              stamp=None) -> TransformStamped:
    msg = TransformStamped()
    msg.header.frame_id, msg.child_frame_id = parent, child
    if stamp is not None:
        msg.header.stamp = stamp
    msg.transform.translation.x, msg.transform.translation.y, msg.transform.translation.z = t
    r = msg.transform.rotation
    r.x, r.y, r.z, r.w = q
    return msg


def camera_point(obj) -> np.ndarray:
    """The object's camera-frame position from its box, K and the 2 m depth."""
    fx, fy, cx, cy = K
    u, v = (obj.x_min + obj.x_max) / 2, (obj.y_min + obj.y_max) / 2
    return np.array([(u - cx) * DEPTH_M / fx, (v - cy) * DEPTH_M / fy, DEPTH_M])


def position(obj) -> np.ndarray:
    return np.array([obj.position.x, obj.position.y, obj.position.z])


def publish_depth(harness, stamp, frame_id: str, camera: str = "") -> None:
    """CameraInfo (K) and a 2 m depth frame at `stamp`, and wait until the node holds both."""
    reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    prefix = f"{camera}/" if camera else ""
    if camera:
        info_pub = harness.client.create_publisher(CameraInfo, f"{prefix}camera_info", reliable)
        depth_pub = harness.client.create_publisher(Image, f"{prefix}depth", reliable)
    else:
        info_pub, depth_pub = harness.info_pub, harness.depth_pub
    fx, fy, cx, cy = K
    info = CameraInfo(width=640, height=480)
    info.header.stamp, info.header.frame_id = stamp, frame_id
    info.k = [fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0]
    depth = Image(width=640, height=480, encoding="16UC1", step=640 * 2)
    depth.header.stamp, depth.header.frame_id = stamp, frame_id
    depth.data = np.full((480, 640), int(DEPTH_M * 1000), dtype=np.uint16).tobytes()
    node_camera = harness.node.intake.camera(camera)

    def held() -> bool:
        info_pub.publish(info)
        depth_pub.publish(depth)
        return node_camera.camera_info is not None and node_camera.depth.closest(
            stamp.sec + stamp.nanosec * 1e-9, 1e-6) is not None

    wait_until(held, what="depth and camera_info")


def assert_placed(answer, target: str, r: np.ndarray, t: np.ndarray) -> None:
    """Every object with a box has its position R·p + t (1 mm) in `target`."""
    graph = answer.scene_graph
    assert graph.positions_frame_id == target, answer.status_message
    assert graph.header.frame_id == answer.header.frame_id  # boxes stay in the image
    boxed = [o for o in graph.objects if o.has_box]
    assert boxed
    for obj in boxed:
        assert obj.has_position, answer.status_message
        expected = r @ camera_point(obj) + t
        np.testing.assert_allclose(position(obj), expected, atol=MM)
        assert obj.has_size


@pytest.fixture()
def served(make_harness):
    def make(target: str, **params: Any):
        return make_harness(use_depth=True, target_frame=target, **params)

    return make


def test_static_transform_gives_r_p_plus_t(served) -> None:
    base, cam = unique("base_link"), unique("head_optical")
    harness = served(base)
    static = tf2_ros.StaticTransformBroadcaster(harness.client)
    static.sendTransform(transform(base, cam, HEAD_T, HEAD_Q))
    markers: list[MarkerArray] = []
    harness.client.create_subscription(MarkerArray, "markers", markers.append, 10)
    stamp = harness.now()
    publish_depth(harness, stamp, cam)
    harness.send_frame(stamp=stamp, frame_id=cam)
    answer = harness.ask()
    assert answer.status == harness.SpatialAnswer.STATUS_OK, answer.status_message
    assert "no 3D position" not in answer.status_message
    assert_placed(answer, base, rotation(HEAD_Q), np.array(HEAD_T))
    # The scene_graph topic says the same; the markers' cubes are in the target frame.
    graphs = wait_until(lambda: [g for g in harness.messages("scene_graph")
                                 if g.header.stamp == stamp], what="the scene graph")
    assert graphs[-1].positions_frame_id == base
    cubes = wait_until(lambda: [m for a in markers for m in a.markers
                                if m.type == m.CUBE and m.header.stamp == stamp],
                       what="marker cubes")
    assert {m.header.frame_id for m in cubes} == {base}
    placed = {tuple(np.round(position(o), 6)) for o in answer.scene_graph.objects}
    assert {tuple(np.round([m.pose.position.x, m.pose.position.y, m.pose.position.z], 6))
            for m in cubes} <= placed
    values = harness.diagnostics(lambda v: int(v.get("transforms_found", 0)) >= 1)
    assert values["target_frame"] == base and values["transforms_missing"] == "0"


class Mover:
    """odom <- camera moving along odom's x at SPEED m/s, broadcast at RATE_HZ with stamps on a
    grid t0 + k / RATE_HZ (TransformBroadcaster)."""

    SPEED = 0.8
    RATE_HZ = 10.0

    def __init__(self, node, parent: str, child: str) -> None:
        self.node, self.parent, self.child = node, parent, child
        self.broadcaster = tf2_ros.TransformBroadcaster(node)
        now = node.get_clock().now()
        self.t0_ns = now.nanoseconds - 2 * 10**9  # the grid starts 2 s in the past
        self.sent: list[int] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def x_at(self, stamp_ns: int) -> float:
        return self.SPEED * (stamp_ns - self.t0_ns) * 1e-9

    def _run(self) -> None:
        from builtin_interfaces.msg import Time

        k = 0
        while not self._done.is_set():
            stamp_ns = self.t0_ns + int(k * 1e9 / self.RATE_HZ)
            if stamp_ns > self.node.get_clock().now().nanoseconds:
                self._done.wait(0.01)
                continue
            stamp = Time(sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9)
            self.broadcaster.sendTransform(
                transform(self.parent, self.child, (self.x_at(stamp_ns), 0.0, 0.0), HEAD_Q,
                          stamp))
            self.sent.append(stamp_ns)
            k += 1

    def close(self) -> None:
        self._done.set()
        self._thread.join(WAIT_S)


def test_moving_transform_is_interpolated_at_the_image_stamp(served) -> None:
    odom, cam = unique("odom"), unique("arm_optical")
    harness = served(odom, transform_timeout_s=2.0)
    mover = Mover(harness.client, odom, cam)
    try:
        wait_until(lambda: len(mover.sent) > 25, what="broadcast transforms")
        # 0.03 s after a grid stamp: the nearest broadcast is 0.03 s away, the latest further.
        grid = mover.sent[20]
        stamp_ns = grid + 30_000_000
        from builtin_interfaces.msg import Time

        stamp = Time(sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9)
        publish_depth(harness, stamp, cam)
        harness.send_frame(stamp=stamp, frame_id=cam)
        answer = harness.ask()
        latest = mover.sent[-1]
    finally:
        mover.close()
    assert answer.status == harness.SpatialAnswer.STATUS_OK, answer.status_message
    t = np.array([mover.x_at(stamp_ns), 0.0, 0.0])
    assert_placed(answer, odom, rotation(HEAD_Q), t)
    r = rotation(HEAD_Q)
    obj = next(o for o in answer.scene_graph.objects if o.has_position)
    for other in (grid, latest):  # neither the nearest nor the latest transform
        wrong = r @ camera_point(obj) + np.array([mover.x_at(other), 0.0, 0.0])
        assert np.linalg.norm(position(obj) - wrong) > 0.02


def test_unknown_frame_answers_boxes_without_positions_and_blocks_nothing(served) -> None:
    base, cam = unique("base_link"), unique("lost_optical")
    harness = served(base, transform_timeout_s=1.5, busy_policy="queue")
    stamp = harness.now()
    publish_depth(harness, stamp, cam)
    harness.send_frame(stamp=stamp, frame_id=cam)
    first = harness.ask_async(request_id="first")
    # While the worker waits for the transform, the node serves: its lifecycle service answers,
    # camera frames arrive, and a second request is taken and answered.
    get_state = harness.client.create_client(GetState, f"{harness.node.get_name()}/get_state")
    assert get_state.wait_for_service(timeout_sec=WAIT_S)
    wait_until(lambda: harness.node.worker.stats.busy, what="the first request running")
    state = wait_future(get_state.call_async(GetState.Request()), what="get_state")
    assert state.current_state.label == "active"
    newer_stamp = harness.now()
    publish_depth(harness, newer_stamp, cam)
    newer = harness.send_frame(stamp=newer_stamp, frame_id=cam)
    second = harness.ask_async(request_id="second")
    answers = [wait_future(f, what="an answer").answer for f in (first, second)]
    for answer in answers:
        assert answer.status == harness.SpatialAnswer.STATUS_OK, answer.status_message
        graph = answer.scene_graph
        assert [o for o in graph.objects if o.has_box]
        assert graph.relations
        assert not any(o.has_position or o.has_size for o in graph.objects)
        assert graph.positions_frame_id == ""
        assert f"no transform to target_frame '{base}'" in answer.status_message
        assert "Traceback" not in answer.status_message
    assert answers[1].header.stamp == newer.stamp
    values = harness.diagnostics(lambda v: int(v.get("transforms_missing", 0)) >= 2)
    assert f"'{cam}'" in values["last_transform_error"]


def test_two_cameras_end_in_one_target_frame(served) -> None:
    base = unique("base_link")
    frames = {"left": unique("left_optical"), "right": unique("right_optical")}
    poses = {"left": ((0.0, 0.3, 1.0), HEAD_Q),
             "right": ((0.2, -0.3, 0.8), compose(quaternion((0, 0, 1), -0.7), OPTICAL_TO_BASE))}
    harness = served(base, cameras=list(frames))
    static = tf2_ros.StaticTransformBroadcaster(harness.client)
    static.sendTransform([transform(base, frames[c], *poses[c]) for c in frames])
    reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    for camera, frame in frames.items():
        stamp = harness.now()
        publish_depth(harness, stamp, frame, camera)
        pub = harness.client.create_publisher(Image, f"{camera}/image", reliable)
        rng = np.random.default_rng(len(camera))
        image = Image(width=640, height=480, encoding="rgb8", step=640 * 3,
                      data=rng.integers(0, 256, (480, 640, 3), dtype=np.uint8).tobytes())
        image.header.stamp, image.header.frame_id = stamp, frame
        node_camera = harness.node.intake.camera(camera)

        def held(pub=pub, image=image, node_camera=node_camera, stamp=stamp) -> bool:
            pub.publish(image)
            frame_now = node_camera.images.peek()
            return frame_now is not None and frame_now.message.header.stamp == stamp

        wait_until(held, what=f"a frame of {camera}")
        request = harness.AskSpatial.Request(question="Where is the cube?", camera=camera)
        answer = wait_future(harness.ask_client.call_async(request)).answer
        assert answer.status == harness.SpatialAnswer.STATUS_OK, answer.status_message
        assert answer.header.frame_id == frame
        t, q = poses[camera]
        assert_placed(answer, base, rotation(q), np.array(t))


def test_bad_transforms_are_dropped_never_a_crash(served) -> None:
    from builtin_interfaces.msg import Time

    from spatialthinker_ros.core.transforms import TF_MAX_FRAMES as MAX_FRAMES

    base, cam = unique("base_link"), unique("bad_optical")
    harness = served(base, transform_timeout_s=0.3)
    node = harness.node
    counts = lambda: node.answerer.target_frame.counts  # noqa: E731
    tf_pub = harness.client.create_publisher(TFMessage, "/tf", 100)
    wait_until(lambda: tf_pub.get_subscription_count() > 0, what="the node's /tf subscription")
    stamp = harness.now()
    nan = transform(base, cam, (math.nan, 0.0, 0.0), HEAD_Q, stamp)
    scaled = transform(base, cam, HEAD_T, tuple(2 * c for c in HEAD_Q), stamp)
    long_id = transform(base, "x" * 10_000, HEAD_T, HEAD_Q, stamp)
    tf_pub.publish(TFMessage(transforms=[nan, scaled, long_id]))
    wait_until(lambda: counts().transforms_dropped >= 3, what="the three bad transforms dropped")
    # Only bad transforms for the camera: an answer with boxes, no positions, the reason.
    publish_depth(harness, stamp, cam)
    harness.send_frame(stamp=stamp, frame_id=cam)
    answer = harness.ask()
    assert answer.status == harness.SpatialAnswer.STATUS_OK
    assert [o for o in answer.scene_graph.objects if o.has_box]
    assert not any(o.has_position for o in answer.scene_graph.objects)
    assert "no transform to target_frame" in answer.status_message

    # Time jumping back (a looped bag): a transform now, then one 60 s earlier: the history is
    # cleared, and an image at the looped time gets the looped transform.
    now_ns = harness.client.get_clock().now().nanoseconds
    looped_ns = now_ns - 60 * 10**9
    for ns in (now_ns, looped_ns, looped_ns + 10**8):
        t = Time(sec=ns // 10**9, nanosec=ns % 10**9)
        tf_pub.publish(TFMessage(transforms=[transform(base, cam, HEAD_T, HEAD_Q, t)]))
        time.sleep(0.2)
    wait_until(lambda: counts().buffer_clears >= 1, what="the jump back clearing the buffer")
    looped = Time(sec=(looped_ns + 5 * 10**7) // 10**9, nanosec=(looped_ns + 5 * 10**7) % 10**9)
    publish_depth(harness, looped, cam)
    harness.send_frame(stamp=looped, frame_id=cam)
    answer = harness.ask()
    assert answer.status == harness.SpatialAnswer.STATUS_OK
    assert_placed(answer, base, rotation(HEAD_Q), np.array(HEAD_T))

    # A flood: 3,000 distinct frames in 30 messages; at most MAX_FRAMES are kept, the rest
    # dropped and counted; the known camera frame still works.
    before = counts().transforms_dropped
    for batch in range(30):
        tf_pub.publish(TFMessage(transforms=[
            transform(base, f"flood_{batch}_{i}", (0.0, 0.0, float(i)), (0.0, 0.0, 0.0, 1.0),
                      looped) for i in range(100)]))
    wait_until(lambda: counts().transforms_dropped >= before + 3000 - MAX_FRAMES,
               what="the flood beyond MAX_FRAMES dropped", timeout=WAIT_S * 2)
    assert len(node.answerer.target_frame._frames) <= MAX_FRAMES
    harness.send_frame(stamp=looped, frame_id=cam)
    answer = harness.ask()
    assert answer.status == harness.SpatialAnswer.STATUS_OK
    assert_placed(answer, base, rotation(HEAD_Q), np.array(HEAD_T))
    assert int(node.stats_snapshot()["transforms_dropped"]) >= 3 + 3000 - MAX_FRAMES


def test_bad_target_frame_parameter_fails_configure(make_harness) -> None:
    harness = make_harness(start=False, target_frame="x" * 10_000)
    from rclpy.lifecycle import TransitionCallbackReturn

    assert harness.node.trigger_configure() == TransitionCallbackReturn.FAILURE
    assert "target_frame must have at most 256 characters" in harness.node.config_error
    assert len(harness.node.config_error) < 400


def test_without_tf2_target_frame_gives_one_clear_line(served, monkeypatch) -> None:
    """A machine without geometry2: importing tf2_ros fails (as it does there); the node still
    configures and answers, with boxes and no positions, the reason in one line."""
    import sys

    monkeypatch.setitem(sys.modules, "tf2_ros", None)  # `import tf2_ros` raises ImportError
    cam = unique("plain_optical")
    harness = served("base_link")
    assert "tf2_ros is not installed" in harness.node.answerer.target_frame.unavailable
    stamp = harness.now()
    publish_depth(harness, stamp, cam)
    harness.send_frame(stamp=stamp, frame_id=cam)
    answer = harness.ask()
    assert answer.status == harness.SpatialAnswer.STATUS_OK
    assert [o for o in answer.scene_graph.objects if o.has_box]
    assert not any(o.has_position for o in answer.scene_graph.objects)
    message = answer.status_message
    assert "no transform to target_frame 'base_link': tf2_ros is not installed" in message
    assert "\n" not in message and len(message) < 400
