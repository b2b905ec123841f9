"""Fuzzing the output parser: it never raises and always returns a sane `Reasoning`, every string
of which can be published (strict UTF-8, no NUL).

Generated model outputs per test (counted by `CASES`; on the 2-core dev machine the module takes
about 36 s of CPU, 2026-11-29; hypothesis runs exactly `max_examples` for these strategies):
- test_truncation_at_every_position: every prefix of 6 real outputs: 2,730 prefixes, each also
  through `parse_scene_graph` (never invents objects/relations) and `stream_stage` (monotonic)
- test_tag_soup: 3,000 random mixes of tags, JSON fragments and text
- test_broken_scene_json: 2,500 random scene graphs, serialised, then mutated
- test_box_values: 2,000 random bbox values (floats, NaN, inf, huge ints, strings, bools)
- test_unicode_sections: 1,500 outputs with arbitrary unicode in every section
- test_long_outputs: 40 outputs of about 100 kB
Total 11,770; `test_case_count` fails if a change drops it under 10,000.

Deterministic for CI (`derandomize`, no example database): every run tries the same cases.
To explore new ones, set HYPOTHESIS_PROFILE=explore (test/conftest.py): random draws each run.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import random
from collections import Counter
from collections.abc import Iterator

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

# test/ is on sys.path under pytest (rootdir conftest, no package): reuse the real outputs.
from test_parsing import (
    CARD_CHOICES,
    CARD_OUTPUT,
    MUG_CHOICES,
    MUG_SCENE,
    OBSERVE,
    THINK,
    output,
)

from spatialthinker_ros.core.parsing import (
    MAX_COORD,
    parse_output,
    parse_scene_graph,
    stream_stage,
)
from spatialthinker_ros.core.scene import ParseStatus, Reasoning, SceneGraph
from spatialthinker_ros.core.text import safe_text
from spatialthinker_ros.testing.tiny_model import EXAMPLE_OUTPUT

# derandomize and the example database come from the conftest profile.
FUZZ = settings(deadline=None)


CASES: Counter[str] = Counter()
STAGES = ("observing", "scene_graph_ready", "thinking", "answered")
TAGS = [f"<{c}{n}>" for n in ("observe", "scene", "think", "answer") for c in ("", "/")]
# fmt: off
FRAGMENTS = TAGS + [
    "{", "}", "[", "]", ",", ":", '"', "'", "//", "/*", "*/", "\n", " ", "Answer:", "(B)", "B.",
    '"objects"', '"relationships"', '"relations"', '"id"', '"bbox"', '"subject"', '"predicate"',
    '"object"', '"cup.1"', '"mug.2"', "NaN", "Infinity", "-Infinity", "1e999", "null", "true",
    "[1, 2, 3, 4]", '"1, 2, 3, 4"', "[4, 3, 2, 1]", "9" * 400, "-0.5", "```json", "```",
]
# fmt: on
CHOICES = st.one_of(
    st.none(),
    st.just(MUG_CHOICES),
    st.lists(st.text(max_size=12), min_size=1, max_size=6).map(tuple),
)


def check_graph(graph: SceneGraph) -> None:
    assert isinstance(graph, SceneGraph)
    ids = [o.id for o in graph.objects]
    assert len(ids) == len(set(ids)) and all(ids)
    for obj in graph.objects:
        if obj.box is not None:
            values = obj.box.as_list()
            assert all(math.isfinite(v) and abs(v) <= MAX_COORD for v in values), obj
            assert obj.box.x_min <= obj.box.x_max and obj.box.y_min <= obj.box.y_max, obj
    for rel in graph.relations:
        assert rel.subject in ids and rel.object in ids and rel.predicate


def string_fields(value: object) -> Iterator[str]:
    """Every str inside a result (dataclasses, tuples, enums' values excluded)."""
    if isinstance(value, str):
        yield value
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for field in dataclasses.fields(value):
            yield from string_fields(getattr(value, field.name))
    elif isinstance(value, (tuple, list)) and not isinstance(value, enum.Enum):
        for item in value:
            yield from string_fields(item)


def assert_publishable(result: object) -> None:
    """Every string serialises as UTF-8 (a ROS string, JSONL, a bag) and holds no NUL."""
    for text in string_fields(result):
        text.encode("utf-8")  # strict: raises on a lone surrogate
        assert "\x00" not in text, text


def check(name: str, text: str, choices=None) -> Reasoning:
    """Parse `text` and assert every invariant of the result."""
    CASES[name] += 1
    r = parse_output(text, choices)
    assert isinstance(r, Reasoning)
    assert isinstance(r.status, ParseStatus)
    assert r.raw == safe_text(text)
    assert_publishable(r)
    assert not r.message.startswith("parser error"), r.message  # no internal exception
    check_graph(r.scene_graph)
    has_answer = bool(r.answer.option or r.answer.text)
    assert has_answer == (r.status is not ParseStatus.PARSE_ERROR), r
    assert (r.status is ParseStatus.OK) == (has_answer and r.message == ""), r
    if r.status is ParseStatus.PARSE_ERROR:
        assert r.message.startswith("no answer")
    if r.answer.option:
        assert len(r.answer.option) == 1 and "A" <= r.answer.option <= "Z"
        if choices:
            assert ord(r.answer.option) - 65 < len(choices)
            assert r.answer.matched_choice == safe_text(choices[ord(r.answer.option) - 65])
    if r.answer.matched_choice:
        assert choices and r.answer.matched_choice in [safe_text(c) for c in choices]
    return r


# Real outputs (and realistic variants) to truncate at every position.
REAL_OUTPUTS = [
    (EXAMPLE_OUTPUT, ("left", "right", "above", "below")),
    (CARD_OUTPUT, CARD_CHOICES),
    (output(), MUG_CHOICES),
    (output(scene=MUG_SCENE.replace('"', "'")), MUG_CHOICES),
    (
        output(
            "So the mug is behind.\nAnswer: (B) behind",
            scene='{"objects": [{"id": "mug.1", "bbox": "10, 20, 110, 220"}, '
            '{"id": "laptop.1", "bbox": [600.5, 300, 200, 40.25],}], // boxes\n'
            '"relations": [{"subject": "mug.1", "rel": "behind", "object": "laptop.1"}]}',
        ),
        MUG_CHOICES,
    ),
    (
        output(
            "<answer>B</answer>",
            scene='{"objects": [{"id": "mug.1", "bbox": [NaN, 20, 1e999, 220]}, '
            '{"id": "mug.1"}, {"bbox": [1, 2, 3, 4]}], "relationships": '
            '[{"subject": "mug.1", "predicate": "on", "object": "desk.1"}]}',
        ),
        MUG_CHOICES,
    ),
]


def test_truncation_at_every_position():
    for text, choices in REAL_OUTPUTS:
        full = parse_output(text, choices)
        assert full.status is not ParseStatus.PARSE_ERROR
        full_objects = set(full.scene_graph.objects)
        full_relations = set(full.scene_graph.relations)
        previous_stage = 0
        for end in range(len(text) + 1):
            prefix = text[:end]
            r = check("truncation", prefix, choices)
            # Streaming: a prefix never invents objects, boxes or relations.
            graph = parse_scene_graph(prefix)
            check_graph(graph)
            assert set(graph.objects) <= full_objects, (end, graph)
            assert set(graph.relations) <= full_relations, (end, graph)
            assert set(r.scene_graph.objects) <= full_objects, (end, r.scene_graph)
            stage = STAGES.index(stream_stage(prefix))
            assert stage >= previous_stage, end
            previous_stage = stage
        assert (previous_stage == STAGES.index("answered")) == ("</answer>" in text)


@settings(FUZZ, max_examples=3000)
@given(
    parts=st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=20)), max_size=40),
    choices=CHOICES,
)
def test_tag_soup(parts, choices):
    text = "".join(parts)
    check("tag_soup", text, choices)
    check_graph(parse_scene_graph(text))
    assert stream_stage(text) in STAGES


NUMBERS = st.one_of(
    st.integers(-2000, 2000),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(10**40), 10**40),
)
BOX_VALUES = st.one_of(
    st.lists(NUMBERS, min_size=0, max_size=6),
    st.lists(st.one_of(NUMBERS, st.text(max_size=6), st.booleans(), st.none()), max_size=5),
    st.lists(NUMBERS, min_size=4, max_size=4).map(lambda v: ", ".join(map(str, v))),
    st.lists(NUMBERS, min_size=4, max_size=4).map(str),
    st.text(max_size=20),
    NUMBERS,
    st.none(),
)
IDS = st.one_of(
    st.sampled_from(["cup.1", "cup.2", "red_cup.12", "table", "mug.1"]),
    st.text(max_size=8),
    st.integers(-5, 5),
    st.none(),
)
OBJECTS = st.fixed_dictionaries({}, optional={"id": IDS, "bbox": BOX_VALUES, "bbox_2d": BOX_VALUES})
RELATIONS = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "subject": IDS,
            "predicate": st.text(max_size=8),
            "rel": st.text(max_size=8),
            "object": IDS,
        },
    ),
    st.lists(IDS, min_size=3, max_size=3),
    st.text(max_size=5),
)
SCENES = st.fixed_dictionaries(
    {"objects": st.lists(OBJECTS, max_size=6)},
    optional={
        "relationships": st.lists(RELATIONS, max_size=4),
        "relations": st.lists(RELATIONS, max_size=4),
    },
)
MUTATIONS = st.lists(
    st.tuples(
        st.floats(0, 1),
        st.sampled_from(["", ",", "'", "//", "/*", "]", "}", "{", '"', ":"]),
        st.integers(0, 3),
    ),
    max_size=4,
)


def mutate(text: str, mutations) -> str:
    """Insert `piece` at a relative position, deleting `drop` characters there."""
    for where, piece, drop in mutations:
        at = int(where * len(text))
        text = text[:at] + piece + text[at + drop :]
    return text


@settings(FUZZ, max_examples=2500)
@given(scene=SCENES, mutations=MUTATIONS, single_quotes=st.booleans(), choices=CHOICES)
def test_broken_scene_json(scene, mutations, single_quotes, choices):
    scene_json = json.dumps(scene, allow_nan=True)
    if single_quotes:
        scene_json = scene_json.replace('"', "'")
    text = output(scene=mutate(scene_json, mutations))
    r = check("broken_json", text, choices)
    assert r.status is not ParseStatus.PARSE_ERROR  # the answer is intact
    if choices == MUG_CHOICES:
        assert r.answer.option == "B" and r.answer.matched_choice == "behind"


@settings(FUZZ, max_examples=2000)
@given(bbox=BOX_VALUES)
@example(bbox="<ANSWER>")  # regression: a tag inside a JSON string once ended the scene
@example(bbox=["</scene>", 1, "<think>", 2])
def test_box_values(bbox):
    scene_json = json.dumps({"objects": [{"id": "cup.1", "bbox": bbox}]}, allow_nan=True)
    r = check("boxes", output(scene=scene_json), MUG_CHOICES)
    # Tag-like text inside JSON strings is text: the rest of the output parses as usual.
    assert r.answer.option == "B" and r.answer.matched_choice == "behind"
    (obj,) = r.scene_graph.objects
    assert obj.id == "cup.1" and obj.label == "cup"
    numbers_ok = (
        isinstance(bbox, list)
        and len(bbox) == 4
        and all(
            isinstance(v, int) and not isinstance(v, bool) and abs(v) <= MAX_COORD for v in bbox
        )
    )
    if numbers_ok:
        xs, ys = sorted(bbox[0::2]), sorted(bbox[1::2])
        assert obj.box is not None and obj.box.as_list() == [xs[0], ys[0], xs[1], ys[1]]
    elif obj.box is None:
        assert "for 'cup.1'" in r.message


UNICODE = st.text(st.characters(blacklist_categories=("Cs",)), max_size=60)


@settings(FUZZ, max_examples=1500)
@given(observe=UNICODE, object_id=UNICODE, predicate=UNICODE, think=UNICODE, tail=UNICODE)
@example(observe="", object_id="```", predicate="", think="", tail="")  # regression: fence-like id
@example(observe="", object_id="</scene>", predicate="<answer>", think="", tail="")
def test_unicode_sections(observe, object_id, predicate, think, tail):
    scene_json = json.dumps(
        {
            "objects": [
                {"id": object_id, "bbox": [1, 2, 3, 4]},
                {"id": "b.1", "bbox": [5, 6, 7, 8]},
            ],
            "relationships": [{"subject": object_id, "predicate": predicate, "object": "b.1"}],
        },
        ensure_ascii=False,
    )
    text = (
        f"<observe>{observe}</observe><scene>{scene_json}</scene><think>{think}</think>"
        f"<answer>(B) {tail}</answer>"
    )
    r = check("unicode", text, MUG_CHOICES)
    # The scene JSON survives anything in its strings (tags, fences, quotes); only a tag in the
    # prose before it (`<observe><scene>...`) can change which span is the scene.
    # Published strings are cleaned (safe_text) before they are stripped.
    object_id, predicate = safe_text(object_id).strip(), safe_text(predicate).strip()
    ids = [o.id for o in r.scene_graph.objects]
    relations = [(x.subject, x.predicate, x.object) for x in r.scene_graph.relations]
    if "<" not in observe and object_id and object_id != "b.1":
        assert ids == [object_id, "b.1"]
        assert relations == ([(object_id, predicate, "b.1")] if predicate else [])
    elif "<" not in observe:
        assert ids == ["b.1"]
    # Tags or `Answer:` in the prose sections change how the prose splits: no oracle there.
    tagged = any(t in s.lower() for s in (observe, think, tail) for t in ("<", "answer"))
    if not tagged:
        assert r.answer.option == "B" and r.answer.matched_choice == "behind"
        assert r.observation == safe_text(observe).strip()
        assert r.thought == safe_text(think).strip()


@settings(
    FUZZ,
    max_examples=40,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(seed=st.integers(0, 2**32 - 1), kind=st.sampled_from(["soup", "objects", "think", "answer"]))
def test_long_outputs(seed, kind):
    rng = random.Random(seed)
    size = 100_000
    if kind == "soup":
        text = "".join(rng.choice(FRAGMENTS + ["word "] * 5) for _ in range(size // 4))[:size]
    elif kind == "objects":
        objects = ", ".join(
            f'{{"id": "o.{i}", "bbox": [{rng.randint(-9, 999)}, {rng.randint(0, 999)}, '
            f"{rng.randint(0, 999)}, {rng.choice(['4', 'NaN', '1e999', '[', '3'])}]}}"
            for i in range(size // 45)
        )
        text = output(scene=f'{{"objects": [{objects}]', answer="<answer>(B) behind")
    elif kind == "think":
        text = OBSERVE + "<think>" + "hmm, " * (size // 5) + "</think><answer>B</answer>"
    else:
        text = OBSERVE + THINK + "<answer>(B) " + "behind " * (size // 7)
    r = check("long", text, MUG_CHOICES)
    if kind != "soup":
        assert r.status is ParseStatus.PARTIAL and r.answer.option == "B"


def test_case_count():
    """Guard the documented fuzz volume (only meaningful when the whole module ran)."""
    expected = {"truncation", "tag_soup", "broken_json", "boxes", "unicode", "long"}
    if not expected <= set(CASES):
        import pytest

        pytest.skip("not every fuzz test ran in this session")
    assert sum(CASES.values()) >= 10_000, CASES
