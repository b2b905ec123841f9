"""A damaged model folder (issue 21 item 6): each damage ends `ask`, `replay` and `eval` with
the one-line ModelLoadError, never a traceback. The damaged folders are copies of the tiny test
model; the commands run in one child process (one torch import), through `cli.main`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def _set_hidden_size(node: object) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "hidden_size":
                node[key] = "big"
            else:
                _set_hidden_size(value)


def damaged_copies(model: Path, out: Path) -> dict[str, Path]:
    """name -> a copy of `model` with one damage."""
    import torch
    from safetensors.torch import load_file

    def copy(name: str) -> Path:
        target = out / name
        shutil.copytree(model, target)
        return target

    folders = {}
    d = folders["half-downloaded safetensors"] = copy("half")
    weights = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    d = folders["corrupt safetensors header"] = copy("header")
    (d / "model.safetensors").write_bytes(weights[:8] + b"{not json" + weights[17:])
    d = folders["hidden_size big"] = copy("hidden")
    config = json.loads((d / "config.json").read_text())
    _set_hidden_size(config)
    (d / "config.json").write_text(json.dumps(config))
    d = folders["broken chat template"] = copy("template")
    (d / "chat_template.jinja").write_text("{% for m in messages %}{{ m.content ")
    d = folders["pickle-only pytorch_model.bin"] = copy("pickle")
    state = load_file(str(d / "model.safetensors"))
    (d / "model.safetensors").unlink()
    torch.save({"state": state, "code": _Pickled()}, d / "pytorch_model.bin")
    return folders


class _Pickled:
    """An object only a full unpickler rebuilds (torch's weights_only refuses it)."""

    def __reduce__(self):
        return (print, ("unpickled",))


_CHILD = """
import contextlib, io, json, sys
from spatialthinker_ros.cli import main
results = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            rc = main(argv)
    except BaseException as exc:  # noqa: BLE001 - what the test looks for
        rc = "raised " + type(exc).__name__
    results.append({"argv": argv, "rc": rc, "stderr": err.getvalue()})
print(json.dumps(results))
"""


def test_a_damaged_model_folder_is_one_line_for_ask_replay_and_eval(tiny_model_dir, tmp_path):
    from spatialthinker_ros.sample_bag import IMAGE_TOPIC, write_sample_bag

    folders = damaged_copies(tiny_model_dir, tmp_path / "models")
    image = tmp_path / "img.png"
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(image)
    items = tmp_path / "items.jsonl"
    items.write_text(json.dumps({"image": "img.png", "question": "Which is left?",
                                 "choices": ["cube", "ball"], "answer": "A"}) + "\n")
    bag = write_sample_bag(tmp_path / "bag", frames=1)
    commands = []
    for model in folders.values():
        m = ["--model", str(model)]
        commands += [
            ["ask", str(image), "Which is left?", *m],
            ["replay", str(bag), "--image-topic", IMAGE_TOPIC, "--question", "Q?",
             "--out", str(tmp_path / f"out-{model.name}"), "--quiet", *m],
            ["eval", str(items), "--quiet", *m],
        ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(commands)], env=env,
                         capture_output=True, text=True, timeout=900, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(run.stdout.strip().splitlines()[-1])
    assert len(results) == 15
    for result in results:
        where = f"{result['argv'][0]} {result['argv'][-1]}"
        assert result["rc"] == 2, (where, result)
        assert "Traceback" not in result["stderr"], where
        errors = [ln for ln in result["stderr"].splitlines() if "spatialthinker-ros: error" in ln]
        assert len(errors) == 1 and "could not load model" in errors[0], (where, result["stderr"])
        assert "\x1b" not in errors[0] and "unpickled" not in result["stderr"]
    by_model = {Path(r["argv"][-1]).name: r["stderr"] for r in results}
    assert "expected int" in by_model["hidden"] and "Weights only load" in by_model["pickle"]
    assert not any((tmp_path / f"out-{m.name}").exists() for m in folders.values())


@pytest.mark.parametrize("damage", ["truncated config.json", "config.json a directory",
                                    "tokenizer.json a FIFO"])
def test_a_damaged_config_is_one_line(tiny_model_dir, tmp_path, damage):
    """Other instances of the class: a config cut off mid-object; a config.json that is a
    folder (loaders raise IsADirectoryError or JSON errors); a FIFO in the folder (the loaders
    would block on it forever)."""
    model = tmp_path / "m"
    shutil.copytree(tiny_model_dir, model)
    config = model / "config.json"
    if damage == "truncated config.json":
        config.write_text(config.read_text()[:40])
    elif damage == "tokenizer.json a FIFO":
        (model / "tokenizer.json").unlink()
        os.mkfifo(model / "tokenizer.json")
    else:
        config.unlink()
        config.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    image = tmp_path / "img.png"
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(image)
    run = subprocess.run([sys.executable, "-m", "spatialthinker_ros.cli", "ask", str(image), "q?",
                          "--model", str(model)], env=env, capture_output=True, text=True,
                         timeout=600, check=False)
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr[-2000:]
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("spatialthinker-ros: error: "), last
    assert "could not load model" in last or "config.json" in last, last
    if damage == "tokenizer.json a FIFO":
        assert "tokenizer.json is a pipe (FIFO)" in last, last
