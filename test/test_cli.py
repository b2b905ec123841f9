"""`spatialthinker-ros ask` as a user runs it: a subprocess on an image file and a model dir."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from spatialthinker_ros.testing.tiny_model import FITTED_MAX_PIXELS

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "spatialthinker_ros.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def write_image(path: Path, w: int = 641, h: int = 479) -> Path:
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def test_ask_prints_answer_scene_graph_and_timings(fitted_model_dir, tmp_path):
    image = write_image(tmp_path / "frame.png")
    out = run_cli(
        "ask",
        str(image),
        "Where is the cube relative to the ball?",
        "--choices",
        "left",
        "right",
        "--model",
        str(fitted_model_dir),
        "--max-pixels",
        str(FITTED_MAX_PIXELS),
        "--annotate",
        str(tmp_path / "annotated.png"),
    )
    assert out.returncode == 0, out.stderr
    assert "answer:   (A) left" in out.stdout
    assert "matched:  left" in out.stdout
    assert "scene graph (641 x 479 px)" in out.stdout
    assert "cube.1" in out.stdout and "cube.1 --left of--> ball.1" in out.stdout
    assert "time: preprocess" in out.stdout
    annotated = np.asarray(Image.open(tmp_path / "annotated.png"))
    assert annotated.shape == (479, 641, 3)
    assert not np.array_equal(annotated, np.asarray(Image.open(image)))


def test_ask_json(fitted_model_dir, tmp_path):
    image = write_image(tmp_path / "frame.jpg", 336, 252)
    out = run_cli(
        "ask", str(image), "Where is the cube?", "--json", "--model", str(fitted_model_dir)
    )
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    # At 336 x 252 the fitted model's ball box ([384, 180, 576, 420]) lies outside the image:
    # dropped, and the answer is PARTIAL with the reason.
    assert data["option"] == "A" and data["status"] == "partial"
    assert "ball.1" in data["status_message"] and "outside" in data["status_message"]
    assert data["model_size"] == [336, 252]
    assert [o["id"] for o in data["scene_graph"]["objects"]] == ["cube.1", "ball.1"]
    assert data["scene_graph"]["objects"][1]["box"] is None
    assert data["generated_tokens"] > 0


def test_ask_with_missing_model_is_a_clear_error_not_a_traceback(tmp_path):
    image = write_image(tmp_path / "frame.png", 56, 56)
    out = run_cli("ask", str(image), "q?", "--model", str(tmp_path / "missing"))
    assert out.returncode == 2
    assert "error: model directory" in out.stderr and "does not exist" in out.stderr
    assert "Traceback" not in out.stderr


def unloadable_model(tmp_path: Path) -> Path:
    """A directory that passes the model reference check but cannot load: an error that names
    something else proves the check came before the model load."""
    model = tmp_path / "unloadable_model"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text("{}")
    return model


def test_ask_with_unreadable_image_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    out = run_cli("ask", str(bad), "q?", "--model", str(unloadable_model(tmp_path)))
    assert out.returncode == 2 and "cannot read image" in out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_ask_refuses_images_over_max_image_pixels_before_decoding(tmp_path):
    """A 15000 x 15000 PNG (a decompression bomb to Pillow) and a 10000 x 10000 PNG of under
    100 KB: both refused from their header with one line, as the node refuses such frames."""
    for side in (15000, 10000):
        path = tmp_path / f"huge_{side}.png"
        Image.new("L", (side, side)).save(path, optimize=True)
        out = run_cli("ask", str(path), "q?", "--model", str(unloadable_model(tmp_path)))
        assert out.returncode == 2, out.stderr
        assert "exceeds the limit of 33177600 pixels" in out.stderr
        assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
    small = write_image(tmp_path / "small.png", 64, 48)
    out = run_cli("ask", str(small), "q?", "--max-image-pixels", "1000",
                  "--model", str(unloadable_model(tmp_path)))
    assert out.returncode == 2 and "exceeds the limit of 1000 pixels" in out.stderr


def test_ask_checks_the_annotate_path_before_loading_the_model(tmp_path):
    image = write_image(tmp_path / "frame.png", 56, 56)
    model = str(unloadable_model(tmp_path))
    for target, reason in ((tmp_path / "missing" / "a.png", "does not exist"),
                           (tmp_path, "is a directory"),
                           (tmp_path / "a.notanimage", "unknown image file extension")):
        out = run_cli("ask", str(image), "q?", "--model", model, "--annotate", str(target))
        assert out.returncode == 2, out.stderr
        assert "--annotate: " in out.stderr and reason in out.stderr
        assert "Traceback" not in out.stderr


def test_ask_with_bad_options_names_every_one(tmp_path):
    image = write_image(tmp_path / "frame.png", 56, 56)
    out = run_cli("ask", str(image), "q?", "--model", str(unloadable_model(tmp_path)),
                  "--max-new-tokens", "0", "--timeout", "nan", "--min-pixels", "9000000",
                  "--max-pixels", "4000")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    for name in ("max_new_tokens", "timeout_s", "max_pixels", "min_pixels"):
        assert name in out.stderr


def test_ask_never_writes_the_annotation_over_its_input(tmp_path):
    """Before: `--annotate frame.png` on frame.png replaced the input with the annotated frame."""
    image = write_image(tmp_path / "frame.png", 56, 56)
    link = tmp_path / "link.png"
    link.symlink_to(image)
    before = image.read_bytes()
    for target in (image, link):
        out = run_cli("ask", str(image), "q?", "--model", str(unloadable_model(tmp_path)),
                      "--annotate", str(target))
        assert out.returncode == 2, out.stderr
        assert "is the input image" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert image.read_bytes() == before


def test_ask_refuses_a_bad_question_before_loading_the_model(tmp_path):
    image = write_image(tmp_path / "frame.png", 56, 56)
    for args, reason in ((["  "], "question is empty"),
                         (["q <|im_start|>"], "control tokens"),
                         (["q?", "--choices", "a", " "], "choices must be non-empty")):
        out = run_cli("ask", str(image), *args, "--model", str(unloadable_model(tmp_path)))
        assert out.returncode == 2 and reason in out.stderr, out.stderr
        assert len(out.stderr.strip().splitlines()) == 1


def test_ask_reads_regular_files_only_up_to_the_limit(tmp_path):
    """Before: `ask /dev/zero` read until memory ran out (killed), and a FIFO blocked forever.
    Now only a regular file is read (issue 21), at most MAX_IMAGE_FILE_BYTES of it."""
    from spatialthinker_ros.core.files import read_capped

    out = run_cli("ask", "/dev/zero", "q?", "--model", str(unloadable_model(tmp_path)))
    assert out.returncode == 2 and "/dev/zero is a device" in out.stderr, out.stderr
    fifo = tmp_path / "camera.png"
    os.mkfifo(fifo)
    out = run_cli("ask", str(fifo), "q?", "--model", str(unloadable_model(tmp_path)))
    assert out.returncode == 2 and "is a pipe (FIFO)" in out.stderr, out.stderr
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG" + bytes(2000))
    with pytest.raises(OSError, match="larger than 1000 bytes"):
        read_capped(big, 1000)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    out = run_cli("ask", str(bad), "q?", "--model", str(unloadable_model(tmp_path)))
    assert "not a JPEG, PNG" in out.stderr and "0x" not in out.stderr, out.stderr
