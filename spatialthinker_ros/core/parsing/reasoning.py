"""A whole output -> `Reasoning`: its sections put together, with the notes and a status.

The status is OK when nothing was noted, PARTIAL when something was (missing, repaired,
dropped) but there is an answer, PARSE_ERROR without one; a parser bug is a PARSE_ERROR too,
never an exception.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..scene import ParseStatus, Reasoning
from ..text import safe_text
from .answer import answer_text, parse_answer
from .notes import Notes
from .scene_graph import SceneCache, select_scene
from .tags import (
    Section,
    Tag,
    first_complete,
    note_section,
    partial_tag_length,
    scan_tags,
    split_sections,
)


def parse_output(text: str, choices: Sequence[str] | None = None) -> Reasoning:
    """Parse one model output. Never raises on a str; see `status` and `message`."""
    if not isinstance(text, str):
        raise TypeError(f"model output must be str, got {type(text).__name__}")
    clean = safe_text(text)
    try:
        return parse_scanned(clean, scan_tags(clean), choices, SceneCache())
    except Exception as exc:  # a parser bug must not take the node down
        return parser_error(clean, exc)


def parse_until_scene(text: str) -> Reasoning:
    """Parse an output that ended once its scene graph was complete (stop_after="scene_graph"):
    the observation and the scene graph, no thought and no answer expected. OK when both are
    well formed, PARTIAL with the notes when something was missing or repaired, PARSE_ERROR
    without a scene graph. Never raises on a str."""
    if not isinstance(text, str):
        raise TypeError(f"model output must be str, got {type(text).__name__}")
    clean = safe_text(text)
    notes = Notes()
    try:
        tags = scan_tags(clean)
        sections = split_sections(clean, tags, len(clean) - partial_tag_length(clean))
        observation = prose("observe", sections["observe"], notes)
        graph = select_scene(sections["scene"], notes, SceneCache())
    except Exception as exc:  # a parser bug must not take the node down
        return parser_error(clean, exc)
    if not sections["scene"]:
        status = ParseStatus.PARSE_ERROR
    else:
        status = ParseStatus.PARTIAL if notes else ParseStatus.OK
    return Reasoning(raw=clean, observation=observation, scene_graph=graph, status=status,
                     message=safe_text(notes.text()))


def parser_error(text: str, exc: Exception) -> Reasoning:
    return Reasoning(
        raw=text,
        status=ParseStatus.PARSE_ERROR,
        message=safe_text(f"parser error: {type(exc).__name__}: {exc}"),
    )


def parse_scanned(
    text: str, tags: list[Tag], choices: Sequence[str] | None, cache: SceneCache
) -> Reasoning:
    """Parse a safe_text-clean output whose tags are known."""
    notes = Notes()
    end = len(text) - partial_tag_length(text)
    sections = split_sections(text, tags, end)
    observation = prose("observe", sections["observe"], notes)
    graph = select_scene(sections["scene"], notes, cache)
    thought = prose("think", sections["think"], notes)
    clean_choices = [safe_text(c) for c in choices] if choices else None
    raw_answer = answer_text(text, end, tags, sections, clean_choices, notes)
    answer = parse_answer(raw_answer, clean_choices, notes)
    if answer.option or answer.text:
        status = ParseStatus.PARTIAL if notes else ParseStatus.OK
        message = notes.text()
    else:
        status = ParseStatus.PARSE_ERROR
        message = f"no answer: {notes.text()}"
    return Reasoning(
        raw=text,
        observation=observation,
        scene_graph=graph,
        thought=thought,
        answer=answer,
        status=status,
        message=safe_text(message),
    )


def prose(name: str, found: list[Section], notes: Notes) -> str:
    """The text of the first complete <observe>/<think> (or the first one at all)."""
    section = first_complete(found)
    if section is None:
        notes.add(f"missing <{name}>")
        return ""
    note_section(section, len(found), notes)
    content = section.content.strip()
    if not content:
        notes.add(f"empty <{section.name}>")
    return content
