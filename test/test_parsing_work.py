"""The parser's work is linear in the output, counted deterministically (no timing: the times
are measured by bench/parser_worst_case.py and recorded in docs/reliability.md).

For every adversarial shape of `testing.parser_inputs` (49), with parse_output and with
StreamParser: the Python lines the parser runs, and the characters its regex calls advance
over, grow at most ~4x when the output grows 4x; scene JSON repair reads at most
MAX_REPAIR_CHARS; at most MAX_SCENE_CANDIDATES scene sections are parsed, each once; scene-body
scans never read a character twice. Backtracking inside one regex call is not counted: every
scanning pattern is possessive or bounded by construction, and the bench times the shapes built
to make a backtracking regex blow up.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
import sys
from collections.abc import Callable

import pytest

from spatialthinker_ros.core import lenient_json, parsing
from spatialthinker_ros.core.parsing import StreamParser, parse_output, scene_graph, tags
from spatialthinker_ros.testing.parser_inputs import SHAPES, generate

CHOICES = ("in front of", "behind", "left of", "right of")
# The parser's modules: the `parsing` package, each module in it, and lenient_json.
PARSER_MODULES = (
    parsing,
    *(
        importlib.import_module(f"{parsing.__name__}.{m.name}")
        for m in pkgutil.iter_modules(parsing.__path__)
    ),
    lenient_json,
)
MODULES = {module.__file__ for module in PARSER_MODULES}
SMALL, LARGE = 4096, 16384
# Linear work grows 4x from SMALL to LARGE; the slack absorbs fixed costs and rounding.
GROWTH_LIMIT = 4.6


def lines_run(call: Callable[[], object]) -> int:
    """Python lines executed inside the parser modules while `call` runs."""
    count = 0

    def local(frame, event, arg):
        nonlocal count
        if event == "line":
            count += 1
        return local

    def global_trace(frame, event, arg):
        return local if frame.f_code.co_filename in MODULES else None

    sys.settrace(global_trace)
    try:
        call()
    finally:
        sys.settrace(None)
    return count


def stream(text: str) -> None:
    parser = StreamParser()
    for start in range(0, len(text), 4):
        parser.feed(text[start : start + 4])
    parser.finish(CHOICES)


@pytest.mark.parametrize("shape", list(SHAPES))
def test_parse_output_work_grows_linearly(shape):
    small = lines_run(lambda: parse_output(generate(shape, SMALL), CHOICES))
    large = lines_run(lambda: parse_output(generate(shape, LARGE), CHOICES))
    assert large <= GROWTH_LIMIT * small + 500, (small, large)


@pytest.mark.parametrize("shape", list(SHAPES))
def test_streaming_work_grows_linearly(shape):
    small = lines_run(lambda: stream(generate(shape, SMALL)))
    large = lines_run(lambda: stream(generate(shape, LARGE)))
    assert large <= GROWTH_LIMIT * small + 500, (small, large)


@pytest.mark.parametrize("shape", list(SHAPES))
def test_repair_and_scene_parsing_are_bounded(shape, monkeypatch):
    repaired: list[int] = []
    scenes: list[int] = []
    real_loads, real_scene = lenient_json.loads, scene_graph.parse_scene_section

    def counting_loads(text: str, truncated: bool = False):
        repaired.append(len(text))
        return real_loads(text, truncated)

    def counting_scene(content: str, truncated: bool, repair_limit: int):
        scenes.append(len(content))
        return real_scene(content, truncated, repair_limit)

    monkeypatch.setattr(lenient_json, "loads", counting_loads)
    monkeypatch.setattr(scene_graph, "parse_scene_section", counting_scene)
    text = generate(shape, 65536)
    parse_output(text, CHOICES)
    assert sum(repaired) <= parsing.MAX_REPAIR_CHARS
    assert len(scenes) <= parsing.MAX_SCENE_CANDIDATES
    assert sum(scenes) <= len(text)
    repaired.clear()
    scenes.clear()
    stream(text)  # the streamed scene is parsed once, for the stream and the final parse
    assert sum(repaired) <= parsing.MAX_REPAIR_CHARS
    assert len(scenes) <= parsing.MAX_SCENE_CANDIDATES
    assert sum(scenes) <= len(text)


class _ScanCounter:
    """Stands in for a compiled pattern and adds up the characters its calls advance over: to
    the end of a match (or of the text when a search finds nothing); a whole text for split and
    sub."""

    def __init__(self, pattern: re.Pattern[str], total: list[int]) -> None:
        self.pattern, self.total = pattern, total

    def _span(self, string: str, pos: int, endpos: int | None) -> tuple[int, int]:
        return pos, len(string) if endpos is None else min(endpos, len(string))

    def match(self, string: str, pos: int = 0, endpos: int | None = None):
        found = self.pattern.match(string, *self._span(string, pos, endpos))
        self.total[0] += 1 + (found.end() - pos if found else 0)
        return found

    def fullmatch(self, string: str, pos: int = 0, endpos: int | None = None):
        found = self.pattern.fullmatch(string, *self._span(string, pos, endpos))
        self.total[0] += 1 + (found.end() - pos if found else 0)
        return found

    def search(self, string: str, pos: int = 0, endpos: int | None = None):
        start, end = self._span(string, pos, endpos)
        found = self.pattern.search(string, start, end)
        self.total[0] += 1 + (found.end() if found else end) - start
        return found

    def finditer(self, string: str, pos: int = 0, endpos: int | None = None):
        start, end = self._span(string, pos, endpos)
        reached = start
        for found in self.pattern.finditer(string, start, end):
            self.total[0] += 1 + found.end() - reached
            reached = found.end()
            yield found
        self.total[0] += end - reached

    def split(self, string: str, *args, **kwargs):
        self.total[0] += len(string)
        return self.pattern.split(string, *args, **kwargs)

    def sub(self, repl, string: str, *args, **kwargs):
        self.total[0] += len(string)
        return self.pattern.sub(repl, string, *args, **kwargs)


def regex_chars(monkeypatch: pytest.MonkeyPatch, call: Callable[[], object]) -> int:
    """Characters the parser's regex calls advance over while `call` runs."""
    total = [0]
    with monkeypatch.context() as patch:
        for module in PARSER_MODULES:
            for name, value in vars(module).items():
                if isinstance(value, re.Pattern):
                    patch.setattr(module, name, _ScanCounter(value, total))
        body = {k: _ScanCounter(v, total) for k, v in tags._SCENE_BODY_RE.items()}
        patch.setattr(tags, "_SCENE_BODY_RE", body)
        call()
    return total[0]


@pytest.mark.parametrize("shape", list(SHAPES))
def test_regex_work_grows_linearly(shape, monkeypatch):
    for run in (lambda text: parse_output(text, CHOICES), stream):
        small = regex_chars(monkeypatch, lambda run=run: run(generate(shape, SMALL)))
        large = regex_chars(monkeypatch, lambda run=run: run(generate(shape, LARGE)))
        assert large <= GROWTH_LIMIT * small + 500, (run, small, large)


class _CountingPattern:
    """A compiled pattern that adds up the characters its `match` calls consume."""

    def __init__(self, pattern):
        self.pattern, self.consumed = pattern, 0

    def match(self, text: str, pos: int = 0):
        found = self.pattern.match(text, pos)
        if found is not None:
            self.consumed += found.end() - pos
        return found


@pytest.mark.parametrize("shape", [s for s in SHAPES if "scene" in s.lower() or "quote" in s])
def test_scene_body_scans_read_each_character_once(shape, monkeypatch):
    counting = {final: _CountingPattern(p) for final, p in tags._SCENE_BODY_RE.items()}
    monkeypatch.setattr(tags, "_SCENE_BODY_RE", counting)
    text = generate(shape, 65536)
    parse_output(text)
    assert counting[True].consumed <= len(text)
    stream(text)
    assert counting[False].consumed <= len(text)
