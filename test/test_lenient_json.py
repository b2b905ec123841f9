"""lenient_json: what models get wrong in JSON, read in one linear pass, never raising.

Cases per run (derandomized hypothesis): 1,500 valid JSON documents (same value as json.loads),
2,000 mutated documents and 1,000 arbitrary texts (never raises), plus the exact cases below.
"""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spatialthinker_ros.core.lenient_json import MAX_DEPTH, loads

FUZZ = settings(deadline=None)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ('{"a": [1, 2,], "b": {"c": 3,},}', {"a": [1, 2], "b": {"c": 3}}),  # trailing commas
        ("{'a': 'it\\'s', 'b': \"q\"}", {"a": "it's", "b": "q"}),  # single quotes
        ('{\n// note\n"a": 1, /* two */ "b": 2}', {"a": 1, "b": 2}),  # comments
        ('{"a": 1 "b": [1 2 3]}', {"a": 1, "b": [1, 2, 3]}),  # missing commas
        ('{"a" 1, "b" "x"}', {"a": 1, "b": "x"}),  # missing colons
        ("{a: 1, cup.1: x_y, b-2: -3}", {"a": 1, "cup.1": "x_y", "b-2": -3}),  # unquoted words
        ("[True, False, None, true, null]", [True, False, None, True, None]),
        (
            "[1.5, -2e3, +4, .5, 5., 12345678901234567890123]",
            [1.5, -2000.0, 4.0, 0.5, 5.0, 1.2345678901234568e22],
        ),
        ('{"a": [1, {"b": 2', {"a": [1, {"b": 2}]}),  # left open
        ('{"a": 1}} trailing [2]', {"a": 1}),  # text after the value
        ('{"a": [1, 2]]]], "b": 3}', {"a": [1, 2], "b": 3}),  # stray closers
        ('{"a": {"b": 1]}', {"a": {"b": 1}}),  # a mismatched closer is stray
        ('{"a":, "b": 2}', {"b": 2}),  # a key without its value
        ('{{"x": 1} "a": 2}', {"a": 2}),  # a container where a key belongs is read, not kept
        # A string ends at its line: a missing quote garbles that line only.
        ('{"a": "one\nline", "b": 2}', {"a": "one", "line": ", ", "b": ": 2}"}),
        ('{"a": "x, "b": 2,\n"c": 3}', {"a": "x, ", "b": ": 2,", "c": 3}),
        ('{"a": "\\u0041\\n\\q\\ud800"}', {"a": "A\nq\ud800"}),  # escapes (invalid ones too)
        ('{"a": "x\\', {"a": "x"}),
        ("", None),
        ("   ", None),
        ("=== ;;;", None),
        ("{{{{", {}),
    ],
)
def test_repairs(text, value):
    assert loads(text) == value


def test_nan_and_infinity():
    value = loads("[NaN, Infinity, -Infinity, +Infinity]")
    assert isinstance(value, list) and math.isnan(value[0])
    assert value[1:] == [math.inf, -math.inf, math.inf]


def test_truncated_drops_a_string_cut_at_the_end():
    assert loads('{"id": "cup.1", "label": "mu', truncated=True) == {"id": "cup.1"}
    assert loads('{"id": "cup.1", "label": "mu') == {"id": "cup.1", "label": "mu"}
    # A string that closed is kept, even at the very end.
    assert loads('["a", "b"', truncated=True) == ["a", "b"]
    assert loads('["a", "b\\"', truncated=True) == ["a"]


def test_nesting_deeper_than_max_depth_stops_the_parse():
    value = loads("[" * (MAX_DEPTH + 10) + "1" + "]" * (MAX_DEPTH + 10))
    depth = 0
    while isinstance(value, list) and value:
        value, depth = value[0], depth + 1
    assert depth == MAX_DEPTH - 1  # the innermost list kept is empty


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**18), 10**18)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(FUZZ, max_examples=1500)
@given(value=JSON, ascii_only=st.booleans(), indent=st.sampled_from([None, 1]))
def test_valid_json_reads_as_json_loads(value, ascii_only, indent):
    text = json.dumps(value, ensure_ascii=ascii_only, indent=indent)
    if isinstance(value, (dict, list)) or "\n" not in text:
        assert loads(text) == json.loads(text)


@settings(FUZZ, max_examples=2000)
@given(
    value=JSON,
    cuts=st.lists(
        st.tuples(st.floats(0, 1), st.sampled_from(list(",:'\"[]{}/*\\\n")), st.integers(0, 3)),
        max_size=5,
    ),
    truncated=st.booleans(),
)
def test_mutated_json_never_raises(value, cuts, truncated):
    text = json.dumps(value)
    for where, piece, drop in cuts:
        at = int(where * len(text))
        text = text[:at] + piece + text[at + drop :]
    result = loads(text, truncated=truncated)
    assert result is None or isinstance(result, (dict, list, str, int, float, bool))


@settings(FUZZ, max_examples=1000)
@given(text=st.text(max_size=80), truncated=st.booleans())
def test_any_text_never_raises(text, truncated):
    loads(text, truncated=truncated)
