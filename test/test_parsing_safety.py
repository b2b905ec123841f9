"""Every string the parser returns can be published: valid UTF-8 (no lone surrogates), no NUL,
no control characters, whatever escapes, surrogates or NULs the model output holds (issue 10
item 1). A plain-ASCII JSON escape `\\ud800` decodes to a lone surrogate that a ROS string, a
bag, JSONL or a PNG label cannot hold.

Cases per run (derandomized hypothesis): 2,000 generated outputs, each through parse_output,
parse_scene_graph and StreamParser; plus the exact cases below.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_parsing import MUG_CHOICES, output
from test_parsing_fuzz import assert_publishable, string_fields

from spatialthinker_ros.core.parsing import StreamParser, parse_output, parse_scene_graph
from spatialthinker_ros.core.scene import Box, FinalAnswer, ParseStatus, Relation, SceneObject
from spatialthinker_ros.core.text import REPLACEMENT as R
from spatialthinker_ros.core.text import safe_text

FUZZ = settings(deadline=None)

ESCAPED_SCENE = (
    '{"objects": [{"id": "cup\\ud800.1", "bbox": [1, 2, 3, 4]}, '
    '{"id": "table\\u0000.2", "bbox": [5, 6, 7, 8]}], "relationships": '
    '[{"subject": "cup\\ud800.1", "predicate": "on\\u001b top\\udfff of", '
    '"object": "table\\u0000.2"}]}'
)
EXPECTED_OBJECTS = (
    SceneObject(f"cup{R}.1", f"cup{R}", Box(1.0, 2.0, 3.0, 4.0)),
    SceneObject(f"table{R}.2", f"table{R}", Box(5.0, 6.0, 7.0, 8.0)),
)
EXPECTED_RELATIONS = (Relation(f"cup{R}.1", f"on{R} top{R} of", f"table{R}.2"),)


@pytest.mark.parametrize("broken", [False, True], ids=["plain JSON", "repaired JSON"])
def test_escaped_surrogates_and_nuls_in_the_scene_are_replaced(broken):
    scene = ESCAPED_SCENE.replace("]}]", "],}],") if broken else ESCAPED_SCENE
    r = parse_output(output(scene=scene), MUG_CHOICES)
    assert r.scene_graph.objects == EXPECTED_OBJECTS
    assert r.scene_graph.relations == EXPECTED_RELATIONS
    assert r.message == ("repaired scene JSON" if broken else "")
    assert r.answer == FinalAnswer("B", "behind", "behind")
    assert_publishable(r)
    assert parse_scene_graph(output(scene=scene)) == r.scene_graph


def test_ids_that_differ_only_in_replaced_characters_are_one_id():
    scene = (
        '{"objects": [{"id": "a\\ud800.1", "bbox": [1, 2, 3, 4]}, '
        '{"id": "a\\udfff.1", "bbox": [5, 6, 7, 8]}, {"id": "a\\u0000.1"}]}'
    )
    r = parse_output(output(scene=scene), MUG_CHOICES)
    assert r.scene_graph.objects == (SceneObject(f"a{R}.1", f"a{R}", Box(1.0, 2.0, 3.0, 4.0)),)
    assert r.message == f"duplicate object id 'a{R}.1' (kept the first)"
    assert_publishable(r)


def test_raw_surrogates_and_controls_in_every_section():
    text = (
        "<observe>a\ud800b\x00c\x1b</observe><scene>"
        + json.dumps({"objects": [{"id": "x\ud800.1", "bbox": [1, 2, 3, 4]}]}, ensure_ascii=False)
        + "</scene><think>t\x00\udc00</think><answer>(B) be\x00hind\ud800</answer>"
    )
    r = parse_output(text, ["in front of", "be\x00hind\ud800"])
    assert r.raw == safe_text(text) and R in r.raw
    assert r.observation == f"a{R}b{R}c{R}"
    assert r.thought == f"t{R}{R}"
    assert r.scene_graph.objects == (SceneObject(f"x{R}.1", f"x{R}", Box(1.0, 2.0, 3.0, 4.0)),)
    assert r.answer == FinalAnswer("B", f"be{R}hind{R}", f"be{R}hind{R}")
    assert r.status is ParseStatus.OK
    assert_publishable(r)


def test_unsafe_text_in_notes_is_replaced():
    scene = '{"objects": [{"id": "a\\ud800.1", "bbox": [1, 2]}]}'
    r = parse_output(output("<answer>(B) \x00nowhere</answer>", scene=scene), MUG_CHOICES)
    assert r.message == f"box with 2 values for 'a{R}.1' (dropped the box)"
    assert r.answer == FinalAnswer("B", f"{R}nowhere", "behind")
    assert_publishable(r)


def test_the_result_serialises_to_json_and_utf8():
    r = parse_output(output(scene=ESCAPED_SCENE), MUG_CHOICES)
    for text in string_fields(r):
        json.dumps(text, ensure_ascii=False).encode("utf-8")


# Characters and escapes that cannot be published, mixed with ordinary text and tags.
UNSAFE = st.sampled_from(
    [
        "\ud800", "\udfff", "\udbff\udc00", "\x00", "\x1b", "\x7f", "\x85", "\x9f", "\u2028",
        "\\ud800", "\\udfff", "\\u0000", "\\u001b", "\\ud800\\udc00", "\\x00", "\\", "\ufffd",
    ]
)  # fmt: skip
PIECES = st.one_of(
    UNSAFE,
    st.text(st.characters(exclude_categories=()), max_size=6),  # surrogates included
    st.sampled_from(["<scene>", "</scene>", "<answer>", "</answer>", '"', "{", "}", ",", "\n"]),
)
STRINGS = st.lists(PIECES, max_size=6).map("".join)


def scene_json(ids: list[str], predicate: str, encode: str) -> str:
    """A scene graph holding `ids` and `predicate`: JSON with \\u escapes (ensure_ascii), raw
    characters, or with each string spliced in unescaped (broken JSON for the repair path)."""
    objects = [{"id": i, "bbox": [1, 2, 3, 4]} for i in ids]
    relations = [{"subject": ids[0], "predicate": predicate, "object": ids[-1]}] if ids else []
    graph = {"objects": objects, "relationships": relations, predicate: predicate}
    if encode == "spliced":
        parts = [f'{{"id": "{i}", "bbox": [1, 2, 3, 4],}}' for i in ids]
        return f'{{"objects": [{", ".join(parts)}], "{predicate}": "{predicate}"}}'
    text = json.dumps(graph, ensure_ascii=encode == "ascii")
    # json.dumps writes surrogates as \\ud800 escapes (ascii) or as raw code points.
    return text


@settings(FUZZ, max_examples=2000)
@given(
    observe=STRINGS,
    ids=st.lists(STRINGS, max_size=3),
    predicate=STRINGS,
    think=STRINGS,
    answer=STRINGS,
    choice=STRINGS,
    encode=st.sampled_from(["ascii", "raw", "spliced"]),
    chunk=st.integers(1, 50),
)
def test_every_string_of_every_result_is_publishable(
    observe, ids, predicate, think, answer, choice, encode, chunk
):
    text = (
        f"<observe>{observe}</observe><scene>{scene_json(ids, predicate, encode)}</scene>"
        f"<think>{think}</think><answer>(B) {answer}</answer>"
    )
    choices = ["in front of", choice]
    r = parse_output(text, choices)
    assert_publishable(r)
    assert not r.message.startswith("parser error"), r.message
    if r.answer.option == "B":
        assert r.answer.matched_choice == safe_text(choice)
    assert_publishable(parse_scene_graph(text))
    stream = StreamParser()
    for start in range(0, len(text), chunk):
        graph = stream.feed(text[start : start + chunk])
        if graph is not None:
            assert_publishable(graph)
    assert_publishable(stream.scene_observation)
    assert stream.finish(choices) == r
