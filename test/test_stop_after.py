"""stop_after="scene_graph": generation ends as soon as the scene graph is complete, and the
answer carries the observation and the graph with status OK. The completion rule on text, the
engine on the fitted tiny model (its output closes `</scene>` at a known token), the remote
backend closing its stream, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from spatialthinker_ros.core.engine import (
    EngineConfig,
    InvalidQuestion,
    SceneGraphEnd,
    SpatialThinkerEngine,
    scene_graph_complete,
)
from spatialthinker_ros.core.parsing import parse_output, parse_until_scene
from spatialthinker_ros.core.scene import ParseStatus
from spatialthinker_ros.testing.tiny_model import EXAMPLE_OUTPUT, FITTED_MAX_PIXELS

ROOT = Path(__file__).resolve().parents[1]
SCENE_END = EXAMPLE_OUTPUT.index("</scene>") + len("</scene>")
UNTIL_SCENE = EXAMPLE_OUTPUT[:SCENE_END]


def noise_image(w: int = 640, h: int = 480, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


# ------------------------------------------------------------------------- the rule on text


def test_the_example_output_is_complete_exactly_when_scene_closes():
    assert not any(scene_graph_complete(EXAMPLE_OUTPUT[:n]) for n in range(SCENE_END))
    assert all(scene_graph_complete(EXAMPLE_OUTPUT[:n])
               for n in range(SCENE_END, len(EXAMPLE_OUTPUT) + 1))  # fmt: skip


def test_a_closing_tag_inside_a_json_string_is_text():
    head = '<observe>x</observe>\n<scene>\n{"objects": [{"id": "a</scene>.1", "bbox": [1, 2, 3, 4]}'
    assert not scene_graph_complete(head)
    assert not scene_graph_complete(head + "]}\n")
    assert scene_graph_complete(head + "]}\n</scene>")
    graph = parse_until_scene(head + "]}\n</scene>").scene_graph
    assert [o.id for o in graph.objects] == ["a</scene>.1"]


def test_a_closing_tag_after_an_open_quote_waits_for_its_line_to_end():
    head = '<scene>\n{"objects": [{"id": "a</scene>'
    assert not scene_graph_complete(head)  # a closing quote may still come
    assert not scene_graph_complete(head + '.1"')  # it came: the tag was text
    # No quote before the newline: a JSON string never spans lines, so the tag closed the scene.
    assert scene_graph_complete(head + "\n")


@pytest.mark.parametrize(
    "text, complete",
    [
        ("<observe>o</observe>\n{}\n</scene>", False),  # no <scene>: no complete one
        ("<scene>\n{}\n< / SCENE >", True),
        ("<scene>\n{}\n<think>t</think></scene>", False),  # another tag came first: unclosed
        ("<observe>no scene yet", False),
        ("", False),
    ],
)
def test_completion_follows_the_parsers_tag_rules(text, complete):
    assert scene_graph_complete(text) is complete


def test_scene_graph_end_fires_on_the_piece_that_completes_the_graph():
    end = SceneGraphEnd()
    pieces = [EXAMPLE_OUTPUT[i : i + 3] for i in range(0, len(EXAMPLE_OUTPUT), 3)]
    fired = [i for i, piece in enumerate(pieces) if end(piece)]
    assert fired[0] == (SCENE_END - 1) // 3
    assert fired == list(range(fired[0], len(pieces)))  # stays True


def test_parse_until_scene_statuses():
    ok = parse_until_scene(UNTIL_SCENE)
    full = parse_output(EXAMPLE_OUTPUT)
    assert ok.status is ParseStatus.OK and ok.message == ""
    assert ok.scene_graph == full.scene_graph and ok.observation == full.observation
    assert (ok.answer.option, ok.thought) == ("", "")
    no_observe = parse_until_scene(UNTIL_SCENE[UNTIL_SCENE.index("<scene>") :])
    assert no_observe.status is ParseStatus.PARTIAL and "observe" in no_observe.message
    assert parse_until_scene("<observe>only</observe>").status is ParseStatus.PARSE_ERROR


# ---------------------------------------------------------------------- engine, fitted model


@pytest.fixture(scope="module")
def fitted(fitted_engine):
    return fitted_engine


@pytest.fixture(scope="module")
def full_answer(fitted):
    return fitted.answer(noise_image(), "Where is the cube?", ["left", "right"])


def test_stop_after_scene_graph_generates_less_with_the_same_graph(fitted, full_answer):
    chunks: list[str] = []
    graphs = []
    result = fitted.answer(
        noise_image(), "Where is the cube?", ["left", "right"], stop_after="scene_graph",
        on_text=chunks.append, on_scene_graph=lambda graph, observation: graphs.append(graph),
    )
    assert full_answer.raw == EXAMPLE_OUTPUT
    assert result.raw.rstrip() == UNTIL_SCENE
    assert result.generated_tokens < full_answer.generated_tokens
    ids = result.generated_token_ids
    assert ids == full_answer.generated_token_ids[: len(ids)]  # the same tokens, cut short
    r = result.reasoning
    assert r.status is ParseStatus.OK, r.message
    assert r.scene_graph == full_answer.reasoning.scene_graph and r.scene_graph.objects
    assert r.observation == full_answer.reasoning.observation
    assert (r.answer.option, r.answer.text, r.answer.matched_choice, r.thought) == ("",) * 4
    assert result.stop_after == "scene_graph" and full_answer.stop_after == ""
    assert "".join(chunks) == result.raw
    assert graphs == [r.scene_graph]  # streamed once, the same graph


def test_stop_after_with_prompt_lookup_keeps_the_tokens(fitted_model_dir, fitted):
    lookup = SpatialThinkerEngine(EngineConfig(
        model=str(fitted_model_dir), device="cpu", max_pixels=FITTED_MAX_PIXELS, prompt_lookup=10
    ))
    lookup.load()
    chunks: list[str] = []
    got = lookup.answer(noise_image(seed=1), "Where?", stop_after="scene_graph",
                        on_text=chunks.append)  # fmt: skip
    want = fitted.answer(noise_image(seed=1), "Where?", stop_after="scene_graph")
    # A draft step may accept tokens past `</scene>`: they are cut, from the result and stream.
    assert got.generated_token_ids == want.generated_token_ids
    assert "".join(chunks) == got.raw == want.raw


@pytest.mark.parametrize("batch", [False, True])
def test_answer_many_stops_every_question(fitted_model_dir, fitted, batch):
    engine = SpatialThinkerEngine(EngineConfig(
        model=str(fitted_model_dir), device="cpu", max_pixels=FITTED_MAX_PIXELS,
        batch_questions=batch,
    ))  # fmt: skip
    engine.load()
    questions = ["Where is the cube?", ("Is the ball right?", ["yes", "no"]), "What is left?"]
    many = engine.answer_many(noise_image(seed=2), questions, stop_after="scene_graph")
    alone = fitted.answer(noise_image(seed=2), "Where is the cube?", stop_after="scene_graph")
    for result in many:
        assert result.generated_token_ids == alone.generated_token_ids
        assert result.reasoning.status is ParseStatus.OK
        assert result.reasoning.scene_graph == alone.reasoning.scene_graph
        assert result.stop_after == "scene_graph"


def test_unknown_stop_after_is_an_invalid_question(fitted):
    with pytest.raises(InvalidQuestion, match="stop_after"):
        fitted.answer(noise_image(), "Where?", stop_after="answer")
    with pytest.raises(InvalidQuestion, match="stop_after"):
        fitted.answer_many(noise_image(), ["Where?"], stop_after="observe")


def test_an_output_that_never_completes_a_scene_runs_to_the_end(sensitive_model_dir):
    engine = SpatialThinkerEngine(
        EngineConfig(model=str(sensitive_model_dir), device="cpu", max_new_tokens=40)
    )
    engine.load()
    result = engine.answer(noise_image(336, 252), "Where?", stop_after="scene_graph")
    assert result.generated_tokens == 40
    assert result.reasoning.status is ParseStatus.PARSE_ERROR  # the full parse: nothing usable


# ------------------------------------------------------------------------------------ CLI


def test_cli_ask_stop_after_prints_the_graph_and_no_answer(fitted_model_dir, tmp_path):
    image = tmp_path / "frame.png"
    noise_image(641, 479).save(image)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    args = [sys.executable, "-m", "spatialthinker_ros.cli", "ask", str(image), "Where?",
            "--model", str(fitted_model_dir), "--max-pixels", str(FITTED_MAX_PIXELS),
            "--stop-after", "scene_graph"]  # fmt: skip
    out = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "answer:   - (stopped after the scene graph)" in out.stdout
    assert "status:   ok" in out.stdout and "cube.1" in out.stdout
    as_json = subprocess.run(args + ["--json"], capture_output=True, text=True, env=env,
                             timeout=300)  # fmt: skip
    record = json.loads(as_json.stdout)
    assert record["stop_after"] == "scene_graph" and record["status"] == "ok"
    assert record["option"] == "" and len(record["scene_graph"]["objects"]) == 2
    bad = subprocess.run(args[:-1] + ["answer"], capture_output=True, text=True, env=env,
                         timeout=300)  # fmt: skip
    assert bad.returncode == 2 and "--stop-after" in bad.stderr
