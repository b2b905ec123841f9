"""Bag input and output paths of replay (spatialthinker_ros.bag_io), without a model.

Every input variant is a real bag written by rosbags, by the mcap library or by sqlite3 the way
older recorders did; what is read back is compared byte for byte with what was written.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from mcap.writer import CompressionType
from mcap.writer import Writer as McapWriter
from PIL import Image
from rosbags.rosbag2 import Reader

from spatialthinker_ros.bag_io import (
    FRAME_FILE,
    BagCutShort,
    FrameSaver,
    JsonlSink,
    OutputError,
    ReplayError,
    normalize_msgtype,
    open_bag,
)
from spatialthinker_ros.bag_types import make_typestore
from spatialthinker_ros.replay import ReplayConfig, prepare_replay
from spatialthinker_ros.replay_frames import Route
from spatialthinker_ros.sample_bag import (
    CAMERA_INFO_TOPIC,
    DEPTH_TOPIC,
    IMAGE_TOPIC,
    write_sample_bag,
)

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SPATIALTHINKER_SHARED", ROOT.parent / "shared"))
REAL_BAG = SHARED / "data" / "amber_soccer_goal"
TOPICS = {IMAGE_TOPIC, DEPTH_TOPIC, CAMERA_INFO_TOPIC}


def real_bag() -> Path:
    if not (REAL_BAG / "metadata.yaml").is_file():
        pytest.skip(f"shared real bag not found at {REAL_BAG} (set SPATIALTHINKER_SHARED)")
    return REAL_BAG


def messages(path: Path, topics=frozenset(TOPICS)) -> list[tuple[str, str, int, bytes]]:
    bag = open_bag(path)
    try:
        return [tuple(m) for m in bag.messages(set(topics))]
    finally:
        bag.close()


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, list]:
    """An uncompressed MCAP sample bag and its messages as rosbags reads them."""
    bag = write_sample_bag(tmp_path_factory.mktemp("ref") / "bag", frames=4)
    with Reader(bag) as reader:
        expected = [(c.topic, c.msgtype, ns, raw) for c, ns, raw in reader.messages()]
    return bag, expected


def test_type_names_are_normalised_once():
    assert normalize_msgtype("sensor_msgs/Image") == "sensor_msgs/msg/Image"
    assert normalize_msgtype("sensor_msgs/msg/Image") == "sensor_msgs/msg/Image"
    assert normalize_msgtype("example_interfaces/srv/AddTwoInts") == (
        "example_interfaces/srv/AddTwoInts"
    )
    for odd in ("Image", "/Image", "sensor_msgs/", "a/b/c/d"):
        assert normalize_msgtype(odd) == odd


# --- inputs ----------------------------------------------------------------------------------
def _variant(tmp: Path, storage: str, compression: str, layout: str) -> Path:
    """The sample bag as `layout`: "dir" (rosbag2 directory), "no-metadata" (the directory
    without metadata.yaml) or "file" (the bare storage file)."""
    bag = write_sample_bag(tmp / "bag", frames=4, storage=storage, compression=compression)
    if layout == "no-metadata":
        (bag / "metadata.yaml").unlink()
    if layout == "file":
        (file,) = [p for p in bag.iterdir() if p.name != "metadata.yaml"]
        return file
    return bag


@pytest.mark.parametrize("layout", ["dir", "no-metadata", "file"])
@pytest.mark.parametrize(
    "storage,compression",
    [
        ("mcap", "none"),
        ("mcap", "message"),
        ("mcap", "storage"),
        ("mcap", "file"),
        ("sqlite3", "none"),
        ("sqlite3", "message"),
        ("sqlite3", "file"),
    ],
)
def test_every_layout_and_compression_reads_the_same_messages(
    tmp_path, reference, storage, compression, layout
):
    path = _variant(tmp_path, storage, compression, layout)
    bag = open_bag(path)
    try:
        assert bag.storage == storage
        assert {t.name: (t.msgtype, t.count) for t in bag.topics.values()} == {
            IMAGE_TOPIC: ("sensor_msgs/msg/Image", 4),
            DEPTH_TOPIC: ("sensor_msgs/msg/Image", 4),
            CAMERA_INFO_TOPIC: ("sensor_msgs/msg/CameraInfo", 4),
        }
        got = [tuple(m) for m in bag.messages(TOPICS)]
    finally:
        bag.close()
    assert sorted(got) == sorted(reference[1])  # CDR bytes equal: decompressed where needed


def test_real_recorder_bag_with_short_type_names_and_message_zstd():
    """The shared real bag (libmcap, `sensor_msgs/Image`, per-message zstd, metadata v5)."""
    bag = open_bag(real_bag())
    try:
        assert bag.storage == "mcap"
        assert bag.topics["/camera/image_raw"].msgtype == "sensor_msgs/msg/Image"
        got = list(bag.messages({"/camera/image_raw"}))
    finally:
        bag.close()
    store = make_typestore()
    images = [store.deserialize_cdr(m.data, m.msgtype) for m in got]
    assert [(i.width, i.height, i.encoding) for i in images] == [(640, 480, "rgb8")] * 2
    assert all(len(i.data) == i.step * i.height for i in images)


@pytest.mark.parametrize("layout", ["no-metadata", "file"])
def test_real_bag_without_metadata_reads_the_same(tmp_path, layout):
    source = real_bag()
    copy = tmp_path / "bag"
    shutil.copytree(source, copy)
    (copy / "metadata.yaml").unlink()
    path = copy / "soccer_goal_12.mcap" if layout == "file" else copy
    assert messages(path, {"/camera/image_raw"}) == messages(source, {"/camera/image_raw"})


def _crystal_db3(path: Path, reference: list) -> Path:
    """A sqlite3 bag as ROS 2 Crystal wrote it: no metadata.yaml, no QoS column, `pkg/Type`."""
    path.mkdir()
    db = path / "crystal_0.db3"
    with sqlite3.connect(db) as con:
        con.execute(
            "CREATE TABLE topics(id INTEGER PRIMARY KEY, name TEXT NOT NULL, type TEXT NOT NULL,"
            " serialization_format TEXT NOT NULL)"
        )
        con.execute(
            "CREATE TABLE messages(id INTEGER PRIMARY KEY, topic_id INTEGER NOT NULL,"
            " timestamp INTEGER NOT NULL, data BLOB NOT NULL)"
        )
        ids: dict[str, int] = {}
        for topic, msgtype, ns, raw in reference:
            if topic not in ids:
                ids[topic] = len(ids) + 1
                short = msgtype.replace("/msg/", "/")
                con.execute(
                    "INSERT INTO topics VALUES (?, ?, ?, 'cdr')", (ids[topic], topic, short)
                )
            con.execute(
                "INSERT INTO messages(topic_id, timestamp, data) VALUES (?, ?, ?)",
                (ids[topic], ns, raw),
            )
    return path


def test_crystal_era_sqlite3_bag(tmp_path, reference):
    bag = open_bag(_crystal_db3(tmp_path / "crystal", reference[1]))
    try:
        assert bag.storage == "sqlite3"
        assert bag.topics[IMAGE_TOPIC].msgtype == "sensor_msgs/msg/Image"
        got = [tuple(m) for m in bag.messages(TOPICS)]
    finally:
        bag.close()
    assert sorted(got) == sorted(reference[1])


def _mcap_by_another_tool(
    path: Path, reference: list, compression: CompressionType, chunked: bool = True
) -> Path:
    """The reference messages written by the mcap library (as libmcap-based recorders do):
    short type names, lz4/zstd/no chunk compression, or no chunks at all."""
    store = make_typestore()
    with open(path, "wb") as f:
        writer = McapWriter(f, compression=compression, chunk_size=200_000, use_chunking=chunked)
        writer.start(profile="ros2", library="test")
        channels: dict[str, int] = {}
        for topic, msgtype, ns, raw in reference:
            if topic not in channels:
                schema = writer.register_schema(
                    msgtype.replace("/msg/", "/"),
                    "ros2msg",
                    store.generate_msgdef(msgtype, ros_version=2)[0].encode(),
                )
                channels[topic] = writer.register_channel(topic, "cdr", schema)
            writer.add_message(channels[topic], ns, raw, ns)
        writer.finish()
    return path


@pytest.mark.parametrize(
    "compression,chunked",
    [
        (CompressionType.LZ4, True),
        (CompressionType.ZSTD, True),
        (CompressionType.NONE, False),
    ],
)
def test_mcap_from_another_writer(tmp_path, reference, compression, chunked):
    path = _mcap_by_another_tool(tmp_path / "other.mcap", reference[1], compression, chunked)
    got = messages(path)
    assert sorted(got) == sorted(reference[1])
    assert {m[1] for m in got} == {"sensor_msgs/msg/Image", "sensor_msgs/msg/CameraInfo"}


def _cut(file: Path, fraction: float) -> None:
    data = file.read_bytes()
    file.write_bytes(data[: int(len(data) * fraction)])


@pytest.mark.parametrize("compression", ["message", "storage", "file", "lz4"])
def test_cut_short_compressed_mcap_yields_what_precedes_the_cut(tmp_path, reference, compression):
    """Recorder killed: no footer, the last chunk cut. The complete messages before the cut
    come back exactly (decompressed), then BagCutShort."""
    if compression == "lz4":
        bag = tmp_path / "bag"
        bag.mkdir()
        _mcap_by_another_tool(bag / "bag_0.mcap", reference[1], CompressionType.LZ4)
    else:
        bag = write_sample_bag(tmp_path / "bag", frames=4, compression=compression)
    (file,) = [p for p in bag.iterdir() if p.name != "metadata.yaml"]
    _cut(file, 0.6)
    opened = open_bag(bag)
    got = []
    try:
        with pytest.raises(BagCutShort, match="cut short"):
            for message in opened.messages(TOPICS):
                got.append(tuple(message))
    finally:
        opened.close()
    images = [m for m in got if m[0] == IMAGE_TOPIC]
    assert 1 <= len(images) < 4
    in_file_order = [m for m in reference[1] if m in got]
    assert got == in_file_order and got == reference[1][: len(got)]


def test_not_a_bag(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ReplayError, match="holds no bag file"):
        open_bag(tmp_path)
    with pytest.raises(ReplayError, match="does not exist"):
        open_bag(tmp_path / "missing")
    fake = tmp_path / "fake.mcap"
    fake.write_bytes(b"not an mcap at all" * 10)
    with pytest.raises(ReplayError, match="fake.mcap is neither an MCAP nor a sqlite3 bag file"):
        open_bag(fake)
    fake.write_bytes(b"\x89MCAP0\r\n" + b"\xff" * 100)  # MCAP magic, then garbage
    with pytest.raises(ReplayError, match="cannot open bag file fake.mcap: .*no channel"):
        open_bag(fake)


# --- output paths: checked before any model loads --------------------------------------------
def _digest(path: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")) if path.is_dir() else [path]:
        if p.is_file():
            h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


def _prepare(bag: Path, out: Path, **overrides):
    settings = {"in_bag": bag, "out_bag": out, "image_topic": IMAGE_TOPIC, "questions": ("q?",)}
    return prepare_replay(ReplayConfig(**{**settings, **overrides}))


@pytest.fixture
def small_bag(tmp_path) -> Path:
    return write_sample_bag(tmp_path / "in", frames=1)


def _output_cases(tmp: Path, bag: Path) -> list[tuple[dict, str]]:
    (mcap_file,) = bag.glob("*.mcap")
    link = tmp / "link.jsonl"
    link.symlink_to(mcap_file)
    hard = tmp / "hard.jsonl"
    os.link(bag / "metadata.yaml", hard)
    a_file = tmp / "file.txt"
    a_file.write_text("x")
    earlier = tmp / "earlier"
    earlier.mkdir()
    (earlier / "000000_123.png").write_bytes(b"png")
    (tmp / "exists").mkdir()
    return [
        ({"out_bag": tmp / "exists"}, "exists"),
        ({"out_bag": bag / "out"}, "inside the input bag"),
        ({"out_bag": a_file / "out"}, "not a directory"),
        ({"out_bag": Path("/proc/spatialthinker-test/out")}, "cannot write in /proc"),
        ({"jsonl": mcap_file}, "inside the input bag"),
        ({"jsonl": bag / "metadata.yaml"}, "inside the input bag"),
        ({"jsonl": bag}, "inside the input bag"),
        ({"jsonl": link}, "inside the input bag"),  # a symlink into the input
        ({"jsonl": hard}, "inside the input bag"),  # a hard link to an input file
        ({"jsonl": tmp / "exists"}, "is a directory"),
        ({"jsonl": a_file / "r.jsonl"}, "not a directory"),
        ({"jsonl": tmp / "out" / "r.jsonl"}, "overlap"),  # inside the output bag
        ({"save_frames": a_file}, "not a directory"),
        ({"save_frames": bag / "frames"}, "inside the input bag"),
        ({"save_frames": earlier}, "already holds frames"),
        ({"save_frames": tmp / "out"}, "overlap"),
        ({"jsonl": tmp / "f" / "r.jsonl", "save_frames": tmp / "f"}, "overlap"),
        ({"every": 0}, "every must be >= 1"),
        ({"max_frames": -1}, "max_frames >= 0"),
        ({"rate_hz": -2.0}, "rate_hz must be >= 0"),
        ({"rate_hz": float("nan")}, "rate_hz must be >= 0"),
        ({"concurrency": 0}, "concurrency must be >= 1"),
        ({"image_topic": "/nope"}, "/nope is not in"),
        ({"image_topic": CAMERA_INFO_TOPIC}, "has type sensor_msgs/msg/CameraInfo"),
        ({"depth_topic": CAMERA_INFO_TOPIC}, "expected sensor_msgs/msg/Image"),
    ]


def test_bad_output_paths_fail_before_anything_is_written(tmp_path, small_bag):
    cases = _output_cases(tmp_path, small_bag)
    before = {p: _digest(p) for p in tmp_path.iterdir() if not p.is_symlink()}
    for overrides, message in cases:
        with pytest.raises(ReplayError, match=message):
            _prepare(small_bag, tmp_path / "out", **overrides)
    assert not (tmp_path / "out").exists() and not (tmp_path / "f").exists()
    assert {p: _digest(p) for p in tmp_path.iterdir() if not p.is_symlink()} == before
    assert len(cases) == 25


def test_good_outputs_pass_and_existing_jsonl_is_untouched_by_the_check(tmp_path, small_bag):
    old = tmp_path / "old.jsonl"
    old.write_text('{"a": 1}\n')
    empty_frames = tmp_path / "frames"
    empty_frames.mkdir()
    prepared = _prepare(
        small_bag,
        tmp_path / "new" / "out",
        jsonl=old,
        save_frames=empty_frames,
        depth_topic=DEPTH_TOPIC,
        camera_info_topic=CAMERA_INFO_TOPIC,
    )
    prepared.bag.close()
    assert prepared.routes == {
        IMAGE_TOPIC: Route(0, "image"),
        DEPTH_TOPIC: Route(0, "depth"),
        CAMERA_INFO_TOPIC: Route(0, "info"),
    }
    assert old.read_text() == '{"a": 1}\n' and not (tmp_path / "new").exists()


# --- output writers ----------------------------------------------------------------------------
def test_frames_with_equal_stamps_get_unique_names_and_never_overwrite(tmp_path):
    saver = FrameSaver(tmp_path / "frames")
    rgb = np.zeros((8, 8, 3), np.uint8)
    paths = [saver.save(rgb + i, 5) for i in range(3)]
    assert [p.name for p in paths] == ["000000_5.png", "000001_5.png", "000002_5.png"]
    assert [np.asarray(Image.open(p))[0, 0, 0] for p in paths] == [0, 1, 2]
    blocker = tmp_path / "frames" / "000003_5.png"
    blocker.write_bytes(b"someone else's file")
    with pytest.raises(OutputError, match="000003_5.png"):
        saver.save(rgb, 5)
    assert blocker.read_bytes() == b"someone else's file"
    # Several cameras: the camera's name joins the file name (its "/" as ".").
    named = saver.save(rgb, 5, camera="arm/wrist")
    assert named.name == "000003_5_arm.wrist.png"
    assert all(FRAME_FILE.match(p.name) for p in (*paths, named))


def test_frames_of_an_earlier_multi_camera_run_are_refused(tmp_path, small_bag):
    earlier = tmp_path / "earlier"
    FrameSaver(earlier).save(np.zeros((8, 8, 3), np.uint8), 7, camera="front")
    with pytest.raises(ReplayError, match="already holds frames of an earlier replay"):
        _prepare(small_bag, tmp_path / "out", save_frames=earlier)


def test_jsonl_write_error_is_an_output_error_and_leaves_whole_lines(tmp_path):
    sink = JsonlSink(Path("/dev/full"))
    with pytest.raises(OutputError, match="No space left"):
        sink.write(json.dumps({"a": 1}) + "\n")
    sink.close()
    path = tmp_path / "r.jsonl"
    sink = JsonlSink(path)
    sink.write('{"a": ')  # a line is written only once it is complete
    assert path.read_text() == ""
    sink.write('1}\n{"b": 2}\n')
    sink.flush()
    assert [json.loads(line) for line in path.read_text().splitlines()] == [{"a": 1}, {"b": 2}]
    sink.close()
