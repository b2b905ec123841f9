"""The SpatialThinker inference prompt, exactly as the model card publishes it."""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence

# Bump when the text sent to the model changes; results record it.
PROMPT_VERSION = "card-1"

INSTRUCTION = (
    "You FIRST observe the image in <observe> </observe> tags, then visualise the relevant scene "
    "graph in <scene> </scene> tags, followed by thinking about the reasoning process as an "
    "internal monologue within <think> </think> tags and then provide the final answer. The final "
    "answer MUST BE put within <answer> </answer> tags, and only return the final choice including "
    "the correct option and answer within the answer tags, e.g., <answer> (A) cat </answer>."
)

# evaluation/templates.py SPATIAL_THINKER_TEMPLATE as the paper's evaluation sent it: the
# placeholders were never filled in (the real size follows on its own line).
PAPER_EVAL_TEMPLATE = (
    INSTRUCTION.replace(
        "<answer> (A) cat </answer>", "<answer> ({correct_option}) {correct_answer} </answer>"
    )
    + "\n\nImage size: {Width} x {Height}"
)

MAX_CHOICES = 26
# Qwen chat control tokens (`<|im_start|>`, `<|image_pad|>`, ...): never accepted in a question.
CONTROL_TOKEN = re.compile(r"<\|[a-z_]+\|>")


class PromptStyle(enum.Enum):
    # Model card (published usage): instruction, blank line, "Image size: W x H", blank line,
    # question.
    CARD = "card"
    # The paper's evaluation (evaluation/evals.py --template spatial_thinker): the unfilled
    # template, then "(W x H)", blank line, "Now answer the following question:", question.
    PAPER_EVAL = "paper_eval"


def question_problem(question: object, choices: Sequence[object], max_chars: int) -> str | None:
    """Why a question and its choices cannot be sent to the model, or None. The one rule for
    requests, standing questions and the engine itself (INVALID_REQUEST on the node)."""
    if not isinstance(question, str) or not question.strip():
        return "question is empty"
    if len(question) > max_chars:
        return f"question has {len(question)} characters; max_question_chars is {max_chars}"
    if len(choices) > MAX_CHOICES:
        return f"at most {MAX_CHOICES} choices are supported; got {len(choices)}"
    if any(not isinstance(c, str) or not c.strip() for c in choices):
        return "choices must be non-empty strings"
    if sum(len(c) for c in choices) > max_chars:
        return f"choices are longer than max_question_chars ({max_chars}) in total"
    if CONTROL_TOKEN.search(question) or any(CONTROL_TOKEN.search(c) for c in choices):
        return "question contains model control tokens such as <|im_start|>"
    return None


def format_choices(choices: Sequence[str]) -> str:
    """`["left", "right"]` -> `(A) left (B) right`."""
    if len(choices) > MAX_CHOICES:
        raise ValueError(f"at most {MAX_CHOICES} choices are supported, got {len(choices)}")
    return " ".join(f"({chr(ord('A') + i)}) {c.strip()}" for i, c in enumerate(choices))


def question_text(question: str, choices: Sequence[str] | None = None) -> str:
    """The question as the model reads it, with its options appended when given separately."""
    question = question.strip()
    if choices:
        return f"{question} {format_choices(choices)}"
    return question


def build_prompt(
    question: str,
    width: int,
    height: int,
    choices: Sequence[str] | None = None,
    style: PromptStyle = PromptStyle.CARD,
) -> str:
    """The user-turn text that follows the image. `width` x `height` must be the size of the
    image handed to the processor: the model's boxes are in that frame."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width} x {height}")
    q = question_text(question, choices)
    if style is PromptStyle.PAPER_EVAL:
        size_line = f"({width} x {height})"
        return f"{PAPER_EVAL_TEMPLATE}\n{size_line}\n\nNow answer the following question:\n{q}"
    return f"{INSTRUCTION}\n\nImage size: {width} x {height}\n\n{q}"


def prompt_prefix(width: int, height: int, style: PromptStyle = PromptStyle.CARD) -> str:
    """The part of the prompt that does not depend on the question (shared across questions)."""
    full = build_prompt("\x00", width, height, style=style)
    return full[: full.index("\x00")]
