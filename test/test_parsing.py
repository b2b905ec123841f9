"""The tolerant output parser on real-looking SpatialThinker outputs, asserting exact values."""

from __future__ import annotations

import pytest

from spatialthinker_ros.core.parsing import (
    answer_closed,
    label_of,
    parse_output,
    parse_scene_graph,
    scene_closed,
    stream_stage,
)
from spatialthinker_ros.core.scene import (
    Box,
    FinalAnswer,
    ParseStatus,
    Relation,
    SceneGraph,
    SceneObject,
)
from spatialthinker_ros.testing.tiny_model import EXAMPLE_OUTPUT

# The model card's example output, verbatim (seed/spatialthinker-3b-model-card.txt).
CARD_OUTPUT = """<observe>
The image shows a living room with a couch, a coffee table, and a cat sitting on the floor.
</observe>
<scene>
{
"objects": [
{"id": "couch.1", "bbox": [50, 100, 400, 350]},
{"id": "cat.1", "bbox": [200, 300, 280, 400]},
{"id": "table.1", "bbox": [150, 250, 350, 320]}
],
"relationships": [
{"subject": "cat.1", "predicate": "in front of", "object": "couch.1"},
{"subject": "cat.1", "predicate": "beside", "object": "table.1"}
]
}
</scene>
<think>
Looking at the scene graph, the cat is positioned in front of the couch and beside the coffee \
table. The bounding box coordinates show the cat is at y=300-400 while the couch extends to \
y=350, confirming the cat is on the floor in front of the couch.
</think>
<answer> (B) in front of the couch </answer>"""
CARD_CHOICES = ("on top of", "in front of", "behind", "beside")
CARD_OBSERVATION = (
    "The image shows a living room with a couch, a coffee table, and a cat sitting on the floor."
)
CARD_GRAPH = SceneGraph(
    objects=(
        SceneObject("couch.1", "couch", Box(50.0, 100.0, 400.0, 350.0)),
        SceneObject("cat.1", "cat", Box(200.0, 300.0, 280.0, 400.0)),
        SceneObject("table.1", "table", Box(150.0, 250.0, 350.0, 320.0)),
    ),
    relations=(
        Relation("cat.1", "in front of", "couch.1"),
        Relation("cat.1", "beside", "table.1"),
    ),
)

EXAMPLE_CHOICES = ("left", "right", "above", "below")
EXAMPLE_GRAPH = SceneGraph(
    objects=(
        SceneObject("cube.1", "cube", Box(64.0, 120.0, 256.0, 360.0)),
        SceneObject("ball.1", "ball", Box(384.0, 180.0, 576.0, 420.0)),
    ),
    relations=(Relation("cube.1", "left of", "ball.1"),),
)

# A generic output skeleton for the answer and scene variants below.
OBSERVE = "<observe>\nA mug stands on a desk next to a laptop.\n</observe>\n"
THINK = "<think>\nThe mug box is further from the camera than the laptop box.\n</think>\n"
MUG_SCENE = (
    '{"objects": [{"id": "mug.1", "bbox": [10, 20, 110, 220]}, '
    '{"id": "laptop.1", "bbox": [200, 40, 600, 300]}], '
    '"relationships": [{"subject": "mug.1", "predicate": "behind", "object": "laptop.1"}]}'
)
MUG_GRAPH = SceneGraph(
    objects=(
        SceneObject("mug.1", "mug", Box(10.0, 20.0, 110.0, 220.0)),
        SceneObject("laptop.1", "laptop", Box(200.0, 40.0, 600.0, 300.0)),
    ),
    relations=(Relation("mug.1", "behind", "laptop.1"),),
)
MUG_CHOICES = ("in front of", "behind", "left of", "right of")


def output(answer: str = "<answer> (B) behind </answer>", scene: str = MUG_SCENE) -> str:
    return f"{OBSERVE}<scene>\n{scene}\n</scene>\n{THINK}{answer}"


def scene_of(scene_json: str):
    """Parse a full output around `scene_json`; returns (graph, message)."""
    reasoning = parse_output(output(scene=scene_json), MUG_CHOICES)
    return reasoning.scene_graph, reasoning.message


# ------------------------------------------------------------------------------- whole outputs


def test_tiny_model_example_output_parses_ok():
    r = parse_output(EXAMPLE_OUTPUT, EXAMPLE_CHOICES)
    assert r.status is ParseStatus.OK
    assert r.message == ""
    assert r.raw == EXAMPLE_OUTPUT
    assert r.observation == "A red cube stands left of a blue ball on a grey floor."
    assert r.thought == (
        "The cube box ends at x=256 and the ball box starts at x=384, so the cube is left of the "
        "ball."
    )
    assert r.scene_graph == EXAMPLE_GRAPH
    assert r.answer == FinalAnswer(option="A", text="left", matched_choice="left")


def test_model_card_example_output_parses_ok():
    r = parse_output(CARD_OUTPUT, CARD_CHOICES)
    assert r.status is ParseStatus.OK, r.message
    assert r.observation == CARD_OBSERVATION
    assert r.thought.startswith("Looking at the scene graph, the cat is positioned in front")
    assert r.thought.endswith("confirming the cat is on the floor in front of the couch.")
    assert r.scene_graph == CARD_GRAPH
    assert r.answer == FinalAnswer("B", "in front of the couch", "in front of")


def test_boxes_stay_in_model_frame_and_size_is_unset():
    graph = parse_output(CARD_OUTPUT).scene_graph
    assert (graph.image_width, graph.image_height) == (0, 0)
    assert graph.object_by_id("cat.1").box.as_list() == [200.0, 300.0, 280.0, 400.0]


def test_without_choices_the_letter_is_kept_and_nothing_is_matched():
    r = parse_output(CARD_OUTPUT)
    assert r.status is ParseStatus.OK
    assert r.answer == FinalAnswer("B", "in front of the couch", "")


def test_text_outside_tags_is_ignored():
    text = "Sure! Here is my analysis.\n" + output() + "\nHope this helps."
    r = parse_output(text, MUG_CHOICES)
    assert r.status is ParseStatus.OK
    assert r.scene_graph == MUG_GRAPH
    assert r.answer == FinalAnswer("B", "behind", "behind")


def test_tags_are_case_and_space_insensitive():
    text = output().replace("<answer>", "< ANSWER >").replace("</answer>", "</ Answer>")
    r = parse_output(text.replace("<scene>", "<Scene>"), MUG_CHOICES)
    assert r.status is ParseStatus.OK
    assert r.answer.option == "B"
    assert r.scene_graph == MUG_GRAPH


def test_non_str_raises_type_error():
    with pytest.raises(TypeError):
        parse_output(b"<answer>B</answer>")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        parse_output(None)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------- answers


@pytest.mark.parametrize(
    ("answer", "option", "text"),
    [
        ("(B) behind", "B", "behind"),
        ("(B)", "B", ""),
        ("B", "B", ""),
        ("B) behind", "B", "behind"),
        ("B. behind", "B", "behind"),
        ("B: behind", "B", "behind"),
        ("Answer: B", "B", ""),
        ("Answer: (B) behind", "B", "behind"),
        (" (b) Behind ", "B", "Behind"),
        ("(B)behind", "B", "behind"),
        ("\n  (B)\n  behind\n", "B", "behind"),
        ("The answer is (B) behind.", "B", "behind."),
    ],
)
def test_option_forms(answer, option, text):
    r = parse_output(output(f"<answer>{answer}</answer>"), MUG_CHOICES)
    assert r.status is ParseStatus.OK, r.message
    assert r.answer == FinalAnswer(option, text, "behind")


@pytest.mark.parametrize("answer", ["behind", "BEHIND", " Behind. ", "behind  "])
def test_text_only_answer_matches_choice_case_insensitively(answer):
    r = parse_output(output(f"<answer>{answer}</answer>"), MUG_CHOICES)
    assert r.status is ParseStatus.OK, r.message
    assert r.answer.option == ""
    assert r.answer.matched_choice == "behind"


def test_text_only_answer_without_choices():
    r = parse_output(output("<answer> behind the laptop </answer>"))
    assert r.status is ParseStatus.OK
    assert r.answer == FinalAnswer("", "behind the laptop", "")


def test_unmatched_answer_stays_unmatched():
    r = parse_output(output("<answer> on the shelf </answer>"), MUG_CHOICES)
    assert r.status is ParseStatus.PARTIAL
    assert r.answer == FinalAnswer("", "on the shelf", "")
    assert r.message == "answer matches no choice"


def test_option_beyond_the_choices_is_not_an_option():
    r = parse_output(output("<answer> (E) far away </answer>"), MUG_CHOICES)
    assert r.status is ParseStatus.PARTIAL
    assert r.answer == FinalAnswer("", "far away", "")
    assert r.message == "option E is not among 4 choices; answer matches no choice"
    bare = parse_output(output("<answer>(E)</answer>"), MUG_CHOICES)
    assert bare.answer == FinalAnswer("", "(E)", "")
    # Without choices any letter is an option.
    assert parse_output(output("<answer> (E) far away </answer>")).answer.option == "E"


def test_option_wins_over_contradicting_text_and_is_noted():
    r = parse_output(output("<answer> (A) behind </answer>"), MUG_CHOICES)
    assert r.status is ParseStatus.PARTIAL
    assert r.answer == FinalAnswer("A", "behind", "in front of")
    assert r.message == "answer text 'behind' is choice B, not A"


def test_answer_prefix_without_answer_tags():
    text = output("So the mug is behind the laptop.\nAnswer: (B) behind\n")
    r = parse_output(text, MUG_CHOICES)
    assert r.status is ParseStatus.PARTIAL
    assert r.answer == FinalAnswer("B", "behind", "behind")
    assert r.message == "missing <answer>; used the text after 'Answer:'"


def test_last_answer_prefix_wins():
    text = output("Answer: A maybe?\nFinal Answer: C")
    assert parse_output(text, MUG_CHOICES).answer == FinalAnswer("C", "", "left of")


def test_answer_missing_opening_tag():
    r = parse_output(output("(B) behind </answer>"), MUG_CHOICES)
    assert r.status is ParseStatus.PARTIAL
    assert r.answer == FinalAnswer("B", "behind", "behind")
    assert r.message == "missing opening <answer>"


def test_answer_missing_closing_tag():
    r = parse_output(output("<answer> (B) behind"), MUG_CHOICES)
    assert r.status is ParseStatus.PARTIAL
    assert r.answer == FinalAnswer("B", "behind", "behind")
    assert r.message == "unclosed <answer>"


def test_repeated_answer_takes_the_last():
    text = output("<answer> (A) in front of </answer>\n<answer> (C) left of </answer>")
    r = parse_output(text, MUG_CHOICES)
    assert r.answer == FinalAnswer("C", "left of", "left of")
    assert r.status is ParseStatus.PARTIAL
    assert r.message == "repeated <answer>"


def test_trailing_empty_answer_is_skipped():
    text = output("<answer> (C) left of </answer>\n<answer>")
    assert parse_output(text, MUG_CHOICES).answer.option == "C"


@pytest.mark.parametrize("answer", ["<answer></answer>", "<answer>  \n </answer>", "<answer>"])
def test_empty_answer_is_a_parse_error(answer):
    r = parse_output(output(answer), MUG_CHOICES)
    assert r.status is ParseStatus.PARSE_ERROR
    assert r.answer == FinalAnswer()
    assert r.message == "no answer: empty <answer>"
    # The rest is still parsed.
    assert r.scene_graph == MUG_GRAPH


def test_no_answer_at_all_is_a_parse_error():
    r = parse_output(output(""), MUG_CHOICES)
    assert r.status is ParseStatus.PARSE_ERROR
    assert r.message == "no answer: missing <answer>"
    assert r.observation == "A mug stands on a desk next to a laptop."


def test_plain_text_is_a_parse_error():
    r = parse_output("I cannot see the image.", MUG_CHOICES)
    assert r.status is ParseStatus.PARSE_ERROR
    assert r.message == (
        "no answer: missing <observe>; missing <scene>; missing <think>; missing <answer>"
    )


def test_empty_string():
    r = parse_output("")
    assert r.status is ParseStatus.PARSE_ERROR
    assert r.scene_graph == SceneGraph()


# ------------------------------------------------------------------------------------ sections


def test_missing_think():
    text = output().replace(THINK, "")
    r = parse_output(text, MUG_CHOICES)
    assert r.status is ParseStatus.PARTIAL
    assert r.message == "missing <think>"
    assert r.thought == ""
    assert r.answer.matched_choice == "behind"


def test_unclosed_observe_runs_to_the_next_tag():
    text = output().replace("\n</observe>", "")
    r = parse_output(text, MUG_CHOICES)
    assert r.observation == "A mug stands on a desk next to a laptop."
    assert r.message == "unclosed <observe>"
    assert r.scene_graph == MUG_GRAPH


def test_unclosed_think_runs_to_the_answer():
    text = output().replace("\n</think>", "")
    r = parse_output(text, MUG_CHOICES)
    assert r.thought == "The mug box is further from the camera than the laptop box."
    assert r.message == "unclosed <think>"
    assert r.answer.option == "B"


def test_missing_scene():
    text = OBSERVE + THINK + "<answer>(B) behind</answer>"
    r = parse_output(text, MUG_CHOICES)
    assert r.status is ParseStatus.PARTIAL
    assert r.message == "missing <scene>"
    assert r.scene_graph == SceneGraph()


def test_empty_think_is_noted():
    r = parse_output(output().replace(THINK, "<think></think>"), MUG_CHOICES)
    assert r.status is ParseStatus.PARTIAL
    assert r.message == "empty <think>"


def test_first_complete_scene_is_taken():
    other = MUG_SCENE.replace("mug", "cup")
    text = output(scene=MUG_SCENE) + f"\n<scene>{other}</scene>"
    r = parse_output(text, MUG_CHOICES)
    assert r.scene_graph == MUG_GRAPH
    assert r.message == "repeated <scene>"


def test_a_complete_scene_without_objects_gives_way_to_a_later_one():
    text = '<scene>{"objects": []}</scene>\n' + output(scene=MUG_SCENE)
    r = parse_output(text, MUG_CHOICES)
    assert r.scene_graph == MUG_GRAPH
    assert r.message == "repeated <scene>"
    text = "<scene>{{{</scene>\n" + output(scene="{{{")
    r = parse_output(text, MUG_CHOICES)
    assert r.scene_graph == SceneGraph()
    assert r.message == "repeated <scene>; unparseable scene JSON"


def test_unclosed_scene_before_a_complete_one():
    text = '<scene>{"objects": []' + output()
    assert parse_output(text, MUG_CHOICES).scene_graph == MUG_GRAPH


def test_truncated_inside_the_scene_keeps_what_was_generated():
    cut = CARD_OUTPUT.index('{"id": "table.1"')
    r = parse_output(CARD_OUTPUT[:cut], CARD_CHOICES)
    assert r.status is ParseStatus.PARSE_ERROR
    assert r.observation == CARD_OBSERVATION
    assert r.scene_graph == SceneGraph(objects=CARD_GRAPH.objects[:2])
    assert r.message == (
        "no answer: unclosed <scene>; repaired scene JSON; missing <think>; missing <answer>"
    )


def test_truncated_inside_an_object_drops_that_object():
    # A cut-off box (`[200, 300, 28`) must not pass for a box ending at x=28.
    for cut_at in ("280, 400]", '"bbox": [200', '"cat.1"', '{"id": "cat.1"'):
        cut = CARD_OUTPUT.index(cut_at) + 3
        assert parse_output(CARD_OUTPUT[:cut]).scene_graph.objects == CARD_GRAPH.objects[:1]


def test_truncated_inside_a_relation_drops_that_relation():
    cut = CARD_OUTPUT.index('"predicate": "beside"')
    graph = parse_output(CARD_OUTPUT[:cut]).scene_graph
    assert graph == SceneGraph(CARD_GRAPH.objects, CARD_GRAPH.relations[:1])


# --------------------------------------------------------------------------------- scene JSON

SCENE_REPAIRS = [
    # trailing commas
    '{"objects": [{"id": "mug.1", "bbox": [10, 20, 110, 220],}, '
    '{"id": "laptop.1", "bbox": [200, 40, 600, 300],},], '
    '"relationships": [{"subject": "mug.1", "predicate": "behind", "object": "laptop.1",},],}',
    # single quotes
    MUG_SCENE.replace('"', "'"),
    # comments
    '{\n// the objects\n"objects": [{"id": "mug.1", "bbox": [10, 20, 110, 220]}, '
    '/* second */ {"id": "laptop.1", "bbox": [200, 40, 600, 300]}],\n'
    '"relationships": [{"subject": "mug.1", "predicate": "behind", "object": "laptop.1"}]}',
    # missing commas and an unquoted key
    '{objects: [{"id": "mug.1" "bbox": [10, 20, 110, 220]} {"id": "laptop.1", '
    '"bbox": [200, 40, 600, 300]}], "relationships": '
    '[{"subject": "mug.1", "predicate": "behind", "object": "laptop.1"}]}',
    # truncated closing brackets
    MUG_SCENE[:-2],
]


@pytest.mark.parametrize("scene", SCENE_REPAIRS)
def test_broken_json_is_repaired(scene):
    graph, message = scene_of(scene)
    assert graph == MUG_GRAPH
    assert message == "repaired scene JSON"


def test_clean_json_needs_no_repair_and_fences_are_ignored():
    assert scene_of(MUG_SCENE) == (MUG_GRAPH, "")
    assert scene_of(f"```json\n{MUG_SCENE}\n```") == (MUG_GRAPH, "")


def test_an_id_of_backticks_is_not_a_fence():
    # Regression (fuzz): fence stripping once removed every ``` and so this object.
    scene = (
        '{"objects": [{"id": "```", "bbox": [1, 2, 3, 4]}, {"id": "b.1", "bbox": [5, 6, 7, 8]}]}'
    )
    for fenced in (scene, f"```json\n{scene}\n```"):
        graph, message = scene_of(fenced)
        assert [o.id for o in graph.objects] == ["```", "b.1"]
        assert message == ""


@pytest.mark.parametrize("tag", ["<ANSWER>", "</scene>", "<scene>", "<think>", "x</answer>"])
def test_tags_inside_scene_json_strings_are_text(tag):
    # Regression (fuzz): a bbox of "<ANSWER>" used to end the scene there and lose the object.
    scene = (
        f'{{"objects": [{{"id": "cup.1", "bbox": "{tag}"}}, '
        f'{{"id": "{tag}", "bbox": [1, 2, 3, 4]}}], "relationships": '
        f'[{{"subject": "cup.1", "predicate": "{tag}", "object": "{tag}"}}]}}'
    )
    r = parse_output(output(scene=scene), MUG_CHOICES)
    assert r.scene_graph.objects == (
        SceneObject("cup.1", "cup", None),
        SceneObject(tag, tag, Box(1.0, 2.0, 3.0, 4.0)),
    )
    assert r.scene_graph.relations == (Relation("cup.1", tag, tag),)
    assert r.answer == FinalAnswer(option="B", text="behind", matched_choice="behind")
    assert r.observation and r.thought
    assert r.message == "box with 1 values for 'cup.1' (dropped the box)"
    assert parse_scene_graph(output(scene=scene)) == r.scene_graph


def test_an_unbalanced_quote_in_the_scene_does_not_hide_later_tags():
    # No `</scene>` outside a JSON string: every tag counts again (here the quote opened at
    # `"cup.1` would otherwise run over `</scene>` up to the quote in the thought).
    text = (
        '<observe>a cup</observe><scene>{"objects": [{"id": "cup.1, "bbox": [1, 2, 3, 4]}]}'
        '</scene><think>the "cup"</think><answer>(B) behind</answer>'
    )
    r = parse_output(text, MUG_CHOICES)
    assert r.thought == 'the "cup"'
    assert r.observation == "a cup"
    assert r.answer == FinalAnswer(option="B", text="behind", matched_choice="behind")
    assert r.status is ParseStatus.PARTIAL
    assert "repaired scene JSON" in r.message


def test_text_after_the_json_is_noted():
    assert scene_of(MUG_SCENE + " That is all.") == (MUG_GRAPH, "ignored text after scene JSON")


@pytest.mark.parametrize(
    ("scene", "message"),
    [
        ("", "empty <scene>"),
        ("no objects here", "no JSON in <scene>"),
        ("{{{{", "unparseable scene JSON"),
        ('"just a string"', "no JSON in <scene>"),
        (
            "[1, 2]",
            "scene JSON is a bare list of objects; dropped object that is not a JSON object",
        ),
        ('{"objects": 3}', "scene objects are not a list"),
        ('{"relationships": []}', "scene has no objects"),
    ],
)
def test_unusable_scene_gives_empty_graph(scene, message):
    r = parse_output(output(scene=scene), MUG_CHOICES)
    assert r.scene_graph == SceneGraph()
    assert r.status is ParseStatus.PARTIAL
    assert r.message == message


def test_bare_list_of_objects_is_accepted():
    graph, message = scene_of('[{"id": "mug.1", "bbox": [1, 2, 3, 4]}]')
    assert graph.objects == (SceneObject("mug.1", "mug", Box(1.0, 2.0, 3.0, 4.0)),)
    assert message == "scene JSON is a bare list of objects"


def test_relations_and_relationships_are_merged():
    scene = (
        '{"objects": [{"id": "a.1", "bbox": [0, 0, 1, 1]}, {"id": "b.1", "bbox": [2, 2, 3, 3]}], '
        '"relationships": [{"subject": "a.1", "predicate": "left of", "object": "b.1"}], '
        '"relations": [{"subject": "b.1", "relation": "right of", "object": "a.1"}, '
        '{"subject": "a.1", "rel": "near", "object": "b.1"}, ["b.1", "above", "a.1"]]}'
    )
    graph, message = scene_of(scene)
    assert graph.relations == (
        Relation("a.1", "left of", "b.1"),
        Relation("b.1", "right of", "a.1"),
        Relation("a.1", "near", "b.1"),
        Relation("b.1", "above", "a.1"),
    )
    assert message == ""


def test_relations_only_key_works_alone():
    graph, message = scene_of(MUG_SCENE.replace("relationships", "relations"))
    assert graph == MUG_GRAPH
    assert message == ""


def test_bad_relations_are_dropped_and_noted():
    scene = (
        '{"objects": [{"id": "a.1", "bbox": [0, 0, 1, 1]}, {"id": "b.1", "bbox": [2, 2, 3, 3]}], '
        '"relationships": ['
        '{"subject": "a.1", "predicate": "left of", "object": "ghost.7"}, '
        '{"subject": "a.1", "object": "b.1"}, '
        '{"subject": "a.1", "predicate": "left of", "object": "b.1"}, '
        '{"subject": "a.1", "predicate": "left of", "object": "b.1"}, '
        '"a.1 left of b.1"]}'
    )
    graph, message = scene_of(scene)
    assert graph.relations == (Relation("a.1", "left of", "b.1"),)
    assert message == (
        "dropped relation naming unknown id 'ghost.7'; dropped malformed relation; "
        "dropped duplicate relation"
    )


NON_FINITE = "box with non-finite or huge values for 'x.1' (dropped the box)"


@pytest.mark.parametrize(
    ("bbox", "box", "note"),
    [
        ("[1, 2, 3, 4]", Box(1.0, 2.0, 3.0, 4.0), ""),
        ("[1.5, 2.25, 3.0, 4.75]", Box(1.5, 2.25, 3.0, 4.75), ""),
        ('"[1,2,3,4]"', Box(1.0, 2.0, 3.0, 4.0), ""),
        ('"1, 2, 3, 4"', Box(1.0, 2.0, 3.0, 4.0), ""),
        ('"(1 2 3 4)"', Box(1.0, 2.0, 3.0, 4.0), ""),
        ('["1", "2", "3.5", "4"]', Box(1.0, 2.0, 3.5, 4.0), ""),
        ("[-5, 2, 3, 4]", Box(-5.0, 2.0, 3.0, 4.0), ""),
        ("[30, 40, 10, 20]", Box(10.0, 20.0, 30.0, 40.0), "reordered box corners for 'x.1'"),
        ("[10, 40, 30, 20]", Box(10.0, 20.0, 30.0, 40.0), "reordered box corners for 'x.1'"),
        ("[NaN, 2, 3, 4]", None, NON_FINITE),
        ("[1, 2, Infinity, 4]", None, NON_FINITE),
        ("[1, 2, 3, 1e999]", None, NON_FINITE),
        ("[1, 2, 3, 10000000]", None, NON_FINITE),
        ("[1, 2, 3, " + "9" * 5000 + "]", None, NON_FINITE),
        ('"nan, 1, 2, 3"', None, NON_FINITE),
        ("[1, 2, 3]", None, "box with 3 values for 'x.1' (dropped the box)"),
        ("[1, 2, 3, 4, 5]", None, "box with 5 values for 'x.1' (dropped the box)"),
        ("[]", None, "box with 0 values for 'x.1' (dropped the box)"),
        ('["a", 2, 3, 4]', None, "box with non-numeric values for 'x.1' (dropped the box)"),
        ("[true, 2, 3, 4]", None, "box with non-numeric values for 'x.1' (dropped the box)"),
        ("[[1, 2], 3, 4]", None, "box with 3 values for 'x.1' (dropped the box)"),
        ('{"x": 1}', None, "box is not a list for 'x.1' (dropped the box)"),
        ("null", None, "no box for 'x.1' (dropped the box)"),
    ],
)
def test_box_forms(bbox, box, note):
    graph, message = scene_of(f'{{"objects": [{{"id": "x.1", "bbox": {bbox}}}]}}')
    assert graph.objects == (SceneObject("x.1", "x", box),)
    assert message == note


def test_bbox_2d_and_box_keys_and_missing_box():
    scene = (
        '{"objects": [{"id": "a.1", "bbox_2d": [1, 2, 3, 4]}, {"id": "b.1", "box": [5, 6, 7, 8]}, '
        '{"id": "c.1"}]}'
    )
    graph, message = scene_of(scene)
    assert graph.objects == (
        SceneObject("a.1", "a", Box(1.0, 2.0, 3.0, 4.0)),
        SceneObject("b.1", "b", Box(5.0, 6.0, 7.0, 8.0)),
        SceneObject("c.1", "c", None),
    )
    assert message == "no box for 'c.1' (dropped the box)"


def test_objects_without_id_are_dropped_and_duplicates_keep_the_first():
    scene = (
        '{"objects": [{"bbox": [1, 2, 3, 4]}, {"id": "", "bbox": [1, 2, 3, 4]}, '
        '{"id": "cup.1", "bbox": [1, 2, 3, 4]}, {"id": "cup.1", "bbox": [5, 6, 7, 8]}, '
        '{"id": 7, "bbox": [0, 0, 1, 1]}, "cup.2"], '
        '"relationships": [{"subject": "cup.1", "predicate": "near", "object": "7"}]}'
    )
    graph, message = scene_of(scene)
    assert graph.objects == (
        SceneObject("cup.1", "cup", Box(1.0, 2.0, 3.0, 4.0)),
        SceneObject("7", "7", Box(0.0, 0.0, 1.0, 1.0)),
    )
    assert graph.relations == (Relation("cup.1", "near", "7"),)
    assert message == (
        "dropped object without id; duplicate object id 'cup.1' (kept the first); "
        "dropped object that is not a JSON object"
    )


@pytest.mark.parametrize(
    ("object_id", "label"),
    [
        ("cup.1", "cup"),
        ("red_cup.12", "red_cup"),
        ("table", "table"),
        ("shelf.top.3", "shelf.top"),
        ("cup.x", "cup.x"),
        (".5", ".5"),
        ("coffee table.2", "coffee table"),
    ],
)
def test_label_is_the_id_prefix(object_id, label):
    assert label_of(object_id) == label
    graph, _ = scene_of(f'{{"objects": [{{"id": "{object_id}", "bbox": [1, 2, 3, 4]}}]}}')
    assert graph.objects[0].label == label


def test_many_notes_are_summarised():
    objects = ", ".join(f'{{"id": "o.{i}", "bbox": [1, 2, 3]}}' for i in range(20))
    _, message = scene_of(f'{{"objects": [{objects}]}}')
    assert message.endswith("; and 8 more")
    assert message.count(";") == 12


# ------------------------------------------------------------------------------------ streaming


def test_scene_closed_and_parse_scene_graph_on_streamed_text():
    close = EXAMPLE_OUTPUT.index("</scene>")
    before, after = EXAMPLE_OUTPUT[:close], EXAMPLE_OUTPUT[: close + len("</scene>")]
    assert not scene_closed(before)
    assert scene_closed(after)
    assert parse_scene_graph(after) == EXAMPLE_GRAPH
    # Before it closes, the partial JSON still yields what was generated so far.
    assert parse_scene_graph(before) == EXAMPLE_GRAPH
    first_object_done = EXAMPLE_OUTPUT.index('{"id": "ball.1"')
    assert parse_scene_graph(EXAMPLE_OUTPUT[:first_object_done]) == SceneGraph(
        objects=EXAMPLE_GRAPH.objects[:1]
    )
    assert parse_scene_graph("<observe> a cube") == SceneGraph()
    assert parse_scene_graph("") == SceneGraph()


def test_answer_closed():
    assert not answer_closed(EXAMPLE_OUTPUT[:-1])
    assert answer_closed(EXAMPLE_OUTPUT)


def test_stream_stage_walks_through_the_output():
    stages = [stream_stage(EXAMPLE_OUTPUT[:i]) for i in range(len(EXAMPLE_OUTPUT) + 1)]
    order = ["observing", "scene_graph_ready", "thinking", "answered"]
    changes = [s for i, s in enumerate(stages) if i == 0 or s != stages[i - 1]]
    assert changes == order
    scene_end = EXAMPLE_OUTPUT.index("</scene>") + len("</scene>")
    think_start = EXAMPLE_OUTPUT.index("<think>") + len("<think>")
    assert stages[scene_end - 1] == "observing"
    assert stages[scene_end] == "scene_graph_ready"
    assert stages[think_start] == "thinking"
    assert stages[-2] == "thinking"
    assert stages[-1] == "answered"
