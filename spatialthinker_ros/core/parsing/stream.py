"""Following a streamed output: `StreamParser` and the stage of the text so far.

`StreamParser` returns the scene graph once `</scene>` closes, then the whole `Reasoning`
without parsing the scene again; every scan resumes where it stopped, so feeding is linear in
the total length. `scene_closed`, `answer_closed` and `stream_stage` answer one-off questions
on the text so far (`parse_scene_graph` is in `scene_graph`).
"""

from __future__ import annotations

from collections.abc import Sequence

from ..scene import Reasoning, SceneGraph
from ..text import safe_text
from .notes import Notes
from .reasoning import parse_output, parse_scanned, parser_error, prose
from .scene_graph import MAX_REPAIR_CHARS, SceneCache
from .tags import (
    ANSWER_CLOSE_RE,
    MAX_TAG_CHARS,
    SCENE_CLOSE_RE,
    THINK_OR_ANSWER_OPEN_RE,
    Section,
    TagScanner,
    split_sections,
)


class _StageMarks:
    """Which stage markers a growing text holds (the rules of `stream_stage`), searched
    incrementally: each update looks at the new text and a tag's length before it."""

    def __init__(self) -> None:
        self.scene_closed = self.thinking = self.answered = False
        self._searched = 0

    def update(self, text: str) -> None:
        start = max(0, self._searched - MAX_TAG_CHARS)
        self.answered = self.answered or ANSWER_CLOSE_RE.search(text, start) is not None
        self.thinking = self.thinking or THINK_OR_ANSWER_OPEN_RE.search(text, start) is not None
        self.scene_closed = self.scene_closed or SCENE_CLOSE_RE.search(text, start) is not None
        self._searched = len(text)

    @property
    def stage(self) -> str:
        if self.answered:
            return "answered"
        if self.thinking:
            return "thinking"
        return "scene_graph_ready" if self.scene_closed else "observing"


class StreamParser:
    """Follows one streamed output without parsing anything twice (ROS-free).

    `feed(delta)` returns the scene graph exactly once: at the delta that closes the first
    complete <scene> (its `</scene>` outside JSON strings, by the rules of `parse_output`), parsed
    then; `scene_observation` is the observation at that point. `finish(choices)` parses the
    whole output and reuses that scene graph when the final parse selects the same section.
    Feeding is amortised linear in the total length (scans resume where they stopped).
    Text is cleaned with `safe_text` as it arrives; `text` is everything fed so far.
    """

    def __init__(self) -> None:
        self._text = ""
        self._scanner = TagScanner()
        self._cache = SceneCache()
        self._marks = _StageMarks()
        self._checked = 1  # tags[i - 1], tags[i] pairs examined for a complete <scene>
        self._scene_graph: SceneGraph | None = None
        self._scene_observation = ""
        self._broken = False  # a parser bug while streaming: finish parses from scratch
        self._finished = False

    @property
    def text(self) -> str:
        return self._text

    @property
    def scene_graph(self) -> SceneGraph | None:
        """The graph `feed` returned, None before `</scene>`."""
        return self._scene_graph

    @property
    def scene_observation(self) -> str:
        """The <observe> text when the scene closed ("" before, or without one)."""
        return self._scene_observation

    @property
    def stage(self) -> str:
        """`stream_stage` of the text so far, kept up to date incrementally."""
        return self._marks.stage

    def feed(self, delta: str) -> SceneGraph | None:
        if not isinstance(delta, str):
            raise TypeError(f"model output must be str, got {type(delta).__name__}")
        if self._finished:
            raise RuntimeError("StreamParser.feed after finish")
        if not delta:
            return None
        text = self._text
        self._text = ""  # our reference gone, `+=` can grow the string in place
        text += safe_text(delta)
        self._text = text
        # A tag completes with `>` and a quote's line with a newline: without either in the
        # delta nothing can be decided, and the next scan covers the text skipped here.
        if ">" in delta:
            self._marks.update(text)
        if self._scene_graph is not None or self._broken or not (">" in delta or "\n" in delta):
            return None
        try:
            self._scanner.scan(text, final=False)
            return self._scene_at_close(text)
        except Exception:  # a parser bug must not break generation; finish parses again
            self._broken = True
            return None

    def _scene_at_close(self, text: str) -> SceneGraph | None:
        tags = self._scanner.tags
        for i in range(self._checked, len(tags)):
            opening, closing = tags[i - 1], tags[i]
            if opening.name == closing.name == "scene" and not opening.closing and closing.closing:
                section = Section("scene", text[opening.end : closing.start], True, True)
                self._scene_graph = self._cache.parse(section, MAX_REPAIR_CHARS).graph
                before = split_sections(text, tags[: i + 1], closing.end)
                self._scene_observation = prose("observe", before["observe"], Notes())
                return self._scene_graph
        self._checked = max(1, len(tags))
        return None

    def finish(self, choices: Sequence[str] | None = None) -> Reasoning:
        """The `Reasoning` of the whole output (what `parse_output` returns for it)."""
        self._finished = True
        if self._broken:
            return parse_output(self._text, choices)
        try:
            self._scanner.scan(self._text, final=True)
            return parse_scanned(self._text, self._scanner.tags, choices, self._cache)
        except Exception as exc:  # a parser bug must not take the node down
            return parser_error(self._text, exc)


def scene_closed(text: str) -> bool:
    """True once `</scene>` has been generated (the scene graph can be published). A plain
    search, so it never turns False again as text streams in (even for a `"</scene>"` string)."""
    return SCENE_CLOSE_RE.search(text) is not None


def answer_closed(text: str) -> bool:
    """True once `</answer>` has been generated."""
    return ANSWER_CLOSE_RE.search(text) is not None


def stream_stage(text: str) -> str:
    """Where generation is: "observing", "scene_graph_ready", "thinking" or "answered"."""
    marks = _StageMarks()
    marks.update(text)
    return marks.stage
