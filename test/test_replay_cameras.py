"""Bag replay with several cameras: each camera's frames, depth and CameraInfo are its own and
its answers go to its own topics; the real engine on the fitted tiny model, real bags."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rosbags.rosbag2 import Reader

from spatialthinker_ros.bag_types import make_typestore
from spatialthinker_ros.replay import ReplayConfig, ReplayError, run_replay
from spatialthinker_ros.replay_config import (
    CameraTopics,
    camera_namespace,
    camera_topics,
    name_cameras,
)
from spatialthinker_ros.sample_bag import sample_camera, write_sample_bag

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
CAM1, CAM2 = sample_camera(0), sample_camera(1)
OUTPUT_KINDS = ("scene_graph", "answer", "markers", "debug_image")


def read_bag(path: Path) -> dict[str, list]:
    """topic -> [(bag ns, message)]; opening it proves the bag was closed properly."""
    store = make_typestore()
    out: dict[str, list] = {}
    with Reader(path) as reader:
        for conn, ns, raw in reader.messages():
            out.setdefault(conn.topic, []).append((ns, store.deserialize_cdr(raw, conn.msgtype)))
    return out


def two_cameras(**names: str) -> tuple[CameraTopics, ...]:
    images = [f"{names.get('first', '')}={CAM1.image_topic}".lstrip("="),
              f"{names.get('second', '')}={CAM2.image_topic}".lstrip("=")]
    return camera_topics(
        images,
        [CAM1.depth_topic, CAM2.depth_topic],
        [CAM1.camera_info_topic, CAM2.camera_info_topic],
    )


def test_two_cameras_answer_on_their_own_topics_with_their_own_depth(fitted_engine, tmp_path):
    bag = write_sample_bag(tmp_path / "in", frames=2, cameras=2)
    config = ReplayConfig(
        in_bag=bag,
        out_bag=tmp_path / "out",
        cameras=two_cameras(),
        questions=("Where is the cube?",),
        choices=("left", "right"),
        jsonl=tmp_path / "r.jsonl",
        save_frames=tmp_path / "png",
        progress=False,
    )
    assert [c.name for c in config.cameras] == ["camera", "camera2"]  # the topics' namespaces
    s = run_replay(config, fitted_engine)
    assert (s.images_seen, s.frames_answered, s.stopped_early) == (4, 4, "")
    assert s.answered_by_camera == {"camera": 2, "camera2": 2}
    assert s.positions == 8
    out = read_bag(tmp_path / "out")
    assert not any(t in out for t in ("/spatialthinker/answer", "/spatialthinker/scene_graph"))
    inp = read_bag(bag)
    for name, cam, cube_z in (("camera", CAM1, 1.5), ("camera2", CAM2, 2.0)):
        stamps = [m.header.stamp for _, m in inp[cam.image_topic]]
        for kind in OUTPUT_KINDS[:2] + OUTPUT_KINDS[3:]:
            msgs = [m for _, m in out[f"/spatialthinker/{name}/{kind}"]]
            assert [m.header.stamp for m in msgs] == stamps, kind  # the camera's own images
            assert {m.header.frame_id for m in msgs} == {cam.frame_id}
        assert len(out[f"/spatialthinker/{name}/markers"]) == 2
        answers = [m for _, m in out[f"/spatialthinker/{name}/answer"]]
        assert {(a.camera, a.option, a.status) for a in answers} == {(name, "A", 0)}
        for answer in answers:  # each camera's depth: camera2 stands 0.5 m further back
            cube, ball = answer.scene_graph.objects
            assert cube.has_position and cube.position.z == pytest.approx(cube_z)
            assert ball.position.z == pytest.approx(cube_z + 0.5, abs=0.05)
        # The images and the CameraInfo used, each under its own topic.
        assert [m.header.frame_id for _, m in out[cam.image_topic]] == [cam.frame_id] * 2
        assert [m.header.frame_id for _, m in out[cam.camera_info_topic]] == [cam.frame_id] * 2
    assert len({a.request_id for t, msgs in out.items() if t.endswith("/answer")
                for _, a in msgs}) == 4
    records = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    # In bag-time order: camera2 is 10 ms behind the first camera.
    assert [r["camera"] for r in records] == ["camera", "camera2"] * 2
    assert [r["frame_id"] for r in records] == [CAM1.frame_id, CAM2.frame_id] * 2
    assert [r["stamp"] for r in records] == sorted(r["stamp"] for r in records)
    assert [r["scene_graph"]["objects"][0]["position"][2] for r in records] == pytest.approx(
        [1.5, 2.0] * 2
    )
    names = sorted(p.name for p in (tmp_path / "png").iterdir())
    assert len(names) == 4 and [n.split("_", 2)[2] for n in names] == [
        "camera.png", "camera2.png"
    ] * 2


def test_a_named_single_camera_and_explicit_names(fitted_engine, tmp_path):
    bag = write_sample_bag(tmp_path / "in", frames=1, cameras=2)
    config = ReplayConfig(
        in_bag=bag,
        out_bag=tmp_path / "out",
        cameras=two_cameras(first="arm/wrist", second="head"),
        questions=("Where is the cube?", "Which is bigger?"),
        progress=False,
    )
    s = run_replay(config, fitted_engine)
    assert s.answered_by_camera == {"arm/wrist": 1, "head": 1}
    out = read_bag(tmp_path / "out")
    wrist = [m for _, m in out["/spatialthinker/arm/wrist/answer"]]
    assert [(a.camera, a.question) for a in wrist] == [
        ("arm/wrist", "Where is the cube?"), ("arm/wrist", "Which is bigger?")
    ]
    assert len(out["/spatialthinker/head/debug_image"]) == 1  # one per frame
    # One camera, named: its own namespace too; unnamed, today's topics (tested elsewhere).
    config = ReplayConfig(
        in_bag=bag, out_bag=tmp_path / "one", cameras=camera_topics([f"front={CAM2.image_topic}"]),
        questions=("q?",), progress=False,
    )
    run_replay(config, fitted_engine)
    assert "/spatialthinker/front/answer" in read_bag(tmp_path / "one")


def test_camera_names_are_derived_deterministically():
    assert camera_namespace("/front/image_raw") == "front"
    assert camera_namespace("/arm/wrist/image_raw/compressed") == "arm/wrist"
    assert camera_namespace("/image_raw") == ""
    cams = name_cameras([CameraTopics("", "/a/image"), CameraTopics("", "/b/image/compressed")])
    assert [c.name for c in cams] == ["a", "b"]
    # empty, shared or invalid namespaces: camera<k>, k the position from 1
    cams = name_cameras([
        CameraTopics("", "/image"), CameraTopics("", "/x/left"), CameraTopics("", "/x/right"),
        CameraTopics("", "/2d/image"), CameraTopics("named", "/y/image"),
    ])
    assert [c.name for c in cams] == ["camera1", "camera2", "camera3", "camera4", "named"]
    assert name_cameras([CameraTopics("", "/front/image")])[0].name == ""  # one camera: today's


@pytest.mark.parametrize(
    "images,depths,infos,message",
    [
        (["/a/image", "/b/image"], ["/a/depth"], [], "--depth-topic given 1 times for 2 cameras"),
        (["/a/image"], [], ["/a/info", "/b/info"], "--camera-info-topic given 2 times for 1"),
        (["x=/a/image", "x=/b/image"], [], [], "camera names must differ"),
        (["bad name=/a/image", "/b/image"], [], [], "camera name 'bad name'"),
        (["9lives=/a/image"], [], [], "camera name '9lives'"),
        (["/a/image", "/a/image"], [], [], "topic /a/image is given as an input more than once"),
        (["/a/image"], ["/a/image"], [], "topic /a/image is given as an input more than once"),
        (["/spatialthinker/answer"], [], [], "given as an output more than once"),
    ],
)
def test_bad_cameras_are_refused(tmp_path, images, depths, infos, message):
    with pytest.raises(ReplayError, match=message):
        ReplayConfig(
            in_bag=tmp_path, out_bag=tmp_path / "out",
            cameras=camera_topics(images, depths, infos), questions=("q?",),
        )


def test_cli_mismatched_topic_counts_fail_before_the_model_loads(tmp_path):
    """Exit 2 with one line about the topics, never about the model (which does not exist)."""
    bag = write_sample_bag(tmp_path / "in", frames=1, cameras=2)
    base = [sys.executable, "-m", "spatialthinker_ros.cli", "replay", str(bag), "--question", "q",
            "--out", str(tmp_path / "out"), "--model", str(tmp_path / "no-such-model")]
    cameras = ["--image-topic", CAM1.image_topic, "--image-topic", CAM2.image_topic]
    cases = [
        (["--depth-topic", CAM1.depth_topic], "--depth-topic given 1 times for 2 cameras"),
        (["--camera-info-topic", CAM1.camera_info_topic, "--camera-info-topic", "/x"],
         "topic /x is not in"),
        (["--depth-topic", CAM1.image_topic, "--depth-topic", CAM2.depth_topic],
         "topic /camera/image_raw is given as an input more than once"),
    ]
    for extra, message in cases:
        run = subprocess.run([*base, *cameras, *extra], env=ENV, capture_output=True, text=True,
                             timeout=300)
        assert run.returncode == 2, (extra, run.stderr)
        (line,) = run.stderr.strip().splitlines()
        assert line.startswith("spatialthinker-ros: error: ") and message in line, line
        assert "no-such-model" not in line and not (tmp_path / "out").exists()


def test_depth_of_another_camera_gives_no_positions(fitted_engine, tmp_path):
    """Issue 21 red team: camera2's depth paired with camera1's image (a crossed --depth-topic;
    stamps 10 ms apart, inside the tolerance) was used as if aligned, giving camera2's
    distances as camera1's objects' positions. Now its frame_id says it is another camera's:
    no 3D positions, the reason in the run's warnings."""
    bag = write_sample_bag(tmp_path / "in", frames=1, cameras=2)
    config = ReplayConfig(
        in_bag=bag,
        out_bag=tmp_path / "out",
        cameras=camera_topics([CAM1.image_topic], [CAM2.depth_topic], [CAM1.camera_info_topic]),
        questions=("Where is the cube?",),
        choices=("left", "right"),
        progress=False,
    )
    s = run_replay(config, fitted_engine)
    assert s.frames_answered == 1 and s.positions == 0
    assert any(f"is in frame '{CAM2.frame_id}'" in w for w in s.warnings), s.warnings
    (answer,) = [m for _, m in read_bag(tmp_path / "out")["/spatialthinker/answer"]]
    assert not any(o.has_position for o in answer.scene_graph.objects)


def test_aligned_depth_refuses_other_frames_and_aspect_ratios():
    """The rule itself: depth or camera_info in another frame_id, or of another aspect ratio
    than the colour image or the camera_info (a resolution switched mid-stream), gives no
    positions and says why; a uniformly scaled depth image (half size) is fine."""
    from types import SimpleNamespace

    import numpy as np

    from spatialthinker_ros.core.depth import AlignedDepth
    from spatialthinker_ros.core.scene import Box, SceneGraph, SceneObject

    def depth(w: int, h: int, frame: str = "cam") -> SimpleNamespace:
        data = np.full((h, w), 1000, np.uint16).tobytes()
        return SimpleNamespace(header=SimpleNamespace(frame_id=frame), encoding="16UC1",
                               width=w, height=h, step=2 * w, data=data, is_bigendian=0)

    def info(w: int, h: int, frame: str = "cam") -> SimpleNamespace:
        return SimpleNamespace(header=SimpleNamespace(frame_id=frame), width=w, height=h,
                               k=[500.0, 0, w / 2, 0, 500.0, h / 2, 0, 0, 1])

    graph = SceneGraph(objects=(SceneObject("cube.1", "cube", Box(10, 10, 100, 100)),))
    cases = [
        (depth(320, 240), info(640, 480), "", None),
        (depth(640, 480, "other_cam"), info(640, 480), "is in frame 'other_cam'", None),
        (depth(640, 480), info(640, 480, "other_cam"), "camera_info is in frame", None),
        (depth(640, 360), info(640, 360), "aligned with the colour image", None),
        (depth(640, 480), info(1280, 720), "aligned with the camera_info", None),
        (depth(640, 480), info(640, 480), "", ""),  # no frame_id known: not judged
    ]
    for d, i, error, frame in cases:
        aligned = AlignedDepth(d, i, (640, 480), image_frame_id="cam" if frame is None else frame)
        located = aligned.locate(graph)
        if error:
            assert located.objects[0].position is None and error in aligned.error, aligned.error
        else:
            assert located.objects[0].position is not None and not aligned.error
            assert located.objects[0].position[2] == pytest.approx(1.0)


def _hostile_depth_bag(out: Path, huge: int = 100_000) -> Path:
    """Two cameras, 3 frames: camera 1's depth 32FC1 metres with NaN / +inf / -inf bands
    around valid objects, camera 2's depth 16UC1 all zero; frame 1 of each with a `huge`-byte
    frame_id; frame 2's CameraInfo for 1280 x 720 (the resolution switched mid-stream)."""
    import dataclasses

    import numpy as np
    from rosbags.rosbag2 import StoragePlugin, Writer

    from spatialthinker_ros.bag_types import new_message
    from spatialthinker_ros.sample_bag import HEIGHT, WIDTH, _camera_messages, render_frame

    store = make_typestore()
    writer = Writer(out, version=9, storage_plugin=StoragePlugin.MCAP)
    image_type, info_type = "sensor_msgs/msg/Image", "sensor_msgs/msg/CameraInfo"
    with writer:
        conns = {}
        for cam in (CAM1, CAM2):
            for topic, msgtype in ((cam.image_topic, image_type), (cam.depth_topic, image_type),
                                   (cam.camera_info_topic, info_type)):
                conns[topic] = writer.add_connection(topic, msgtype, typestore=store)
        for i in range(3):
            for k, cam in enumerate((CAM1, CAM2)):
                frame = render_frame(i, k)
                named = dataclasses.replace(cam, frame_id="f" * huge) if i == 1 else cam
                for topic, msg, msgtype in _camera_messages(store, named, frame):
                    if topic == cam.depth_topic and k == 0:
                        m = frame.depth_mm.astype(np.float32) / 1000
                        m[:, :60], m[:50], m[430:] = np.nan, np.inf, -np.inf
                        msg = new_message(store, image_type, header=msg.header, height=HEIGHT,
                                          width=WIDTH, encoding="32FC1", step=WIDTH * 4,
                                          data=m.view(np.uint8).reshape(-1))
                    elif topic == cam.depth_topic:
                        msg = new_message(store, image_type, header=msg.header, height=HEIGHT,
                                          width=WIDTH, encoding="16UC1", step=WIDTH * 2,
                                          data=np.zeros(WIDTH * HEIGHT * 2, np.uint8))
                    elif topic == cam.camera_info_topic and i == 2:
                        msg = new_message(store, info_type, header=msg.header, height=720,
                                          width=1280, distortion_model=msg.distortion_model,
                                          d=msg.d, k=msg.k * 2, r=msg.r, p=msg.p * 2)
                    writer.write(conns[topic], frame.stamp_ns, store.serialize_cdr(msg, msgtype))
    return out


def test_cameras_with_hostile_depth_and_a_resolution_switch(fitted_engine, tmp_path):
    """Issue 21 red team. 32FC1 with NaN and inf: positions from the valid pixels only (the
    same 1.5 m / 2.0 m as clean depth); 16UC1 zeros: no positions, never 0 m; a 100 kB
    frame_id: carried through, the warnings stay short; CameraInfo for 1280 x 720 with
    640 x 480 depth (another aspect ratio): no positions, one warning (before: K scaled
    non-uniformly and wrong positions given)."""
    bag = _hostile_depth_bag(tmp_path / "in")
    config = ReplayConfig(in_bag=bag, out_bag=tmp_path / "out", cameras=two_cameras(),
                          questions=("Where is the cube?",), choices=("left", "right"),
                          jsonl=tmp_path / "r.jsonl", progress=False)
    s = run_replay(config, fitted_engine)
    assert (s.frames_answered, s.positions) == (6, 4)
    assert all(len(w) < 400 for w in s.warnings)
    assert any("not aligned with the camera_info (1280 x 720)" in w for w in s.warnings)
    records = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    positions = [[o["position"] for o in r["scene_graph"]["objects"]] for r in records]
    assert [r["camera"] for r in records] == ["camera", "camera2"] * 3
    assert [len(r["frame_id"]) for r in records][2:4] == [100_000, 100_000]
    for z in (positions[0], positions[2]):
        assert [p[2] for p in z] == pytest.approx([1.5, 2.0], abs=0.01)
    assert positions[1] == positions[3] == positions[5] == [None, None]
    assert positions[4] == [None, None]
