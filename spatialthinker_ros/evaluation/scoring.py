"""One model output against one gold letter: correct, wrong, no answer or unmatched.

The answer is extracted by `core.parsing` (the reference's extraction: the last `<answer>`, or
the text after the last `Answer:`, the option letter split off and matched against the
choices). Unlike the reference, an answer that matches no choice is not mapped to option A: it
counts as wrong and as a parse failure. Where the letter and the text name different choices,
the letter decides (the reference lets the text decide); such answers are counted.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass

from ..core.parsing import parse_output

_GOLD_RE = re.compile(r"^\(?\s*([A-Za-z])\s*\)?\.?$")


class Outcome(enum.Enum):
    CORRECT = "correct"
    WRONG = "wrong"  # a choice was matched, not the gold one
    NO_ANSWER = "no_answer"  # no answer in the output (parse failure)
    UNMATCHED = "unmatched"  # an answer that matches no choice (parse failure)

    @property
    def parse_failure(self) -> bool:
        return self in (Outcome.NO_ANSWER, Outcome.UNMATCHED)


@dataclass(frozen=True)
class Score:
    outcome: Outcome
    predicted: str  # letter of the matched choice; "" when none matched
    answer_text: str  # the model's answer as extracted (untrusted)
    letter_text_disagree: bool  # the letter names one choice and the text another


def letter(index: int) -> str:
    return chr(ord("A") + index)


def parse_gold(answer: object, choices: Sequence[str]) -> int | None:
    """Index of the gold choice from `(A)`, `A`, `a.` or the exact text of a choice; None when
    it names none of `choices`."""
    if not isinstance(answer, str):
        return None
    match = _GOLD_RE.match(answer.strip())
    if match:
        index = ord(match.group(1).upper()) - ord("A")
        return index if index < len(choices) else None
    stripped = answer.strip()
    return choices.index(stripped) if stripped in choices else None


def _normalise(text: str) -> str:
    return " ".join(text.split()).rstrip(".").strip().casefold()


def score_output(raw_output: str, choices: Sequence[str], gold: int) -> Score:
    """Score one model output; never raises on a str."""
    answer = parse_output(raw_output, choices).answer
    if not (answer.option or answer.text):
        return Score(Outcome.NO_ANSWER, "", "", False)
    if not answer.matched_choice:
        return Score(Outcome.UNMATCHED, "", answer.text or answer.option, False)
    if answer.option:
        index = ord(answer.option) - ord("A")
    else:
        index = choices.index(answer.matched_choice)
    by_text = [i for i, c in enumerate(choices) if _normalise(c) == _normalise(answer.text)]
    disagree = bool(answer.option and answer.text and by_text and index not in by_text)
    outcome = Outcome.CORRECT if index == gold else Outcome.WRONG
    return Score(outcome, letter(index), answer.text, disagree)
