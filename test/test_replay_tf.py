"""replay --target-frame: the bag's /tf and /tf_static through tf2's real BufferCore (tf2_py),
positions equal to R p + t at each image's stamp (R, t computed here independently with NumPy
from the sample bag's published constants), bad /tf input, and no rclpy anywhere in replay."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from rosbags.rosbag2 import Writer

from spatialthinker_ros import sample_bag as sb
from spatialthinker_ros.bag_io import ReplayError
from spatialthinker_ros.bag_types import make_typestore, new_message
from spatialthinker_ros.core.transforms import TF_MAX_FRAMES as MAX_FRAMES
from spatialthinker_ros.core.transforms import RigidTransform
from spatialthinker_ros.replay import ReplayConfig, run_replay
from spatialthinker_ros.replay_config import CameraTopics
from spatialthinker_ros.replay_tf import (
    TF_MESSAGE,
    BagTransforms,
    import_tf2_py,
)
from spatialthinker_ros.testing.tiny_model import FITTED_MAX_PIXELS

ROOT = Path(__file__).resolve().parents[1]
try:
    import_tf2_py()
    TF2 = ""
except ReplayError as exc:
    TF2 = str(exc)
needs_tf2 = pytest.mark.skipif(bool(TF2), reason=f"tf2_py is not built here: {TF2}")


# ------------------------------------------------------------------ the truth, independently
def rot_y(a):
    return np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])


def rot_z(a):
    return np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])


# columns: where the optical x (right), y (down), z (ahead) point in base_link
OPTICAL = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


def expected(p, k: int, stamp_s: float, target: str):
    """Camera k's optical-frame point p in `target` (base_link or odom) at `stamp_s`."""
    mount_r = rot_y(math.radians(20.0)) @ OPTICAL
    mount_t = np.array([0.25, -0.15 * k, 1.1])
    in_base = mount_r @ np.asarray(p) + mount_t
    if target == "base_link":
        return in_base
    dt = stamp_s - 1_700_000_000
    return rot_z(0.2 * dt) @ in_base + np.array([0.5 * dt, 0.0, 0.0])


def test_sample_constants_are_what_the_test_assumes():
    assert (sb.SPEED_M_S, sb.YAW_RATE_RAD_S, sb.CAMERA_PITCH_RAD) == (0.5, 0.2, math.radians(20))
    assert (sb.CAMERA_FORWARD_M, sb.CAMERA_SPACING_M, sb.CAMERA_HEIGHT_M) == (0.25, 0.15, 1.1)
    assert sb.START_NS == 1_700_000_000 * 10**9
    # the published mount, as a matrix, is the one built here from the description
    mount = sb.camera_mount(1)
    assert mount.matrix() == pytest.approx(rot_y(math.radians(20.0)) @ OPTICAL, abs=1e-12)


# ------------------------------------------------------------------ BufferCore, directly
def ts(store, parent, child, stamp_ns, xyz=(0.0, 0.0, 0.0), q=(0.0, 0.0, 0.0, 1.0)):
    m = "geometry_msgs/msg/"
    return new_message(
        store, m + "TransformStamped",
        header=new_message(store, "std_msgs/msg/Header", frame_id=parent,
                           stamp=new_message(store, "builtin_interfaces/msg/Time",
                                             sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9)),
        child_frame_id=child,
        transform=new_message(
            store, m + "Transform",
            translation=new_message(store, m + "Vector3", x=xyz[0], y=xyz[1], z=xyz[2]),
            rotation=new_message(store, m + "Quaternion", x=q[0], y=q[1], z=q[2], w=q[3])),
    )


def tf_message(store, *transforms):
    return new_message(store, TF_MESSAGE, transforms=list(transforms))


@needs_tf2
def test_lookup_interpolates_at_the_stamp_not_latest_nor_nearest():
    store, notes = make_typestore(), []
    tf = BagTransforms("odom", notes.append)
    for i in range(5):  # base_link 1 m further every second
        tf.add(tf_message(store, ts(store, "odom", "base_link", i * 10**9, (float(i), 0, 0))),
               False, i * 10**9)
    t = tf.lookup("base_link", 2_300_000_000)
    assert isinstance(t, RigidTransform) and t.translation == pytest.approx((2.3, 0, 0))
    assert "extrapolation into the future" in tf.lookup("base_link", 9 * 10**9).lower()
    assert "does not exist" in tf.lookup("camera", 10**9)
    assert notes == []


@needs_tf2
@pytest.mark.parametrize("case, kind", [
    ((math.nan, 0, 0, 0, 0, 0, 1), "bad numbers"),
    ((0, 0, math.inf, 0, 0, 0, 1), "bad numbers"),
    ((0, 0, 0, 0, 0, 0, 1.2), "bad numbers"),  # |q| = 1.2: not a rotation
    ((0, 0, 0, 0, 0, 0, 0), "bad numbers"),
])
def test_bad_numbers_are_dropped_with_one_note(case, kind):
    store, notes = make_typestore(), []
    tf = BagTransforms("odom", notes.append)
    for stamp in (1, 2):
        tf.add(tf_message(store, ts(store, "odom", "base_link", stamp * 10**9, case[:3],
                                    case[3:])), False, stamp * 10**9)
    assert tf.dropped[kind] == 2 and len(notes) == 1 and "\n" not in notes[0]
    assert "does not exist" in tf.lookup("base_link", 10**9)


@needs_tf2
def test_near_unit_quaternion_is_used_normalised():
    store = make_typestore()
    tf = BagTransforms("odom", lambda _: None)
    q = (0.0, 0.0, math.sin(0.5) * 1.003, math.cos(0.5) * 1.003)
    tf.add(tf_message(store, ts(store, "odom", "base_link", 0, (1, 0, 0), q)), True, 0)
    t = tf.lookup("base_link", 5 * 10**9)
    assert t.apply_point((1.0, 0.0, 0.0)) == pytest.approx((1 + math.cos(1), math.sin(1), 0))


@needs_tf2
def test_long_and_bad_frame_ids_and_a_frame_flood_stay_bounded():
    store, notes = make_typestore(), []
    tf = BagTransforms("odom", notes.append)
    tf.add(tf_message(store, ts(store, "odom", "x" * 10_000, 0)), True, 0)
    tf.add(tf_message(store, ts(store, "odom", "odom", 0), ts(store, "", "a", 0)), True, 0)
    assert tf.dropped["frame id too long"] == 1 and tf.dropped["bad frame ids"] == 2
    flood = [ts(store, "odom", f"f{i}", 10**9) for i in range(MAX_FRAMES + 500)]
    tf.add(tf_message(store, *flood), False, 10**9)
    assert tf.dropped["too many frames"] == 501  # odom is one of the MAX_FRAMES
    assert len(tf.buffer._getFrameStrings()) <= MAX_FRAMES
    long_source = tf.lookup("y" * 10_000, 10**9)
    assert "10000 characters" in long_source and len(long_source) < 400
    assert all(len(n) < 500 and "\n" not in n for n in notes)


@needs_tf2
def test_a_tf_flood_is_kept_within_the_cache_time():
    store = make_typestore()
    tf = BagTransforms("odom", lambda _: None)
    period = 1_000_000  # 1 kHz for 30 s of bag time
    for i in range(0, 30_000, 100):
        batch = [ts(store, "odom", "base_link", (i + j) * period, ((i + j) / 1000, 0, 0))
                 for j in range(100)]
        tf.add(tf_message(store, *batch), False, (i + 99) * period)
    # tf2 keeps 10 s: 29 s is there, 5 s is gone (older than the cache), memory bounded
    assert tf.lookup("base_link", 29 * 10**9).translation == pytest.approx((29.0, 0, 0))
    assert "past" in tf.lookup("base_link", 5 * 10**9).lower()


@needs_tf2
def test_time_jumping_back_clears_the_buffer_and_keeps_statics():
    store, notes = make_typestore(), []
    tf = BagTransforms("odom", notes.append)
    tf.add(tf_message(store, ts(store, "base_link", "cam", 0, (0, 0, 1))), True, 0)
    for loop in (1, 2):  # the bag played twice: stamps 100..105 s, then again (a 2nd route)
        for i in range(6):
            stamp = (100 + i) * 10**9
            tf.add(tf_message(store, ts(store, "odom", "base_link", stamp, (loop * i, 0, 0))),
                   False, loop * 6 * 10**9 + stamp)
    assert tf.clears == 1 and any("jumped back" in n for n in notes)
    t = tf.lookup("cam", 103 * 10**9)  # the second loop's, not the first's
    assert t.apply_point((0, 0, 0)) == pytest.approx((6, 0, 1))
    # repeated stamps (a recorder writing one message twice) are ignored, as tf2 does
    tf.add(tf_message(store, ts(store, "odom", "base_link", 105 * 10**9, (99, 0, 0))), False, 0)
    assert tf.dropped["repeated"] == 1
    assert tf.lookup("cam", 105 * 10**9).translation == pytest.approx((10, 0, 1))


# ------------------------------------------------------------------ replay end to end
def replay_jsonl(engine, bag, out: Path, cameras: int, target: str = "", **extra):
    topics = [sb.sample_camera(k) for k in range(cameras)]
    config = ReplayConfig(
        in_bag=bag, out_bag=out / "bag", jsonl=out / "r.jsonl",
        cameras=tuple(CameraTopics(f"c{k}", c.image_topic, c.depth_topic, c.camera_info_topic)
                      for k, c in enumerate(topics)),
        questions=("Where is the cube?",), choices=("left", "right"), progress=False,
        target_frame=target, **extra,
    )
    summary = run_replay(config, engine)
    return summary, [json.loads(line) for line in (out / "r.jsonl").read_text().splitlines()]


@needs_tf2
@pytest.mark.parametrize("target", ["odom", "base_link"])
def test_replay_positions_equal_r_p_plus_t_at_each_image_stamp(fitted_engine, tmp_path, target):
    bag = sb.write_sample_bag(tmp_path / "in", frames=4, cameras=2, tf=True)
    _, camera = replay_jsonl(fitted_engine, bag, tmp_path / "cam", 2)
    summary, moved = replay_jsonl(fitted_engine, bag, tmp_path / "tgt", 2, target)
    assert summary.frames_answered == 8 and summary.transform_failures == 0
    assert summary.positions == 16
    assert len(camera) == len(moved) == 8
    for before, after in zip(camera, moved, strict=True):
        assert before["stamp"] == after["stamp"] and after["target_frame"] == target
        k = int(after["camera"][1:])
        assert before["scene_graph"]["positions_frame_id"] == sb.sample_camera(k).frame_id
        assert after["scene_graph"]["positions_frame_id"] == target
        for obj_c, obj_t in zip(before["scene_graph"]["objects"], after["scene_graph"]["objects"],
                                strict=True):
            want = expected(obj_c["position"], k, after["stamp"], target)
            assert np.abs(np.array(obj_t["position"]) - want).max() < 1e-3  # JSON: 0.1 mm
            assert obj_t["size"] is not None and min(obj_t["size"]) >= 0
    # the output bag's SceneGraph carries the same positions
    from rosbags.rosbag2 import Reader
    store = make_typestore()
    with Reader(tmp_path / "tgt" / "bag") as reader:
        conns = [c for c in reader.connections if c.topic == "/spatialthinker/c0/scene_graph"]
        graphs = [store.deserialize_cdr(raw, c.msgtype) for c, _, raw in reader.messages(conns)]
    first = graphs[0].objects[0].position
    assert [first.x, first.y, first.z] == pytest.approx(
        moved[0]["scene_graph"]["objects"][0]["position"], abs=1e-4)


@needs_tf2
def test_replay_without_the_transform_answers_without_positions_and_says_why(fitted_engine,
                                                                              tmp_path):
    bag = sb.write_sample_bag(tmp_path / "in", frames=2, tf=True)
    summary, records = replay_jsonl(fitted_engine, bag, tmp_path / "o", 1, "map")
    assert summary.frames_answered == 2 and summary.transform_failures == 2
    for record in records:
        assert record["option"] == "A"  # the answer, boxes and relations still come
        assert record["scene_graph"]["objects"][0]["box"] is not None
        assert all(o["position"] is None for o in record["scene_graph"]["objects"])
        assert record["scene_graph"]["positions_frame_id"] == ""
        assert "no 3D positions" in record["positions_note"] and "map" in record["positions_note"]
    assert any("no 3D positions" in w for w in summary.warnings)


def write_hostile_bag(path: Path) -> Path:
    """The sample's camera with a /tf of NaNs, a non-unit quaternion, a 10,000-character
    frame id, a flood of frames, and the whole /tf played twice (time jumping back)."""
    store = make_typestore()
    clean = sb.write_sample_bag(path.parent / "clean", frames=25, tf=True)  # /tf over 4 s
    from rosbags.rosbag2 import Reader
    with Reader(clean) as reader, Writer(path, version=9) as writer:
        conns = {}
        for c in reader.connections:
            conns[c.topic] = writer.add_connection(c.topic, c.msgtype, typestore=store)
        records = [(c.topic, ns, raw) for c, ns, raw in reader.messages()]
        t0 = sb.START_NS
        bad = tf_message(
            store,
            ts(store, "odom", "base_link", t0 + 1, (math.nan, 0, 0)),
            ts(store, "odom", "base_link", t0 + 2, (0, 0, 0), (0, 0, 0, 3.0)),
            ts(store, "odom", "z" * 10_000, t0 + 3),
            *[ts(store, "odom", f"flood{i}", t0 + 4) for i in range(MAX_FRAMES + 10)],
        )
        records.append(("/tf", t0 + 5, store.serialize_cdr(bad, TF_MESSAGE)))
        tail = max(ns for _, ns, _ in records) + 1
        # looped: the /tf again (stamps back to the start) after the end
        records += [("/tf", tail + i, raw) for i, (topic, _, raw) in enumerate(list(records))
                    if topic == "/tf"]
        for topic, ns, raw in sorted(records, key=lambda r: r[1]):
            writer.write(conns[topic], ns, raw)
    return path


@needs_tf2
def test_replay_of_hostile_tf_input_never_crashes(fitted_engine, tmp_path):
    bag = write_hostile_bag(tmp_path / "hostile")
    summary, records = replay_jsonl(fitted_engine, bag, tmp_path / "o", 1, "odom", every=10)
    _, clean = replay_jsonl(fitted_engine, tmp_path / "clean", tmp_path / "c", 1, "odom",
                            every=10)
    assert summary.frames_answered == 3 and summary.transform_failures == 0
    assert summary.transforms_dropped >= 3 + 10
    notes = " | ".join(summary.warnings)
    for kind in ("bad numbers", "frame id too long", "too many frames", "jumped back"):
        assert kind in notes
    # the good transforms still give the clean bag's positions
    assert [r["scene_graph"] for r in records] == [r["scene_graph"] for r in clean]


# ------------------------------------------------------------------ the command line, no rclpy
def cli(args: list[str], prelude: str = "") -> subprocess.CompletedProcess:
    """The CLI in a fresh interpreter that reports, at exit, whether rclpy was ever imported."""
    code = (
        "import atexit, sys\n"
        f"{prelude}\n"
        "atexit.register(lambda: print('RCLPY', 'rclpy' in sys.modules, file=sys.stderr))\n"
        "from spatialthinker_ros.cli import main\n"
        f"sys.exit(main({args!r}))\n"
    )
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": path}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=300)


@needs_tf2
def test_cli_replay_target_frame_never_imports_rclpy(fitted_model_dir, tmp_path):
    made = cli(["make-sample-bag", str(tmp_path / "in"), "--frames", "2", "--tf"])
    assert made.returncode == 0, made.stderr
    assert "/tf_static" in made.stdout
    run = cli(["replay", str(tmp_path / "in"), "--image-topic", sb.IMAGE_TOPIC,
               "--depth-topic", sb.DEPTH_TOPIC, "--camera-info-topic", sb.CAMERA_INFO_TOPIC,
               "--question", "Where?", "--out", str(tmp_path / "out"),
               "--jsonl", str(tmp_path / "r.jsonl"), "--target-frame", "base_link",
               "--model", str(fitted_model_dir), "--max-pixels", str(FITTED_MAX_PIXELS)])
    assert run.returncode == 0, run.stderr
    assert "2 frames answered of 2 images" in run.stdout
    assert "RCLPY False" in run.stderr
    record = json.loads((tmp_path / "r.jsonl").read_text().splitlines()[0])
    assert record["scene_graph"]["positions_frame_id"] == "base_link"


def test_cli_target_frame_without_tf2_is_one_clear_line(fitted_model_dir, tmp_path):
    sb.write_sample_bag(tmp_path / "in", frames=1, tf=True)
    run = cli(["replay", str(tmp_path / "in"), "--image-topic", sb.IMAGE_TOPIC,
               "--question", "Where?", "--out", str(tmp_path / "out"),
               "--target-frame", "base_link", "--model", str(fitted_model_dir)],
              prelude="sys.modules['tf2_py'] = None  # as where tf2 is not installed")
    assert run.returncode == 2
    lines = [line for line in run.stderr.splitlines() if not line.startswith("RCLPY")]
    assert len(lines) == 1 and lines[0].startswith("spatialthinker-ros: error: --target-frame "
                                                   "needs tf2 for Python"), run.stderr
    assert "RCLPY False" in run.stderr


def test_cli_target_frame_needs_tf_topics_and_a_frame_id(fitted_model_dir, tmp_path):
    sb.write_sample_bag(tmp_path / "in", frames=1)
    base = ["replay", str(tmp_path / "in"), "--image-topic", sb.IMAGE_TOPIC, "--question", "Q",
            "--out", str(tmp_path / "out"), "--model", str(fitted_model_dir)]
    run = cli([*base, "--target-frame", "base_link"])
    assert run.returncode == 2 and "has neither /tf nor /tf_static" in run.stderr
    run = cli([*base, "--target-frame", "/base link"])
    assert run.returncode == 2 and "give a tf2 frame id" in run.stderr


def test_replay_without_target_frame_never_imports_rclpy(tmp_path):
    run = cli(["make-sample-bag", str(tmp_path / "in"), "--frames", "1"],
              prelude="import spatialthinker_ros.replay, spatialthinker_ros.replay_tf")
    assert run.returncode == 0 and "RCLPY False" in run.stderr
