"""StreamParser: the scene graph once, at `</scene>`; the final Reasoning equals parse_output's,
with the scene parsed once; the incremental tag scan agrees with the one-shot scan.

Cases per run (derandomized hypothesis): every 2-way split and the 1-char stream of 8 real
outputs (3,063 streams), 1,500 random outputs in random chunks, 1,500 random texts checked
prefix by prefix against the one-shot tag scan.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_parsing import CARD_CHOICES, CARD_GRAPH, CARD_OBSERVATION, CARD_OUTPUT, MUG_CHOICES
from test_parsing_fuzz import REAL_OUTPUTS, assert_publishable

from spatialthinker_ros.core.parsing import (
    MAX_REPAIR_CHARS,
    StreamParser,
    parse_output,
    parse_scene_graph,
    scene_graph,
    stream_stage,
)
from spatialthinker_ros.core.parsing.tags import TagScanner, scan_tags
from spatialthinker_ros.core.scene import Box, SceneGraph, SceneObject
from spatialthinker_ros.core.text import safe_text

FUZZ = settings(deadline=None)

# Real outputs plus two whose scene strings hold tags and a quote that closes late.
STREAMED = [
    *REAL_OUTPUTS,
    (
        '<observe>a "cup"</observe>\n<scene>{"objects": [{"id": "cup.1", "bbox": "</scene>"}, '
        '{"id": "<answer>", "bbox": [1, 2, 3, 4]}]}</scene>\n<think>ok</think>'
        "<answer>(B) behind</answer>",
        MUG_CHOICES,
    ),
    (
        '<observe>x</observe><scene>{"objects": [{"id": "a.1 </scene> still a string'
        '", "bbox": [1, 2, 3, 4]}]}\n</scene><think>t</think><answer>B</answer>',
        MUG_CHOICES,
    ),
]


@pytest.fixture
def scene_parses(monkeypatch):
    """Counts every scene JSON parse (the one function that reads scene JSON)."""
    calls: list[str] = []
    real = scene_graph.parse_scene_section

    def counting(content: str, truncated: bool, repair_limit: int):
        calls.append(content)
        return real(content, truncated, repair_limit)

    monkeypatch.setattr(scene_graph, "parse_scene_section", counting)
    return calls


def stream(chunks: list[str], choices=None):
    """Feed `chunks`; returns (final Reasoning, [(chunk index, graph) for each graph fed back])."""
    parser = StreamParser()
    returned = []
    for i, chunk in enumerate(chunks):
        graph = parser.feed(chunk)
        if graph is not None:
            returned.append((i, graph))
    return parser.finish(choices), returned, parser


def first_complete_scene(text: str) -> tuple[str, int] | None:
    """(content, end of its `</scene>`) of the first complete <scene> by the one-shot scan."""
    clean = safe_text(text)
    tags = scan_tags(clean)
    for opening, closing in zip(tags, tags[1:], strict=False):
        if opening.name == closing.name == "scene" and closing.closing and not opening.closing:
            return clean[opening.end : closing.start], closing.end
    return None


def test_card_output_streams_its_scene_at_the_closing_tag(scene_parses):
    close = CARD_OUTPUT.index("</scene>")
    chunks = [CARD_OUTPUT[i : i + 3] for i in range(0, len(CARD_OUTPUT), 3)]
    expected = parse_output(CARD_OUTPUT, CARD_CHOICES)
    scene_parses.clear()
    final, returned, parser = stream(chunks, CARD_CHOICES)
    assert final == expected
    ((index, graph),) = returned
    # The chunk holding the `>` of `</scene>` returns the graph, parsed once for both.
    assert index * 3 <= close + len("</scene>") - 1 < (index + 1) * 3
    assert graph == CARD_GRAPH == final.scene_graph == parser.scene_graph
    assert parser.scene_observation == CARD_OBSERVATION
    assert len(scene_parses) == 1
    assert parser.text == CARD_OUTPUT


@pytest.mark.parametrize(("text", "choices"), STREAMED)
def test_every_split_of_real_outputs_gives_parse_output(text, choices, scene_parses):
    expected = parse_output(text, choices)
    content, close_end = first_complete_scene(text)
    splits = [[text[:cut], text[cut:]] for cut in range(len(text) + 1)] + [list(text)]
    for chunks in splits:
        scene_parses.clear()
        final, returned, parser = stream(chunks, choices)
        assert final == expected, chunks
        # Exactly once, at the chunk completing `</scene>`, and never parsed again.
        ((index, graph),) = returned
        assert (
            sum(len(c) for c in chunks[:index])
            < close_end
            <= sum(len(c) for c in chunks[: index + 1])
        )
        assert graph == parser.scene_graph
        assert scene_parses == [content]
        assert graph == final.scene_graph  # these outputs' first scene has objects


TAG_PIECES = [
    "<scene>", "</scene>", "<observe>", "</observe>", "<think>", "</think>", "<answer>",
    "</answer>", "< /scene >", "<\n/scene>", "</scene", "<", '"', '\\"', "\\", "\n", " ",
    "{", "}", "[", "]", ",", ":", '"id"', '"bbox"', "[1, 2, 3, 4]", '"a.1"', "Answer: B",
    "(B)", " " * 20, "x",
]  # fmt: skip
TEXTS = st.lists(st.one_of(st.sampled_from(TAG_PIECES), st.text(max_size=6)), max_size=30).map(
    "".join
)


@settings(FUZZ, max_examples=1500)
@given(text=TEXTS, seed=st.integers(0, 2**16), choices=st.sampled_from([None, MUG_CHOICES]))
def test_random_outputs_in_random_chunks(text, seed, choices):
    rng = random.Random(seed)
    chunks, at = [], 0
    while at < len(text):
        step = rng.choice([1, 1, 2, 3, 7, 40])
        chunks.append(text[at : at + step])
        at += step
    final, returned, parser = stream(chunks, choices)
    assert final == parse_output(text, choices)
    assert_publishable(final)
    scene = first_complete_scene(text)
    assert len(returned) <= 1
    if scene is None:
        assert returned == []
    elif returned:  # (a scene closing on a line that never ends is only known at finish)
        ((index, graph),) = returned
        assert sum(map(len, chunks[: index + 1])) >= scene[1]
        assert graph == scene_graph.parse_scene_section(scene[0], False, MAX_REPAIR_CHARS).graph


@settings(FUZZ, max_examples=1500)
@given(text=TEXTS)
def test_incremental_tag_scan_only_reports_final_tags(text):
    """After every prefix the streaming scan's tags are a prefix of the complete text's tags,
    and once finished they are the same."""
    expected = scan_tags(text)
    scanner = TagScanner()
    for end in range(len(text) + 1):
        scanner.scan(text[:end], final=False)
        assert scanner.tags == expected[: len(scanner.tags)], end
    scanner.scan(text, final=True)
    assert scanner.tags == expected


def test_stage_follows_stream_stage():
    parser = StreamParser()
    text = CARD_OUTPUT
    for i in range(0, len(text), 2):
        parser.feed(text[i : i + 2])
        assert parser.stage == stream_stage(text[: i + 2])
    assert parser.stage == "answered"


def test_a_scene_closing_after_an_open_quote_is_decided_when_the_line_ends():
    # The quote before `</scene>` may still close on this line (then `</scene>` is text).
    parser = StreamParser()
    assert parser.feed('<scene>{"objects": [{"id": "a.1, "bbox": [1, 2, 3, 4]}]}</scene>') is None
    assert parser.feed("<think>the ") is None
    assert parser.feed('"cup"</think>') is None  # that quote closed, the next one is open
    # The line ends with a quote open and `</think>` on it: no string hides tags, so
    # `<scene>...</scene>` is a complete section after all.
    graph = parser.feed("\n")
    assert graph is not None and graph == parse_scene_graph(parser.text)
    assert parser.finish() == parse_output(parser.text)


def test_the_scene_is_returned_when_its_line_ends():
    parser = StreamParser()
    assert parser.feed('<scene>{"objects": [{"id": "a.1", "bbox": "x}]}</scene>') is None
    graph = parser.feed("\n<think>")  # the quote never closed on its line: `</scene>` closes
    assert graph == parse_scene_graph('<scene>{"objects": [{"id": "a.1", "bbox": "x}]}</scene>')
    assert parser.scene_graph is graph


def test_stream_text_is_cleaned_and_publishable():
    parser = StreamParser()
    for delta in ["<observe>a\ud800b\x00</observe><scene>", '{"objects": [{"id": "c\\ud800.1",',
                  ' "bbox": [1, 2, 3, 4]}]}</scene><answer>(B)</answer>']:  # fmt: skip
        parser.feed(delta)
    assert parser.text == safe_text(parser.text)
    assert parser.scene_graph == SceneGraph(
        objects=(SceneObject("c\ufffd.1", "c\ufffd", Box(1.0, 2.0, 3.0, 4.0)),)
    )
    assert parser.scene_observation == "a\ufffdb\ufffd"
    assert_publishable(parser.finish(MUG_CHOICES))


def test_feed_misuse():
    parser = StreamParser()
    assert parser.feed("") is None
    with pytest.raises(TypeError):
        parser.feed(b"<scene>")  # type: ignore[arg-type]
    parser.finish()
    with pytest.raises(RuntimeError):
        parser.feed("more")


def test_without_a_scene_nothing_is_returned_and_finish_still_parses(scene_parses):
    text = "<observe>o</observe><think>t</think><answer>(B) behind</answer>"
    final, returned, parser = stream(list(text), MUG_CHOICES)
    assert returned == [] and parser.scene_graph is None and parser.scene_observation == ""
    assert final == parse_output(text, MUG_CHOICES)
    assert scene_parses == []
