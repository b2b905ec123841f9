"""The answer of an output: where it is, which option it names and which choice it matches.

Extraction follows the authors' evaluation code (the shapes and tests: docs/model.md), except
that an answer matching no choice stays unmatched. The answer is the last non-empty <answer>
(after any `Answer:` in it), else the text after the last `Answer:`, else untagged text that
names an option or a choice; braces, Markdown and quotes around it are dropped, and
`(B) text`, `B. text` and `B` name option B.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from ..scene import FinalAnswer
from .notes import Notes, quoted
from .tags import TAG_RE, Section, Tag, last_with_content, note_section

_ANSWER_PREFIX_RE = re.compile(r"\banswer\s*:", re.IGNORECASE)
# `(B) text`, `( b ). text`, `B) text`, `B. text`, `B: text`, `B`.
_LEADING_OPTION_RE = re.compile(
    r"\(\s*([A-Za-z])\s*\)[\s.:)\-]*(.*)|([A-Za-z])\s*(?:[):]|\.(?![A-Za-z0-9]))\s*(.*)|([A-Za-z])",
    re.DOTALL,
)
_EMBEDDED_OPTION_RE = re.compile(r"\(([A-Z])\)")
# Markdown emphasis, code and quotes around a whole answer (`**(B) behind**`, `"B"`).
_ANSWER_WRAPPERS = "*`\"' "


def _normalise(text: str) -> str:
    return " ".join(text.split()).rstrip(".").strip().casefold()


def _clean_answer(text: str) -> str:
    """One line, without the braces of the prompt's `({correct_option}) {correct_answer}`
    (removed by the reference evaluation too) and without Markdown or quotes around it."""
    if "{" in text or "}" in text:
        text = text.replace("{", "").replace("}", "")
    return " ".join(text.split()).strip(_ANSWER_WRAPPERS)


def _last_answer_prefix(text: str, end: int) -> int:
    """End of the last `Answer:` in `text[:end]`, or -1."""
    last = -1
    for match in _ANSWER_PREFIX_RE.finditer(text, 0, end):
        last = match.end()
    return last


def _after_answer_prefix(text: str) -> str:
    """Text after the last `Answer:` (the reference extraction), or the text itself."""
    last = _last_answer_prefix(text, len(text))
    return text[last:] if last >= 0 else text


def _split_option(text: str) -> tuple[str, str]:
    """(`B`, `behind`) from `(B) behind`, `B. behind`, `B`; ("", text) without a letter."""
    match = _LEADING_OPTION_RE.fullmatch(text)
    if match:
        if match.group(1):
            return match.group(1).upper(), match.group(2).strip()
        if match.group(3):
            return match.group(3).upper(), match.group(4).strip()
        return match.group(5).upper(), ""
    # "The answer is (B) behind": one parenthesised capital, however often repeated.
    embedded = list(_EMBEDDED_OPTION_RE.finditer(text))
    if embedded and len({m.group(1) for m in embedded}) == 1:
        return embedded[0].group(1), text[embedded[0].end() :].strip()
    return "", text


def _names_an_answer(text: str, choices: Sequence[str] | None) -> bool:
    if _split_option(text)[0]:
        return True
    return bool(choices) and _normalise(text) in {_normalise(c) for c in choices or ()}


def answer_text(
    text: str,
    end: int,
    tags: list[Tag],
    sections: dict[str, list[Section]],
    choices: Sequence[str] | None,
    notes: Notes,
) -> str:
    """The raw answer: the last non-empty <answer>, else the text after the last `Answer:`,
    else untagged text after the last closing tag (or a whole untagged output) that names an
    option or a choice."""
    found = sections["answer"]
    section = last_with_content(found)
    answer = _clean_answer(_after_answer_prefix(section.content)) if section else ""
    if section is not None and answer:
        note_section(section, len(found), notes)
        return answer
    notes.add("empty <answer>" if found else "missing <answer>")
    last = _last_answer_prefix(text, end)
    if last >= 0:
        tag = TAG_RE.search(text, last, end)
        tail = text[last : tag.start() if tag else end]
        line = _clean_answer(next((ln for ln in tail.splitlines() if ln.strip()), ""))
        if line:
            notes.add("used the text after 'Answer:'")
        return line
    if tags and not tags[-1].closing:
        return ""  # the text after an opening tag belongs to that section
    untagged = _clean_answer(text[tags[-1].end if tags else 0 : end])
    if untagged and _names_an_answer(untagged, choices):
        notes.add("used the untagged text after the last tag" if tags else "used untagged text")
        return untagged
    return ""


def parse_answer(raw: str, choices: Sequence[str] | None, notes: Notes) -> FinalAnswer:
    if not raw:
        return FinalAnswer()
    option, text = _split_option(raw)
    if not choices:
        return FinalAnswer(option=option, text=text)
    normalised = [_normalise(c) for c in choices]
    by_text = normalised.index(_normalise(text)) if text and _normalise(text) in normalised else -1
    if option:
        index = ord(option) - ord("A")
        if index < len(choices):
            if by_text >= 0 and by_text != index:
                notes.add(f"answer text {quoted(text)} is choice {chr(65 + by_text)}, not {option}")
            return FinalAnswer(option=option, text=text, matched_choice=choices[index])
        notes.add(f"option {option} is not among {len(choices)} choices")
        option, text = "", text or raw
    if by_text >= 0:
        return FinalAnswer(text=text, matched_choice=choices[by_text])
    notes.add("answer matches no choice")
    return FinalAnswer(option=option, text=text)
