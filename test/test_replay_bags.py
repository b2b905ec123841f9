"""Replay of bags from real recorders and replay's output handling, end to end with the real
engine on the fitted tiny model (bag reading itself: test_bag_io.py)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from rosbags.rosbag2 import Reader

from spatialthinker_ros.bag_types import make_typestore
from spatialthinker_ros.replay import ReplayConfig, run_replay
from spatialthinker_ros.sample_bag import IMAGE_TOPIC, write_sample_bag
from spatialthinker_ros.testing.tiny_model import FITTED_MAX_PIXELS

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SPATIALTHINKER_SHARED", ROOT.parent / "shared"))
REAL_BAG = SHARED / "data" / "amber_soccer_goal"
REAL_TOPIC = "/camera/image_raw"  # sensor_msgs/Image (so spelled), rgb8 640x480, 2 frames
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}


def replay(fitted_engine, in_bag: Path, out: Path, topic: str = IMAGE_TOPIC, **overrides):
    config = ReplayConfig(
        in_bag=in_bag,
        out_bag=out,
        image_topic=topic,
        questions=("Where is the cube?",),
        choices=("left", "right"),
        progress=False,
        **overrides,
    )
    return run_replay(config, fitted_engine)


def read_bag(path: Path) -> dict[str, list]:
    """topic -> [(msgtype, raw, message)]; opening it proves the bag was closed properly."""
    store = make_typestore()
    out: dict[str, list] = {}
    with Reader(path) as reader:
        for conn, _, raw in reader.messages():
            msg = store.deserialize_cdr(raw, conn.msgtype)
            out.setdefault(conn.topic, []).append((conn.msgtype, raw, msg))
    return out


def storage_of(out: Path) -> str:
    (file,) = [p for p in out.iterdir() if p.name != "metadata.yaml"]
    return {".mcap": "mcap", ".db3": "sqlite3"}[file.suffix]


def real_bag_copy(tmp: Path, layout: str) -> Path:
    if not (REAL_BAG / "metadata.yaml").is_file():
        pytest.skip(f"shared real bag not found at {REAL_BAG} (set SPATIALTHINKER_SHARED)")
    if layout == "dir":
        return REAL_BAG  # read in place: replay never writes into an input
    copy = tmp / "real"
    shutil.copytree(REAL_BAG, copy)
    (copy / "metadata.yaml").unlink()
    return copy / "soccer_goal_12.mcap" if layout == "file" else copy


# --- bags from real recorders ------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["dir", "no-metadata", "file"])
def test_real_recorder_bag_replays(fitted_engine, tmp_path, layout):
    """libmcap's bag: `sensor_msgs/Image`, per-message zstd, metadata version 5."""
    bag = real_bag_copy(tmp_path, layout)
    s = replay(fitted_engine, bag, tmp_path / "out", topic=REAL_TOPIC, jsonl=tmp_path / "r.jsonl")
    assert (s.images_seen, s.frames_answered, s.stopped_early) == (2, 2, "")
    out = read_bag(tmp_path / "out")
    assert storage_of(tmp_path / "out") == "mcap"
    answers = [m for _, _, m in out["/spatialthinker/answer"]]
    assert [(a.option, a.matched_choice, a.status) for a in answers] == [("A", "left", 0)] * 2
    graph = out["/spatialthinker/scene_graph"][0][2]
    assert (graph.image_width, graph.image_height) == (640, 480)
    assert [o.id for o in graph.objects] == ["cube.1", "ball.1"]
    images = out[REAL_TOPIC]
    assert {t for t, _, _ in images} == {"sensor_msgs/msg/Image"}  # written in today's spelling
    assert [(m.width, m.encoding) for _, _, m in images] == [(640, "rgb8")] * 2
    records = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert [r["option"] for r in records] == ["A", "A"]
    if layout == "dir":  # the input is untouched
        assert sorted(p.name for p in REAL_BAG.iterdir()) == [
            "LICENSE",
            "metadata.yaml",
            "soccer_goal_12.mcap",
        ]


@pytest.mark.parametrize(
    "storage,compression,layout",
    [
        ("sqlite3", "none", "no-metadata"),
        ("sqlite3", "message", "file"),
        ("mcap", "none", "file"),
        ("mcap", "file", "dir"),  # whole-file zstd: metadata.yaml + .mcap.zstd
        ("mcap", "file", "no-metadata"),
    ],
)
def test_output_storage_follows_the_input(fitted_engine, tmp_path, storage, compression, layout):
    bag = write_sample_bag(tmp_path / "in", frames=1, storage=storage, compression=compression)
    if layout != "dir":
        (bag / "metadata.yaml").unlink()
    if layout == "file":
        (bag,) = bag.iterdir()
    s = replay(fitted_engine, bag, tmp_path / "out")
    assert (s.frames_answered, s.stopped_early) == (1, "")
    assert storage_of(tmp_path / "out") == storage
    answer = read_bag(tmp_path / "out")["/spatialthinker/answer"][0][2]
    assert (answer.option, answer.status) == ("A", 0)
    other = "sqlite3" if storage == "mcap" else "mcap"
    s = replay(fitted_engine, bag, tmp_path / "forced", storage=other)
    assert s.frames_answered == 1 and storage_of(tmp_path / "forced") == other


@pytest.mark.parametrize("compression", ["storage", "message"])
def test_cut_short_zstd_mcap_answers_the_frames_before_the_cut(
    fitted_engine, tmp_path, compression
):
    """zstd per chunk or per message, recorder killed at 60 %: uncompressed this kept 4 frames
    and compressed 0; now the frames whose messages precede the cut are answered."""
    bag = write_sample_bag(tmp_path / "in", frames=5, compression=compression)
    (mcap_file,) = bag.glob("*.mcap")
    data = mcap_file.read_bytes()
    mcap_file.write_bytes(data[: int(len(data) * 0.6)])
    s = replay(fitted_engine, bag, tmp_path / "out")
    assert "cut short" in s.stopped_early
    assert 1 <= s.frames_answered < 5 and s.frames_answered == s.images_seen
    out = read_bag(tmp_path / "out")
    assert len(out["/spatialthinker/answer"]) == s.frames_answered
    assert all(m.option == "A" for _, _, m in out["/spatialthinker/answer"])
    assert storage_of(tmp_path / "out") == "mcap"


# --- the command line: checks before the model, failures mid-run ---------------------------------
def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "spatialthinker_ros.cli", *args],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def replay_args(bag: Path, out: Path, model: Path, *extra: str) -> list[str]:
    return [
        "replay",
        str(bag),
        "--image-topic",
        IMAGE_TOPIC,
        "--question",
        "Where?",
        "--out",
        str(out),
        "--model",
        str(model),
        "--max-pixels",
        str(FITTED_MAX_PIXELS),
        "--quiet",
        *extra,
    ]


def test_preflight_errors_come_before_the_model(tmp_path):
    """A model directory that does not exist: every error must be about the input or an output,
    which proves nothing tried to load the model first."""
    bag = write_sample_bag(tmp_path / "in", frames=1)
    (mcap_file,) = bag.glob("*.mcap")
    before = mcap_file.read_bytes()
    no_model = tmp_path / "no-such-model"
    a_dir = tmp_path / "a-dir"
    a_dir.mkdir()
    cases = [
        (["--image-topic", "/x"], "topic /x is not in"),
        (["--jsonl", str(mcap_file)], "--jsonl .* is or is inside the input bag"),
        (["--jsonl", str(bag)], "is or is inside the input bag"),
        (["--save-frames", str(mcap_file)], "is or is inside the input bag"),
        (["--jsonl", str(a_dir)], "is a directory"),
        (["--max-frames", "-1"], "argument --max-frames: must be >= 0 .0: all., got -1"),
        (["--every", "0"], "argument --every: must be >= 1, got 0"),
        (["--rate", "-1"], "argument --rate: must be >= 0"),
        (["--rate", "nan"], "argument --rate: must be >= 0"),
        (["--every", "two"], "argument --every: not a number"),
    ]
    for extra, message in cases:
        run = cli(*replay_args(bag, tmp_path / "out", no_model, *extra))
        assert run.returncode == 2, (extra, run.stderr)
        assert "error: " in run.stderr and "Traceback" not in run.stderr, run.stderr
        assert "no-such-model" not in run.stderr, run.stderr
        assert re.search(message, run.stderr), (message, run.stderr)
        assert not (tmp_path / "out").exists()
    assert mcap_file.read_bytes() == before
    # Only with every path right does the model's own error come (and then also with exit 2).
    run = cli(*replay_args(bag, tmp_path / "out", no_model))
    assert run.returncode == 2 and "no-such-model" in run.stderr and not (tmp_path / "out").exists()


def test_jsonl_on_a_device_is_refused_before_the_model_loads(tmp_path):
    """/dev/full (before: accepted, the first write failed after the model loaded, exit 1) and
    /dev/stdout are not regular files: refused up front (issue 21), nothing created. A disk
    that fills up mid-run: `test_disk_full_mid_run_stops_cleanly`."""
    bag = write_sample_bag(tmp_path / "in", frames=1)
    for device in ("/dev/full", "/dev/stdout"):
        run = cli(*replay_args(bag, tmp_path / "out", tmp_path / "no-such-model", "--jsonl",
                               device))
        assert run.returncode == 2, run.stderr
        assert f"--jsonl {device} is a" in run.stderr and "a regular file is wanted" in run.stderr
        assert not (tmp_path / "out").exists()


def _small_disk_runner(tmp: Path, size: str) -> list[str]:
    """A command prefix that runs its command with a tmpfs of `size` mounted on tmp/disk (a disk
    that fills up), in a mount namespace of its own, copying the disk's files to tmp/kept
    afterwards; skips where mount namespaces are not allowed."""
    disk, kept = tmp / "disk", tmp / "kept"
    disk.mkdir()
    kept.mkdir()
    unshare = ["unshare", "-m"] if os.geteuid() == 0 else ["unshare", "-rm"]
    d, k = shlex.quote(str(disk)), shlex.quote(str(kept))
    script = (
        f"mount -t tmpfs -o size={size} none {d} || exit 99; "
        f'"$@"; rc=$?; cp -R {d}/. {k}/; exit $rc'
    )
    runner = [*unshare, "sh", "-c", script, "sh"]
    if subprocess.run([*runner, "true"], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs in a mount namespace here")
    return runner


@pytest.mark.parametrize("output,size", [("jsonl", "4k"), ("frames", "8k")])
def test_disk_full_mid_run_stops_cleanly(fitted_model_dir, tmp_path, output, size):
    """The JSONL (~1.5 KB a line) or the frames (~6.4 KB a PNG) on a disk that fills up after a
    frame or two, the last write cut short: exit 1, one-line error, the bag closed and readable,
    the JSONL only whole lines, only whole PNGs."""
    runner = _small_disk_runner(tmp_path, size)
    disk = tmp_path / "disk"
    bag = write_sample_bag(tmp_path / "in", frames=8)
    extra = (
        ["--jsonl", str(disk / "r.jsonl"), "--save-frames", str(tmp_path / "png")]
        if output == "jsonl"
        else ["--save-frames", str(disk / "png"), "--jsonl", str(tmp_path / "r.jsonl")]
    )
    command = [sys.executable, "-m", "spatialthinker_ros.cli"]
    command += replay_args(bag, tmp_path / "out", fitted_model_dir, *extra)
    run = subprocess.run([*runner, *command], env=ENV, capture_output=True, text=True, timeout=600)
    assert run.returncode == 1, run.stderr
    assert "spatialthinker-ros: error: cannot write" in run.stderr
    assert "No space left on device" in run.stderr and "Traceback" not in run.stderr
    answers = read_bag(tmp_path / "out")["/spatialthinker/answer"]
    assert 1 <= len(answers) < 8
    kept = tmp_path / "kept"
    jsonl = kept / "r.jsonl" if output == "jsonl" else tmp_path / "r.jsonl"
    lines = jsonl.read_bytes().split(b"\n")
    assert lines[-1] == b""  # ends with a whole line
    records = [json.loads(line) for line in lines[:-1]]
    pngs = sorted((kept / "png" if output == "frames" else tmp_path / "png").glob("*.png"))
    for png in pngs:
        with Image.open(png) as image:
            image.load()  # a cut PNG fails here
    assert 1 <= len(records) and 1 <= len(pngs)
    assert abs(len(records) - len(pngs)) <= 1  # the failing output stopped the run


def test_output_bag_on_a_full_disk_says_it_is_cut(fitted_model_dir, tmp_path):
    """The output bag itself on a disk that fills up: its close (index, summary) fails too.
    One line, exit 1, and the summary says the bag is cut short (before: "output bag closed
    cleanly" next to "cannot close output bag")."""
    runner = _small_disk_runner(tmp_path, "600k")  # less than one 640 x 480 rgb8 frame
    bag = write_sample_bag(tmp_path / "in", frames=2)
    command = [sys.executable, "-m", "spatialthinker_ros.cli"]
    command += replay_args(bag, tmp_path / "disk" / "out", fitted_model_dir)
    run = subprocess.run([*runner, *command], env=ENV, capture_output=True, text=True, timeout=600)
    assert run.returncode == 1, run.stderr
    errors = [ln for ln in run.stderr.splitlines() if "error:" in ln]
    assert len(errors) == 1 and "No space left on device" in errors[0], run.stderr
    assert "Traceback" not in run.stderr
    assert "output bag cut short" in run.stdout and "closed cleanly" not in run.stdout
