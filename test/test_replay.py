"""Bag replay on real bags (MCAP and sqlite3) with the real engine on the fitted tiny model."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rosbags.rosbag2 import Reader, StoragePlugin, Writer

from spatialthinker_ros.bag_types import interface_dir, make_typestore, new_message
from spatialthinker_ros.replay import ReplayConfig, ReplayError, run_replay
from spatialthinker_ros.sample_bag import (
    CAMERA_INFO_TOPIC,
    DEPTH_TOPIC,
    FRAME_ID,
    IMAGE_TOPIC,
    render_frame,
    write_sample_bag,
)
from spatialthinker_ros.testing.signals import default_sigint
from spatialthinker_ros.testing.tiny_model import FITTED_MAX_PIXELS

ROOT = Path(__file__).resolve().parents[1]
OUT_TOPICS = [
    "/spatialthinker/scene_graph",
    "/spatialthinker/answer",
    "/spatialthinker/debug_image",
    "/spatialthinker/markers",
]


def replay(fitted_engine, in_bag: Path, out: Path, **overrides):
    settings = {
        "in_bag": in_bag,
        "out_bag": out,
        "image_topic": IMAGE_TOPIC,
        "questions": ("Where is the cube?",),
        "choices": ("left", "right"),
        "depth_topic": DEPTH_TOPIC,
        "camera_info_topic": CAMERA_INFO_TOPIC,
        "progress": False,
    }
    return run_replay(ReplayConfig(**{**settings, **overrides}), fitted_engine)


def read_bag(path: Path) -> dict[str, list]:
    store = make_typestore()
    out: dict[str, list] = {}
    with Reader(path) as reader:
        for conn, ts, raw in reader.messages():
            out.setdefault(conn.topic, []).append((ts, store.deserialize_cdr(raw, conn.msgtype)))
    return out


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_round_trip(fitted_engine, tmp_path, storage):
    bag = write_sample_bag(tmp_path / "in", frames=3, storage=storage)
    summary = replay(fitted_engine, bag, tmp_path / "out", jsonl=tmp_path / "r.jsonl")
    assert (summary.frames_answered, summary.images_seen, summary.stopped_early) == (3, 3, "")
    assert summary.positions == 6
    assert any(
        p.suffix == (".mcap" if storage == "mcap" else ".db3") for p in (tmp_path / "out").iterdir()
    )
    inp, out = read_bag(bag), read_bag(tmp_path / "out")
    in_stamps = [(ts, m.header.stamp.sec, m.header.stamp.nanosec) for ts, m in inp[IMAGE_TOPIC]]
    for topic in [IMAGE_TOPIC, *OUT_TOPICS[:3]]:
        assert [
            (ts, m.header.stamp.sec, m.header.stamp.nanosec) for ts, m in out[topic]
        ] == in_stamps
        assert {m.header.frame_id for _, m in out[topic]} == {FRAME_ID}
    assert len(out["/spatialthinker/markers"]) == 3
    graph = out["/spatialthinker/scene_graph"][0][1]
    assert (graph.image_width, graph.image_height) == (640, 480)
    cube, ball = graph.objects
    assert (cube.id, cube.label, ball.id) == ("cube.1", "cube", "ball.1")
    # The model saw 644x476: boxes come back in 640x480 pixels.
    assert [cube.x_min, cube.y_max] == pytest.approx([64 * 640 / 644, 360 * 480 / 476], abs=1e-3)
    assert cube.has_position and cube.position.z == pytest.approx(1.5)  # the cube's depth
    assert ball.has_position and ball.position.z == pytest.approx(2.0, abs=0.05)
    assert [(r.subject_id, r.predicate, r.object_id) for r in graph.relations] == [
        ("cube.1", "left of", "ball.1")
    ]
    answer = out["/spatialthinker/answer"][0][1]
    assert (answer.option, answer.matched_choice, answer.status) == ("A", "left", 0)
    assert answer.scene_graph.objects[0].id == "cube.1" and answer.generated_tokens > 0
    debug = out["/spatialthinker/debug_image"][0][1]
    assert (debug.encoding, debug.width, debug.height) == ("rgb8", 640, 480)
    records = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert [r["option"] for r in records] == ["A"] * 3
    assert records[0]["frame_id"] == FRAME_ID
    assert records[0]["scene_graph"]["objects"][0]["position"][2] == pytest.approx(1.5)


def test_output_reads_with_the_independent_mcap_reader(fitted_engine, tmp_path):
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory

    bag = write_sample_bag(tmp_path / "in", frames=2)
    replay(fitted_engine, bag, tmp_path / "out")
    (mcap_file,) = (tmp_path / "out").glob("*.mcap")
    seen: dict[str, list] = {}
    schemas = {}
    with open(mcap_file, "rb") as f:
        reader = make_reader(f, decoder_factories=[DecoderFactory()])
        for schema, channel, message, decoded in reader.iter_decoded_messages():
            seen.setdefault(channel.topic, []).append((message.log_time, decoded))
            schemas[schema.name] = schema.data.decode()
    graph = seen["/spatialthinker/scene_graph"][1][1]
    assert [o.id for o in graph.objects] == ["cube.1", "ball.1"]
    assert graph.header.frame_id == FRAME_ID
    assert seen["/spatialthinker/answer"][0][1].option == "A"
    assert len(seen[IMAGE_TOPIC]) == 2
    # The bag's schemas are our .msg files, so the bag types are the node's types.
    for name in ("SceneGraph", "SpatialAnswer"):
        text = (interface_dir() / f"{name}.msg").read_text()
        body = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
        schema = schemas[f"spatialthinker_ros/msg/{name}"]
        assert all(line.split("#")[0].strip() in schema for line in body)


def test_every_and_max_frames(fitted_engine, tmp_path):
    bag = write_sample_bag(tmp_path / "in", frames=5)
    s = replay(fitted_engine, bag, tmp_path / "a", every=2)
    assert (s.frames_answered, s.images_seen) == (3, 5)
    s = replay(fitted_engine, bag, tmp_path / "b", max_frames=2)
    assert s.frames_answered == 2
    assert len(read_bag(tmp_path / "b")["/spatialthinker/answer"]) == 2


def test_missing_topic_lists_the_topics(fitted_engine, tmp_path):
    bag = write_sample_bag(tmp_path / "in", frames=1)
    config = ReplayConfig(
        in_bag=bag, out_bag=tmp_path / "out", image_topic="/nope", questions=("q?",), progress=False
    )
    with pytest.raises(
        ReplayError, match="/nope is not in .*/camera/image_raw .sensor_msgs/msg/Image"
    ):
        run_replay(config, fitted_engine)


def _bag_with_images(path: Path, images: list[tuple[str, object]]) -> Path:
    """Raw Image (encoding, rgb array) or CompressedImage ("jpeg", bytes) frames on IMAGE_TOPIC."""
    store = make_typestore()
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        kinds = {
            "sensor_msgs/msg/CompressedImage" if e == "jpeg" else "sensor_msgs/msg/Image"
            for e, _ in images
        }
        (msgtype,) = kinds
        conn = writer.add_connection(IMAGE_TOPIC, msgtype, typestore=store)
        for i, (encoding, payload) in enumerate(images):
            stamp = new_message(store, "builtin_interfaces/msg/Time", sec=100 + i)
            header = new_message(store, "std_msgs/msg/Header", stamp=stamp, frame_id="cam")
            if encoding == "jpeg":
                msg = new_message(
                    store,
                    msgtype,
                    header=header,
                    format="jpeg",
                    data=np.frombuffer(payload, np.uint8),
                )
            else:
                h, w = payload.shape[:2]
                msg = new_message(
                    store,
                    msgtype,
                    header=header,
                    height=h,
                    width=w,
                    encoding=encoding,
                    step=w * 3,
                    data=payload.reshape(-1),
                )
            writer.write(conn, (100 + i) * 10**9, store.serialize_cdr(msg, msgtype))
    return path


def test_unsupported_encoding_is_skipped_and_counted(fitted_engine, tmp_path):
    rgb = render_frame(0).rgb
    bag = _bag_with_images(
        tmp_path / "in", [("rgb8", rgb), ("yuv422_weird", rgb), ("bgr8", rgb[..., ::-1].copy())]
    )
    s = run_replay(
        ReplayConfig(
            in_bag=bag,
            out_bag=tmp_path / "out",
            image_topic=IMAGE_TOPIC,
            questions=("q?",),
            progress=False,
        ),
        fitted_engine,
    )
    assert (s.frames_answered, s.skipped_bad_image) == (2, 1)
    assert any("yuv422_weird" in w for w in s.warnings)


def test_compressed_images(fitted_engine, tmp_path):
    buf = io.BytesIO()
    Image.fromarray(render_frame(0).rgb).save(buf, format="JPEG")
    bag = _bag_with_images(tmp_path / "in", [("jpeg", buf.getvalue())])
    s = run_replay(
        ReplayConfig(
            in_bag=bag,
            out_bag=tmp_path / "out",
            image_topic=IMAGE_TOPIC,
            questions=("q?",),
            progress=False,
        ),
        fitted_engine,
    )
    assert s.frames_answered == 1
    out = read_bag(tmp_path / "out")
    assert out["/spatialthinker/scene_graph"][0][1].image_width == 640


def test_truncated_mcap_keeps_what_was_written(fitted_engine, tmp_path):
    bag = write_sample_bag(tmp_path / "in", frames=5)
    (mcap_file,) = bag.glob("*.mcap")
    data = mcap_file.read_bytes()
    mcap_file.write_bytes(data[: int(len(data) * 0.6)])
    s = replay(fitted_engine, bag, tmp_path / "out")
    assert s.stopped_early, "a truncated bag must be reported"
    assert 1 <= s.frames_answered < 5
    out = read_bag(tmp_path / "out")  # the output bag is closed and valid
    assert len(out["/spatialthinker/answer"]) == s.frames_answered


def test_corrupt_sqlite_bag_is_reported(fitted_engine, tmp_path):
    bag = write_sample_bag(tmp_path / "in", frames=3, storage="sqlite3")
    (db,) = bag.glob("*.db3")
    data = bytearray(db.read_bytes())
    data[len(data) // 2 :] = b"\xff" * (len(data) - len(data) // 2)
    db.write_bytes(bytes(data))
    try:
        s = replay(fitted_engine, bag, tmp_path / "out")
    except ReplayError as exc:  # corrupt before any message: a clear error
        assert "cannot open bag" in str(exc) or "corrupt" in str(exc).lower()
    else:
        assert s.stopped_early or s.frames_answered <= 3
        read_bag(tmp_path / "out")


def test_cli_replay_and_sample_bag(fitted_model_dir, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    cli = [sys.executable, "-m", "spatialthinker_ros.cli"]
    run = subprocess.run(
        [*cli, "make-sample-bag", str(tmp_path / "in"), "--frames", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    run = subprocess.run(
        [
            *cli,
            "replay",
            str(tmp_path / "in"),
            "--image-topic",
            IMAGE_TOPIC,
            "--question",
            "Where?",
            "--out",
            str(tmp_path / "out"),
            "--storage",
            "sqlite3",
            "--save-frames",
            str(tmp_path / "png"),
            "--model",
            str(fitted_model_dir),
            "--max-pixels",
            str(FITTED_MAX_PIXELS),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert "2 frames answered of 2 images" in run.stdout
    assert len(list((tmp_path / "png").glob("*.png"))) == 2
    assert list((tmp_path / "out").glob("*.db3"))
    missing = subprocess.run(
        [
            *cli,
            "replay",
            str(tmp_path / "in"),
            "--image-topic",
            "/x",
            "--question",
            "q",
            "--out",
            str(tmp_path / "o2"),
            "--model",
            str(fitted_model_dir),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert missing.returncode == 2 and "/camera/image_raw" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_several_questions_share_the_frame(fitted_engine, tmp_path):
    """Two questions per frame go through answer_many: one answer and graph per question."""
    bag = write_sample_bag(tmp_path / "in", frames=2)
    s = replay(
        fitted_engine,
        bag,
        tmp_path / "out",
        questions=("Where is the cube?", "Which is bigger?"),
        jsonl=tmp_path / "r.jsonl",
    )
    assert s.frames_answered == 2
    out = read_bag(tmp_path / "out")
    answers = [m for _, m in out["/spatialthinker/answer"]]
    assert [a.question for a in answers] == ["Where is the cube?", "Which is bigger?"] * 2
    assert all(a.option == "A" for a in answers)
    assert len(out["/spatialthinker/scene_graph"]) == 4
    assert len(out["/spatialthinker/debug_image"]) == 2  # one per frame
    records = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert [r["question"] for r in records] == ["Where is the cube?", "Which is bigger?"] * 2
    assert records[0]["scene_graph"]["objects"][0]["position"][2] == pytest.approx(1.5)


def test_ctrl_c_closes_the_output_bag(fitted_model_dir, tmp_path):
    """SIGINT mid-replay: exit 130, summary printed, and the output bag is closed and readable."""
    import signal

    bag = write_sample_bag(tmp_path / "in", frames=40)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    jsonl = tmp_path / "r.jsonl"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "spatialthinker_ros.cli",
            "replay",
            str(bag),
            "--image-topic",
            IMAGE_TOPIC,
            "--question",
            "Where?",
            "--out",
            str(tmp_path / "out"),
            "--jsonl",
            str(jsonl),
            "--model",
            str(fitted_model_dir),
            "--max-pixels",
            str(FITTED_MAX_PIXELS),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_sigint,  # Ctrl-C as from a terminal, however the tests run
    )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if jsonl.exists() and jsonl.read_text().count("\n") >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "interrupted (output bag closed cleanly)" in stdout
    answered = len(read_bag(tmp_path / "out")["/spatialthinker/answer"])
    assert 2 <= answered < 40
    text = jsonl.read_text()  # JSONL lines are written whole: every line is valid JSON
    assert text.endswith("\n") and len([json.loads(line) for line in text.splitlines()]) >= 2


@pytest.mark.parametrize("questions", [("Where is the cube?",), ("Where?", "Which is bigger?")])
def test_stop_after_scene_graph(fitted_engine, tmp_path, questions):
    """One question (answer) or several (answer_many): answers end with the scene graph."""
    bag = write_sample_bag(tmp_path / "in", frames=1)
    s = replay(fitted_engine, bag, tmp_path / "out", questions=questions, stop_after="scene_graph",
               jsonl=tmp_path / "r.jsonl")
    assert s.frames_answered == 1
    answers = [m for _, m in read_bag(tmp_path / "out")["/spatialthinker/answer"]]
    assert len(answers) == len(questions)
    for answer in answers:
        assert answer.status == 0 and answer.option == ""  # OK, no answer
        assert answer.raw_output.rstrip().endswith("</scene>")
        assert [o.id for o in answer.scene_graph.objects] == ["cube.1", "ball.1"]
    records = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert all(r["stop_after"] == "scene_graph" for r in records)
