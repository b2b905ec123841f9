"""The prompt must be the model card's template to the character."""

import pytest

from spatialthinker_ros.core.prompt import (
    INSTRUCTION,
    PromptStyle,
    build_prompt,
    format_choices,
    prompt_prefix,
)

# Copied from the model card's "Usage" snippet (seed/spatialthinker-3b-model-card.txt).
CARD_TEMPLATE = """You FIRST observe the image in <observe> </observe> tags, then visualise the relevant scene graph in <scene> </scene> tags, followed by thinking about the reasoning process as an internal monologue within <think> </think> tags and then provide the final answer. The final answer MUST BE put within <answer> </answer> tags, and only return the final choice including the correct option and answer within the answer tags, e.g., <answer> (A) cat </answer>.

Image size: {width} x {height}"""  # noqa: E501


def test_card_prompt_matches_model_card_snippet():
    question = "Where is the cat relative to the couch? (A) on top of (B) in front of"
    expected = CARD_TEMPLATE.format(width=641, height=479) + "\n\n" + question
    assert build_prompt(question, 641, 479) == expected


def test_choices_rendered_as_lettered_options():
    assert format_choices(["left", " right "]) == "(A) left (B) right"
    prompt = build_prompt("Where is the cup?", 28, 28, choices=["left", "right"])
    assert prompt.endswith("\n\nWhere is the cup? (A) left (B) right")


def test_paper_eval_prompt_keeps_the_unfilled_template():
    prompt = build_prompt("Q?", 640, 480, style=PromptStyle.PAPER_EVAL)
    assert (
        "Image size: {Width} x {Height}\n(640 x 480)\n\nNow answer the following question:\nQ?"
        in prompt
    )
    assert "({correct_option}) {correct_answer}" in prompt


def test_prefix_is_shared_by_every_question():
    prefix = prompt_prefix(644, 476)
    assert prefix == INSTRUCTION + "\n\nImage size: 644 x 476\n\n"
    for q in ["a?", "Where is the ball relative to the cube?"]:
        assert build_prompt(q, 644, 476).startswith(prefix)


@pytest.mark.parametrize("w,h", [(0, 10), (10, -1)])
def test_bad_size_rejected(w, h):
    with pytest.raises(ValueError):
        build_prompt("q", w, h)


def test_too_many_choices_rejected():
    with pytest.raises(ValueError, match="at most 26"):
        format_choices([str(i) for i in range(27)])
