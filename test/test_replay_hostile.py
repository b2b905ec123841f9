"""Replay against hostile input: questions, prefixes and topics refused before the model loads,
and single messages a recorder wrote badly skipped without losing the rest of the bag."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
from rosbags.rosbag2 import Reader, StoragePlugin, Writer

from spatialthinker_ros.bag_types import make_typestore
from spatialthinker_ros.replay import ReplayConfig, run_replay
from spatialthinker_ros.sample_bag import FRAME_ID, IMAGE_TOPIC, write_sample_bag

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
IMAGE = "sensor_msgs/msg/Image"


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "spatialthinker_ros.cli", *args], env=ENV,
                          capture_output=True, text=True, timeout=300)


def unloadable_model(tmp_path: Path) -> Path:
    """Passes the model reference check but cannot load: an error about anything else proves
    that the check came before the model load."""
    model = tmp_path / "unloadable_model"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text("{}")
    return model


def test_bad_questions_prefixes_and_empty_topics_are_refused_before_the_model(tmp_path):
    """Before: an empty question or control tokens loaded the model and failed every frame
    (exit 0); `--prefix 'bad topic'` wrote topics no ROS tool can play; an image topic without
    messages loaded the model for 0 frames (exit 0)."""
    bag = write_sample_bag(tmp_path / "in", frames=1)
    empty = tmp_path / "empty"
    store = make_typestore()
    with Writer(empty, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        writer.add_connection(IMAGE_TOPIC, IMAGE, typestore=store)
    model = str(unloadable_model(tmp_path))
    out = tmp_path / "out"
    cases = [
        (bag, ["--question", " "], "question is empty"),
        (bag, ["--question", "q <|im_start|>"], "control tokens"),
        (bag, ["--question", "q", "--choices", "a", ""], "choices must be non-empty"),
        (bag, ["--question", "q", "--prefix", "bad topic"], "--prefix 'bad topic'"),
        (bag, ["--question", "q", "--prefix", "relative"], "--prefix 'relative'"),
        (bag, ["--question", "q", "--prefix", "/1st"], "--prefix '/1st'"),
        (empty, ["--question", "q"], f"topic {IMAGE_TOPIC} of .* holds no messages"),
    ]
    for in_bag, extra, message in cases:
        run = cli("replay", str(in_bag), "--image-topic", IMAGE_TOPIC, "--out", str(out),
                  "--model", model, "--quiet", *extra)
        assert run.returncode == 2, (extra, run.stderr)
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("spatialthinker-ros: error:"), run.stderr
        assert re.search(message, lines[0]), (message, lines[0])
        assert not out.exists()


def bag_with_bad_messages(tmp_path: Path) -> Path:
    """The sample bag's 4 images with the 2nd cut short (invalid CDR) and the 3rd's frame_id
    made invalid UTF-8: an intact bag file holding two messages that cannot be decoded."""
    sample = write_sample_bag(tmp_path / "sample", frames=4)
    with Reader(sample) as reader:
        images = [(t, bytes(raw)) for c, t, raw in reader.messages() if c.topic == IMAGE_TOPIC]
    images[1] = (images[1][0], images[1][1][:60])
    frame_id = FRAME_ID.encode()
    images[2] = (images[2][0], images[2][1].replace(frame_id, b"\xff" * len(frame_id), 1))
    out = tmp_path / "bad"
    with Writer(out, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        conn = writer.add_connection(IMAGE_TOPIC, IMAGE, typestore=make_typestore())
        for t, raw in images:
            writer.write(conn, t, raw)
    return out


def test_messages_that_cannot_be_decoded_are_skipped_and_the_rest_answered(
    fitted_engine, tmp_path
):
    """Before: the first undecodable message ended the replay ("input stopped early", exit 1):
    every frame after it was lost."""
    config = ReplayConfig(in_bag=bag_with_bad_messages(tmp_path), out_bag=tmp_path / "out",
                          image_topic=IMAGE_TOPIC, questions=("Where is the cube?",),
                          progress=False, jsonl=tmp_path / "out.jsonl")
    summary = run_replay(config, fitted_engine)
    assert not summary.stopped_early, summary.stopped_early
    assert (summary.images_seen, summary.frames_answered, summary.skipped_bad_image) == (4, 2, 2)
    assert sum("cannot be decoded" in w for w in summary.warnings) == 2
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 2


def test_failed_inference_exits_1_not_0(tmp_path):
    """Before: a server that never answered gave 0 frames answered and exit 0."""
    from spatialthinker_ros.testing.ports import free_port

    bag = write_sample_bag(tmp_path / "in", frames=1)
    run = cli("replay", str(bag), "--image-topic", IMAGE_TOPIC, "--question", "q",
              "--out", str(tmp_path / "out"), "--backend", "openai", "--base-url",
              f"http://127.0.0.1:{free_port()}/v1", "--model", "x", "--retries", "0", "--quiet")
    assert run.returncode == 1, run.stderr
    assert "1 inference errors" in run.stdout and "Traceback" not in run.stderr


def test_frames_over_max_image_pixels_are_skipped_unread(fitted_engine, tmp_path):
    """Raw and compressed frames meet the engine's max_image_pixels when they are decoded, as in
    the node (one function, `core.images.message_to_rgb`). Before: replay decoded every frame
    against the default cap, so an over-cap frame failed later as an inference error."""
    from dataclasses import replace

    from spatialthinker_ros.core.images import encode_jpeg

    store = make_typestore()
    with Reader(write_sample_bag(tmp_path / "sample", frames=2)) as reader:
        raws = [(t, bytes(raw)) for c, t, raw in reader.messages() if c.topic == IMAGE_TOPIC]
    compressed_type = store.types["sensor_msgs/msg/CompressedImage"]
    header_type = store.types["std_msgs/msg/Header"]
    time_type = store.types["builtin_interfaces/msg/Time"]
    jpeg = encode_jpeg(np.zeros((48, 64, 3), np.uint8))
    bag = tmp_path / "mixed"
    with Writer(bag, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        raw_conn = writer.add_connection(IMAGE_TOPIC, IMAGE, typestore=store)
        jpeg_conn = writer.add_connection("/jpeg", "sensor_msgs/msg/CompressedImage",
                                          typestore=store)
        for t, raw in raws:
            writer.write(raw_conn, t, raw)
            msg = compressed_type(header_type(time_type(t // 10**9, t % 10**9), FRAME_ID), "jpeg",
                                  np.frombuffer(jpeg, np.uint8))
            writer.write(jpeg_conn, t, store.serialize_cdr(msg, compressed_type.__msgtype__))
    saved = fitted_engine.config
    fitted_engine.config = replace(saved, max_image_pixels=1000)
    try:
        for topic in (IMAGE_TOPIC, "/jpeg"):
            config = ReplayConfig(in_bag=bag, out_bag=tmp_path / f"out{topic.count('j')}",
                                  image_topic=topic, questions=("Where is the cube?",),
                                  progress=False)
            summary = run_replay(config, fitted_engine)
            assert (summary.frames_answered, summary.skipped_bad_image) == (0, 2), topic
            assert summary.inference_errors == 0, topic
            assert all("exceeds the limit of 1000 pixels" in w for w in summary.warnings), \
                summary.warnings
    finally:
        fitted_engine.config = saved


def test_metadata_that_disagrees_with_the_bag_files_is_reported(tmp_path):
    """Issue 21 red team: metadata.yaml retypes the image topic (CompressedImage) while the
    MCAP's channel holds Image. rosbags then yields none of its messages: before, replay
    answered 0 frames of 0 images and exited 0. Now the run says the bag lists 2 messages
    its files do not hold, as stopped early (exit 1). No model needed: the reading side."""
    from spatialthinker_ros.replay_config import ReplaySummary, camera_topics
    from spatialthinker_ros.replay_frames import FrameReader, prepare_replay

    bag = write_sample_bag(tmp_path / "in", frames=2)
    metadata = bag / "metadata.yaml"
    text = metadata.read_text()
    at = text.index(f"name: {IMAGE_TOPIC}")
    end = text.index("type: sensor_msgs/msg/Image", at)
    metadata.write_text(text[:end] + "type: sensor_msgs/msg/CompressedImage"
                        + text[end + len("type: sensor_msgs/msg/Image"):])
    config = ReplayConfig(in_bag=bag, out_bag=tmp_path / "out",
                          cameras=camera_topics([IMAGE_TOPIC], [], []), questions=("q?",),
                          progress=False)
    prepared = prepare_replay(config)
    summary = ReplaySummary()
    try:
        frames = list(FrameReader(config, make_typestore(), summary).work(prepared))
    finally:
        prepared.bag.close()
    assert frames == [] and summary.images_seen == 0
    assert f"the bag lists 2 messages on {IMAGE_TOPIC} but its files hold 0" in \
        summary.stopped_early
