"""Answer and scene shapes the authors' code handles (github.com/hunarbatra/SpatialThinker at
4ac41cf), each with exact expected values: the parser is at least as tolerant, except that an
answer matching no choice stays unmatched (their evaluation maps it to A). The table in
docs/model.md ("Answer extraction vs the reference") lists the same shapes with their lines.
"""

from __future__ import annotations

import pytest
from test_parsing import MUG_CHOICES, MUG_GRAPH, MUG_SCENE, OBSERVE, output

from spatialthinker_ros.core.parsing import parse_output
from spatialthinker_ros.core.scene import Box, FinalAnswer, ParseStatus, SceneGraph, SceneObject

BEHIND = FinalAnswer("B", "behind", "behind")
MISSING_ALL = "missing <observe>; missing <scene>; missing <think>; missing <answer>"


# evaluation/evals.py 892, 1052 and evaluation/templates.py 32 prompt for
# `<answer> ({correct_option}) {correct_answer} </answer>`; templates.py 27-29 for
# `<answer>\n{Your final answer}\n</answer>`. evals.py 1166-1167 removes every brace.
@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("<answer> (B) behind </answer>", BEHIND),
        ("<answer> {(B) behind} </answer>", BEHIND),
        ("<answer>\n{(B) behind}\n</answer>", BEHIND),
        ("<answer> ({B}) {behind} </answer>", BEHIND),
        ("<answer> (B) {behind} </answer>", BEHIND),
        ("<answer> {behind} </answer>", FinalAnswer("", "behind", "behind")),
        ("<answer> {B} </answer>", FinalAnswer("B", "", "behind")),
        # evals.py 916-922 `extract_answer`: the letter in parentheses, a trailing period.
        ("<answer> (B). </answer>", FinalAnswer("B", "", "behind")),
        ("<answer> B. </answer>", FinalAnswer("B", "", "behind")),
        # evals.py 1159-1165: `(B) text` and (meant by pattern2) `B) text`.
        ("<answer> B) behind </answer>", BEHIND),
        # data_gen/generate_data.py 351, 622: training answers are the bare letter...
        ("<answer>B</answer>", FinalAnswer("B", "", "behind")),
        # ... or, 654 and 656, `(B) option text` and the option text only (evals.py 1168-1171
        # matches that against the choices, case-insensitively).
        ("<answer>(B) behind</answer>", BEHIND),
        ("<answer>Behind</answer>", FinalAnswer("", "Behind", "behind")),
        # Markdown or quotes around the answer (not in the reference; models do it).
        ("<answer> **(B) behind** </answer>", BEHIND),
        ('<answer> "B" </answer>', FinalAnswer("B", "", "behind")),
    ],
)
def test_answer_shapes_inside_tags(answer, expected):
    r = parse_output(output(answer), MUG_CHOICES)
    assert r.answer == expected
    assert r.status is ParseStatus.OK, r.message


# evals.py 1114-1115: the text after the last `Answer:`, wherever it is (also inside the tags:
# 1118-1120 then cut at `</answer>`).
@pytest.mark.parametrize(
    ("answer", "expected", "message"),
    [
        ("<answer>Answer: (B) behind</answer>", BEHIND, ""),
        ("<answer>Final Answer: B</answer>", FinalAnswer("B", "", "behind"), ""),
        (
            "So it is behind.\nAnswer: (B) behind",
            BEHIND,
            "missing <answer>; used the text after 'Answer:'",
        ),
        (
            "Answer: (A) in front of\nNo. Answer: {(B) behind}",
            BEHIND,
            "missing <answer>; used the text after 'Answer:'",
        ),
    ],
)
def test_text_after_answer_prefix(answer, expected, message):
    r = parse_output(output(answer), MUG_CHOICES)
    assert r.answer == expected
    assert r.message == message


# evals.py 1123-1124: `<answer>` without `</answer>` (generation stopped by the token limit)
# takes the rest; the limit can also cut the closing tag itself.
@pytest.mark.parametrize("cut", ["", "<", "</", "</ans", "</answer", "< / answer", "</ANSW"])
def test_closing_tag_cut_off_by_the_token_limit(cut):
    r = parse_output(output(f"<answer> (B) behind {cut}"), MUG_CHOICES)
    assert r.answer == BEHIND
    assert r.status is ParseStatus.PARTIAL
    assert r.message == "unclosed <answer>"


def test_cut_off_tag_is_dropped_from_an_unclosed_think_too():
    r = parse_output(OBSERVE + f"<scene>{MUG_SCENE}</scene><think>It is behind.</thi", MUG_CHOICES)
    assert r.thought == "It is behind."
    assert r.status is ParseStatus.PARSE_ERROR


# evals.py 1118-1120: `</answer>` without `<answer>` takes the text before it.
def test_closing_tag_without_opening_tag():
    r = parse_output(output("{(B) behind} </answer>"), MUG_CHOICES)
    assert r.answer == BEHIND
    assert r.message == "missing opening <answer>"


# evals.py 1116-1117: without any answer tag the whole output is the answer (their no-reasoning
# template answers `(B) behind` alone). Here: untagged text after the last closing tag, or a
# whole untagged output, when it names an option or a choice.
@pytest.mark.parametrize(
    ("text", "expected", "message"),
    [
        ("B", FinalAnswer("B", "", "behind"), f"{MISSING_ALL}; used untagged text"),
        ("(B) behind", BEHIND, f"{MISSING_ALL}; used untagged text"),
        ("{(B) behind}", BEHIND, f"{MISSING_ALL}; used untagged text"),
        ("behind", FinalAnswer("", "behind", "behind"), f"{MISSING_ALL}; used untagged text"),
        (
            output("(B) behind"),
            BEHIND,
            "missing <answer>; used the untagged text after the last tag",
        ),
        (
            output("The mug is (B) behind the laptop."),
            FinalAnswer("B", "behind the laptop.", "behind"),
            "missing <answer>; used the untagged text after the last tag",
        ),
    ],
)
def test_untagged_answers(text, expected, message):
    r = parse_output(text, MUG_CHOICES)
    assert r.answer == expected
    assert r.status is ParseStatus.PARTIAL
    assert r.message == message


@pytest.mark.parametrize(
    "text",
    [
        "I cannot see the image.",
        output("I am not sure which one it is."),
        OBSERVE + "<think>B is likely",  # the text of an unclosed section is not an answer
    ],
)
def test_untagged_text_naming_no_option_is_no_answer(text):
    r = parse_output(text, MUG_CHOICES)
    assert r.answer == FinalAnswer()
    assert r.status is ParseStatus.PARSE_ERROR


# evals.py 1172-1177 maps any answer it cannot match to option A (its condition
# `f'{chr(65+j)})'` is always true). Not reproduced: unmatched stays unmatched.
# (Their extraction also ends at A for `<answer> (B) behind </ans`: see the cut-off test above.)
@pytest.mark.parametrize(
    ("answer", "text"),
    [
        (
            "<answer> ({correct_option}) {correct_answer} </answer>",
            "(correct_option) correct_answer",
        ),
        ("<answer> on the shelf </answer>", "on the shelf"),
    ],
)
def test_unmatched_answers_are_not_mapped_to_a(answer, text):
    r = parse_output(output(answer), MUG_CHOICES)
    assert r.answer == FinalAnswer("", text, "")
    assert r.status is ParseStatus.PARTIAL
    assert r.message == "answer matches no choice"


# verl/utils/reward_score/spatial_sgg.py 504-548: objects `{"id": "name.N", "bbox": [4 numbers]}`,
# relationships `{"subject", "predicate", "object"}` (templates.py 12-23); 554-562 reads the first
# `<scene>...</scene>` as strict JSON. data_gen/prompt.py 87 names the list "relations".
def test_reference_scene_shapes():
    assert parse_output(output(), MUG_CHOICES).scene_graph == MUG_GRAPH
    relations = parse_output(output(scene=MUG_SCENE.replace("relationships", "relations")))
    assert relations.scene_graph == MUG_GRAPH and relations.status is ParseStatus.OK
    twice = output(scene=MUG_SCENE) + f"<scene>{MUG_SCENE.replace('mug', 'cup')}</scene>"
    assert parse_output(twice, MUG_CHOICES).scene_graph == MUG_GRAPH


# data_gen/utils.py 10-13 reads JSON inside ```json fences (or bare ``` fences).
@pytest.mark.parametrize(
    "scene",
    [
        f"```json\n{MUG_SCENE}\n```",
        f"```\n{MUG_SCENE}\n```",
        f"  ```JSON  \n{MUG_SCENE}```  ",
        f"Scene graph:\n```json\n{MUG_SCENE}\n```",
    ],
)
def test_fenced_scene_json(scene):
    r = parse_output(output(scene=scene), MUG_CHOICES)
    assert r.scene_graph == MUG_GRAPH
    assert r.status is ParseStatus.OK, r.message


def test_qwen_grounding_shape_bbox_2d_with_label():
    # Qwen2.5-VL's own grounding output: `{"bbox_2d": [...], "label": "cup"}`, no id.
    scene = (
        '[{"bbox_2d": [1, 2, 3, 4], "label": "cup"}, {"bbox_2d": [5, 6, 7, 8], "label": "cup"}, '
        '{"id": "cup.2", "bbox_2d": [9, 9, 10, 10]}, {"bbox_2d": [0, 0, 1, 1], "label": " "}]'
    )
    r = parse_output(output(scene=scene), MUG_CHOICES)
    assert r.scene_graph == SceneGraph(
        objects=(
            SceneObject("cup.1", "cup", Box(1.0, 2.0, 3.0, 4.0)),
            SceneObject("cup.3", "cup", Box(5.0, 6.0, 7.0, 8.0)),
            SceneObject("cup.2", "cup", Box(9.0, 9.0, 10.0, 10.0)),
        )
    )
    assert r.message == (
        "scene JSON is a bare list of objects; named objects without id after their label "
        "('cup.1'); named objects without id after their label ('cup.3'); "
        "dropped object without id"
    )
