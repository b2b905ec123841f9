"""Paths that are not regular files, and writes that fail (issue 21 items 4 and 5).

Every path a command reads or writes is checked up front by `core.files`: a FIFO, a device
(`/dev/stdout` piped, `/dev/zero`, `/dev/full`, `/dev/null`) or a directory is one line, exit 2,
before the model loads (the model here is a folder that passes the reference check but cannot
load: an error naming anything else proves the order). A write that fails mid-run (a tmpfs that
fills up, in a mount namespace of its own) is one line, the documented exit code, and leaves a
file of whole lines that a rerun resumes from; an image is a complete file or none.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_replay_bags import _small_disk_runner

from spatialthinker_ros.core.files import (
    LineFile,
    input_file_problem,
    output_dir_problem,
    output_file_problem,
    read_capped,
    write_atomic,
)
from spatialthinker_ros.sample_bag import IMAGE_TOPIC, write_sample_bag
from spatialthinker_ros.testing import benchmark_files as bf

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
CLI = [sys.executable, "-m", "spatialthinker_ros.cli"]


def run(*args: str, timeout: float = 120, runner: list[str] | None = None):
    """The CLI with its stdout a pipe (so /dev/stdout is one); a hang fails the test."""
    return subprocess.run([*(runner or []), *CLI, *args], env=ENV, capture_output=True,
                          text=True, timeout=timeout, check=False)


def unloadable_model(tmp: Path) -> Path:
    model = tmp / "unloadable_model"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text("{}")
    return model


def one_line_exit_2(done: subprocess.CompletedProcess, *expected: str) -> None:
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and lines[0].startswith("spatialthinker-ros: error: "), done.stderr
    assert "could not load model" not in lines[0], done.stderr  # checked before the load
    for text in expected:
        assert text in lines[0], done.stderr


def test_the_checks(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    regular = tmp_path / "file"
    regular.write_text("x\n")
    assert input_file_problem(regular) is None
    assert "is a pipe (FIFO)" in input_file_problem(fifo)
    assert "is a device" in input_file_problem(Path("/dev/zero"))
    assert "is a directory" in input_file_problem(tmp_path)
    assert "does not exist" in input_file_problem(tmp_path / "missing")
    assert output_file_problem(regular) is None
    assert output_file_problem(tmp_path / "new" / "deeper.jsonl") is None  # folders are made
    assert "does not exist" in output_file_problem(tmp_path / "new" / "x.png", make_parents=False)
    for path in (fifo, Path("/dev/full"), Path("/dev/null")):
        assert "a regular file is wanted" in output_file_problem(path)
    assert "is a directory" in output_file_problem(tmp_path)
    assert "not a directory" in output_file_problem(regular / "x")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere" / "x")
    assert "dangling" in output_file_problem(tmp_path / "dangling")
    assert "Permission denied" in output_file_problem(Path("/sys/kernel/mm/spatialthinker"))
    assert "not a directory" in output_dir_problem(regular)
    assert output_dir_problem(tmp_path / "frames") is None
    with pytest.raises(OSError, match="not a regular file"):
        read_capped(fifo, 10)  # opened without blocking, refused on the open file
    assert read_capped(regular, 10) == b"x\n"
    with pytest.raises(OSError, match="larger than 1 bytes"):
        read_capped(regular, 1)


def test_line_file_and_atomic_write(tmp_path):
    path = tmp_path / "r.jsonl"
    lines = LineFile(path)
    lines.write_line('{"a": 1}')
    lines.close()
    lines = LineFile(path, append=True)
    lines.write_line('{"a": 2}\n')
    lines.close()
    assert path.read_text() == '{"a": 1}\n{"a": 2}\n'
    assert LineFile(path).close() is None and path.read_text() == ""  # not append: emptied
    with pytest.raises(OSError):
        LineFile(Path("/dev/null"))
    image = tmp_path / "a.png"
    write_atomic(image, b"complete")
    assert image.read_bytes() == b"complete" and oct(image.stat().st_mode & 0o777) == "0o644"
    with pytest.raises(OSError):
        write_atomic(tmp_path / "missing" / "a.png", b"x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "r.jsonl"]  # no temp left


def test_every_command_refuses_what_is_not_a_regular_file(tmp_path):
    """Before: `eval --results` on a FIFO or on a piped /dev/stdout hung before the model
    loaded; on /dev/zero it would read until memory ran out."""
    model = ["--model", str(unloadable_model(tmp_path))]
    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)
    fifo_bag = tmp_path / "pipe.mcap"
    os.mkfifo(fifo_bag)
    bench = bf.write_jsonl(tmp_path / "bench.jsonl", ["A"])
    image = tmp_path / "img.png"
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(image)
    bag = write_sample_bag(tmp_path / "bag", frames=1)
    replay = ["replay", str(bag), "--image-topic", IMAGE_TOPIC, "--question", "Q?",
              "--out", str(tmp_path / "out"), *model]
    cases = [
        (["eval", str(bench), "--results", str(fifo), *model], "is a pipe (FIFO)"),
        (["eval", str(bench), "--results", "/dev/stdout", *model], "/dev/stdout is a pipe"),
        (["eval", str(bench), "--results", "/dev/zero", *model], "/dev/zero is a device"),
        (["eval", str(bench), "--results", str(tmp_path), *model], "is a directory"),
        (["eval", str(fifo), *model], "is a pipe (FIFO)"),
        (["eval", "/dev/zero", *model], "/dev/zero is a device"),
        (["ask", str(image), "q?", "--annotate", "/dev/full", *model], "is a device"),
        (["ask", str(image), "q?", "--annotate", str(fifo), *model], "is a pipe"),
        (["ask", "/dev/stdout", "q?", *model], "/dev/stdout is a pipe"),
        ([*replay, "--jsonl", "/dev/stdout"], "/dev/stdout is a pipe"),
        ([*replay, "--jsonl", str(fifo)], "is a pipe (FIFO)"),
        ([*replay, "--jsonl", "/dev/full"], "/dev/full is a device"),
        ([*replay, "--save-frames", "/dev/null"], "not a directory"),
        (["replay", str(fifo_bag), *replay[2:]], "is a pipe (FIFO)"),
        (["make-sample-bag", "/dev/null"], "exists"),
        (["make-sample-bag", "/sys/kernel/mm/bag"], "cannot write in /sys/kernel/mm"),
        (["make-test-model", str(image)], "not a directory"),
        (["make-test-model", "/dev/full"], "not a directory"),
    ]
    for argv, expected in cases:
        done = run(*argv, timeout=60)
        one_line_exit_2(done, expected)
    assert not (tmp_path / "out").exists()
    assert Path("/dev/full").exists()  # nothing replaced a device node


def _read_only_runner(tmp: Path) -> list[str]:
    """As `_small_disk_runner`, with the tmpfs on tmp/disk mounted read-only (EROFS)."""
    disk = tmp / "rodisk"
    disk.mkdir()
    d = shlex.quote(str(disk))
    script = (f"mount -t tmpfs -o size=64k none {d} && touch {d}/old.jsonl && "
              f'mount -o remount,ro {d} || exit 99; "$@"')
    unshare = ["unshare", "-m"] if os.geteuid() == 0 else ["unshare", "-rm"]
    runner = [*unshare, "sh", "-c", script, "sh"]
    if subprocess.run([*runner, "true"], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a read-only tmpfs in a mount namespace here")
    return runner


def test_read_only_and_denied_outputs_are_one_line_before_the_model_loads(tmp_path):
    """EROFS (a read-only mount: permission bits would not stop root) and EACCES (sysfs denies
    root too) for every output, checked up front."""
    runner = _read_only_runner(tmp_path)
    disk = tmp_path / "rodisk"
    model = ["--model", str(unloadable_model(tmp_path))]
    bench = bf.write_jsonl(tmp_path / "bench.jsonl", ["A"])
    image = tmp_path / "img.png"
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(image)
    bag = write_sample_bag(tmp_path / "bag", frames=1)
    replay = ["replay", str(bag), "--image-topic", IMAGE_TOPIC, "--question", "Q?", *model]
    for argv in (
        ["eval", str(bench), "--results", str(disk / "new.jsonl"), *model],
        ["eval", str(bench), "--results", str(disk / "old.jsonl"), *model],
        ["ask", str(image), "q?", "--annotate", str(disk / "a.png"), *model],
        [*replay, "--out", str(disk / "out")],
        [*replay, "--out", str(tmp_path / "out"), "--jsonl", str(disk / "r.jsonl")],
        [*replay, "--out", str(tmp_path / "out"), "--save-frames", str(disk / "png")],
        ["make-sample-bag", str(disk / "bag")],
        ["make-test-model", str(disk / "model")],
    ):
        one_line_exit_2(run(*argv, runner=runner), "Read-only file system")
    denied = run("eval", str(bench), "--results", "/sys/kernel/mm/r.jsonl", *model)
    one_line_exit_2(denied, "Permission denied")


def test_eval_on_a_full_disk_keeps_whole_lines_and_resumes(server, tmp_path):
    """Before: exit 1 with `OSError: [Errno 28]` raised from `log.close()` (the buffered line
    written again in `finally`). Now: one line, exit 1, the results file holds whole records
    only, and the same command elsewhere resumes from it, asking only the rest."""
    runner = _small_disk_runner(tmp_path, "4k")
    bench = bf.write_jsonl(tmp_path / "bench.jsonl", ["A", "B"] * 10)
    remote = ["--backend", "openai", "--base-url", server.base_url, "--model", "scripted"]
    full = run("eval", str(bench), *remote, "--results", str(tmp_path / "disk" / "r.jsonl"),
               "--quiet", runner=runner, timeout=300)
    assert full.returncode == 1, full.stderr
    lines = full.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in full.stderr, full.stderr
    assert "cannot write --results" in lines[0] and "No space left on device" in lines[0]
    kept = (tmp_path / "kept" / "r.jsonl").read_bytes()
    assert kept.endswith(b"\n")
    records = [json.loads(line) for line in kept.decode().splitlines()]
    assert 1 <= len(records) < 20
    asked = len(server.requests)
    resumed = tmp_path / "r.jsonl"
    resumed.write_bytes(kept)
    again = run("eval", str(bench), *remote, "--results", str(resumed), "--json", "--quiet",
                timeout=300)
    assert again.returncode == 0, again.stderr
    report = json.loads(again.stdout)
    assert (report["resumed"], report["answered_now"]) == (len(records), 20 - len(records))
    assert len(server.requests) - asked == 20 - len(records)
    keys = [json.loads(line)["key"] for line in resumed.read_text().splitlines()]
    assert keys == [f"bench#q{i}" for i in range(20)]


def test_an_eval_item_whose_image_is_a_fifo_is_skipped(server, tmp_path):
    """An item's image path is read as a file too: a FIFO is an unreadable image (skipped and
    counted), never a hang."""
    bench = bf.write_jsonl(tmp_path / "bench.jsonl", ["A", "A"])
    first = json.loads(bench.read_text().splitlines()[0])
    target = bench.parent / first["image"]
    target.unlink()
    os.mkfifo(target)
    remote = ["--backend", "openai", "--base-url", server.base_url, "--model", "scripted"]
    done = run("eval", str(bench), *remote, "--json", "--quiet", timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["overall"]["n"] == 1
    assert "unreadable image" in json.dumps(report["skipped"])


def test_ask_annotate_on_a_full_disk_leaves_no_part_of_an_image(fitted_model_dir, tmp_path):
    runner = _small_disk_runner(tmp_path, "4k")
    image = tmp_path / "img.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)).save(image)
    done = run("ask", str(image), "Which is left?", "--model", str(fitted_model_dir),
               "--annotate", str(tmp_path / "disk" / "a.png"), runner=runner, timeout=600)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "--annotate: cannot write" in lines[-1] and "No space left" in lines[-1]
    assert list((tmp_path / "kept").iterdir()) == []  # neither a cut PNG nor its temp file


def test_make_sample_bag_and_make_test_model_on_a_full_disk(tmp_path):
    """One line, exit 1, and nothing half-written left behind (before: make-test-model ended
    with safetensors' SafetensorError traceback, a folder without weights left)."""
    runner = _small_disk_runner(tmp_path, "64k")
    disk = tmp_path / "disk"
    for argv in (["make-sample-bag", str(disk / "bag")], ["make-test-model", str(disk / "m")]):
        done = run(*argv, runner=runner, timeout=300)
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
        errors = [ln for ln in done.stderr.splitlines() if "error:" in ln]
        assert len(errors) == 1 and "No space left on device" in errors[0], done.stderr
    assert list((tmp_path / "kept").iterdir()) == []
