"""Adversarial model outputs for the parser: one generator per shape, each `size` characters.

Each shape aims at one way a parser goes super-linear: regex backtracking (escaped quotes,
blank runs after `<`, backticks before blanks), rescans (thousands of tags, a `<scene>` per
string, repeated sections, `Answer:` repeated), the JSON repair (unclosed strings and keys,
deep nesting, stray closers), the scene graph itself (many objects, relations, notes, huge
numbers, long ids) and publishable text (escaped surrogates and NULs). Used by
`bench/parser_worst_case.py` (timing) and `test/test_parsing_work.py` (work counts).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable

OUTRO = "</scene><think>t</think><answer>(B) behind</answer>"


def fill(unit: str, size: int, head: str = "", tail: str = "") -> str:
    """`head`, as many `unit`s as fit, `tail`: `size` characters (a cut unit at the end)."""
    room = max(0, size - len(head) - len(tail))
    body = unit * (room // max(1, len(unit)) + 1)
    return head + body[:room] + tail


def _objects(size: int, broken: bool = False, relations: bool = False) -> str:
    """A scene graph of about `size` characters: objects (trailing commas when `broken`), and
    relations between them filling half of it when `relations`."""
    comma = "," if broken else ""
    count = max(2, size // (96 if relations else 48))
    objects = ", ".join(
        f'{{"id": "obj.{i}", "bbox": [{i % 640}, {i % 480}, {i % 640 + 9}, {i % 480 + 9}]{comma}}}'
        for i in range(count)
    )
    links = ""
    if relations:
        links = (
            ', "relationships": ['
            + ", ".join(
                f'{{"subject": "obj.{i % count}", "predicate": "left of", '
                f'"object": "obj.{(i + 1) % count}"}}'
                for i in range(size // 150)
            )
            + "]"
        )
    return f'<scene>{{"objects": [{objects}]{links}}}{OUTRO}'


def _soup(size: int) -> str:
    rng = random.Random(size)
    fragments = [
        "<scene>", "</scene>", "<answer>", "</answer>", "<think>", "<observe>", '"', '\\"',
        "{", "}", "[", "]", ",", ":", "Answer:", "(B)", "```", "  ", "\n", "<", "</", "'",
        "/*", "//", '"id"', '"bbox"', "9" * 30, "\\ud800",
    ]  # fmt: skip
    parts: list[str] = []
    length = 0
    while length < size:
        part = rng.choice(fragments)
        parts.append(part)
        length += len(part)
    return "".join(parts)[:size]


SHAPES: dict[str, Callable[[int], str]] = {
    # Scene scanning: strings, quotes and tags.
    "escaped quotes in <scene>": lambda n: fill('\\"', n, "<scene>"),
    "escaped quotes in a closed string": lambda n: fill('\\"', n, '<scene>{"a": "', '"}' + OUTRO),
    "quotes in <scene>": lambda n: fill('"', n, "<scene>"),
    "quote then a long line": lambda n: fill("a", n, '<scene>{"a": "', OUTRO),
    "<scene> tags": lambda n: fill("<scene>", n),
    "<scene> inside strings": lambda n: fill('"<scene>" ', n, "<scene>"),
    "</scene> inside strings": lambda n: fill('"</scene>", ', n, '<scene>{"a": [', "]}" + OUTRO),
    "alternating <scene> and quotes": lambda n: fill('<scene>"', n),
    "unclosed quotes with tags": lambda n: fill('"x <think>\n', n, "<scene>"),
    "every tag": lambda n: fill(
        "<observe></observe><scene></scene><think></think><answer></answer>", n
    ),
    "tag-like text": lambda n: fill("< /scene ", n),
    "< runs": lambda n: fill("<", n, "<scene>"),
    "< then blanks": lambda n: fill(" ", n, "<scene><", "x"),
    "</ then blanks": lambda n: fill(" ", n, "<scene></", "x"),
    "blank lines": lambda n: fill("\n", n, "<scene>{"),
    # Sections and answers.
    "repeated sections": lambda n: fill("<observe>o</observe><think>t</think>", n),
    "broken scenes repeated": lambda n: fill("<scene>{{{</scene>", n),
    "empty scenes repeated": lambda n: fill('<scene>{"objects": []}</scene>', n),
    "Answer: repeated": lambda n: fill("Answer: ", n),
    "Answer then blanks": lambda n: fill(" ", n, "<think>Answer", "x"),
    "answer of blanks": lambda n: fill(" ", n, "<answer>", "x"),
    "answer of parens": lambda n: fill("(", n, "<answer>"),
    "answer of options": lambda n: fill("(B) ", n, "<answer>"),
    "answer of mixed options": lambda n: fill("(A) (B) ", n, "<answer>"),
    "answer of braces": lambda n: fill("{", n, "<answer>"),
    "untagged answer text": lambda n: fill("x ", n, "</think>", "(B)"),
    # Scene JSON and its repair.
    "many objects": lambda n: _objects(n),
    "many objects, trailing commas": lambda n: _objects(n, broken=True),
    "objects and relations": lambda n: _objects(n, relations=True),
    "truncated scene": lambda n: _objects(n)[: -len(OUTRO) - 2],
    "deep brackets": lambda n: fill("[", n, "<scene>", OUTRO),
    "deep objects": lambda n: fill('{"a": ', n, "<scene>", OUTRO),
    "stray closers": lambda n: fill("]", n, "<scene>{" + "[" * 63, OUTRO),
    "unclosed keys": lambda n: fill('"a', n, "<scene>{", '"' + OUTRO),
    "single quotes": lambda n: fill("'", n, "<scene>{", OUTRO),
    "comments": lambda n: fill("/*", n, "<scene>{", OUTRO),
    "bare words": lambda n: fill("abc ", n, "<scene>{", OUTRO),
    "commas": lambda n: fill(",", n, "<scene>[", OUTRO),
    "huge number": lambda n: fill(
        "9", n, '<scene>{"objects": [{"id": "a.1", "bbox": [', ", 1, 2, 3]}]}" + OUTRO
    ),
    "huge number, broken JSON": lambda n: fill(
        "9", n, '<scene>{"objects": [{"id": "a.1", "bbox": [', ", 1, 2, 3],}]}" + OUTRO
    ),
    "fence then blanks": lambda n: fill(" ", n, "<scene>```", "x" + OUTRO),
    "fences and blanks": lambda n: fill("```   ", n, "<scene>{", OUTRO),
    "long id": lambda n: fill(
        "a.", n, '<scene>{"objects": [{"id": "', '1", "bbox": [1, 2, 3, 4]}]}' + OUTRO
    ),
    "many notes": lambda n: fill(
        '{"id": "' + "x" * 60 + '"}, ', n, '<scene>{"objects": [', "]}" + OUTRO
    ),
    # Text that cannot be published as is.
    "escaped surrogates": lambda n: fill(
        "\\ud800", n, '<scene>{"objects": [{"id": "', '", "bbox": [1, 2, 3, 4]}]}' + OUTRO
    ),
    "escaped NULs, broken JSON": lambda n: fill(
        "\\u0000", n, '<scene>{"objects": [{"id": "', '", "bbox": [1, 2, 3, 4],}]}' + OUTRO
    ),
    "raw surrogates and controls": lambda n: fill("\ud800\x00\x1b", n, "<observe>", OUTRO),
    "random soup": _soup,
}


def generate(shape: str, size: int) -> str:
    return SHAPES[shape](size)


if __name__ == "__main__":  # a quick look at every shape
    for name in SHAPES:
        print(f"{name:36s} {json.dumps(generate(name, 120))[:100]}")
