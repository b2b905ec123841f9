"""Tolerant parser of SpatialThinker output: model text -> `Reasoning`, never an exception.

The model writes `<observe>` text, a `<scene>` JSON scene graph, `<think>` text and
`<answer> (B) text </answer>`. Real outputs drift: tags go missing or stay open (truncation),
JSON carries trailing commas, single quotes or comments, boxes arrive as strings or garbage.
Everything recoverable is recovered and noted in `Reasoning.message`; `Reasoning.status` says
whether the answer is usable (OK / PARTIAL) or not (PARSE_ERROR).

Tag-like text inside a JSON string of a closed <scene> is text, not a tag (see `_tags`).
Boxes stay in the model's frame (the size stated in the prompt); the engine maps them to source
pixels. Streaming helpers (`scene_closed`, `parse_scene_graph`, `answer_closed`, `stream_stage`)
work on the text generated so far.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import json_repair

from .scene import (
    Box,
    ParseStatus,
    Reasoning,
    Relation,
    SceneGraph,
    SceneObject,
    SpatialAnswer,
)

__all__ = [
    "answer_closed",
    "parse_output",
    "parse_scene_graph",
    "scene_closed",
    "stream_stage",
]

SECTIONS = ("observe", "scene", "think", "answer")
# Coordinates beyond this are garbage (Qwen2.5-VL sees at most ~16k pixels a side).
MAX_COORD = 1.0e6
# json-repair is pure Python: repair at most this much of a runaway <scene>.
MAX_REPAIR_CHARS = 32_768
# Notes beyond this many are summarised as a count.
MAX_NOTES = 12

# `(?:(/)\s*)?` rather than `(/?)\s*`: two adjacent `\s*` backtrack quadratically on long blanks.
_TAG_RE = re.compile(r"<\s*(?:(/)\s*)?(observe|scene|think|answer)\s*>", re.IGNORECASE)
_SCENE_CLOSE_RE = re.compile(r"<\s*/\s*scene\s*>", re.IGNORECASE)
# Inside <scene>: a one-line JSON string, or a known tag (same groups as `_TAG_RE`).
_SCENE_SCAN_RE = re.compile(r'"(?:[^"\\\n]|\\.)*"|' + _TAG_RE.pattern, re.IGNORECASE)
_ANSWER_CLOSE_RE = re.compile(r"<\s*/\s*answer\s*>", re.IGNORECASE)
_OPEN_RE = {name: re.compile(rf"<\s*{name}\s*>", re.IGNORECASE) for name in ("think", "answer")}
_ANSWER_PREFIX_RE = re.compile(r"\banswer\s*:", re.IGNORECASE)
# A Markdown code fence around the whole scene JSON (not backticks inside its strings).
_FENCE_RE = re.compile(r"^\s*```(?:json)?[ \t]*\n?|\n?[ \t]*```\s*$", re.IGNORECASE)
# `(B) text`, `( b ). text`, `B) text`, `B. text`, `B: text`, `B`.
_LEADING_OPTION_RE = re.compile(
    r"\(\s*([A-Za-z])\s*\)[\s.:)\-]*(.*)|([A-Za-z])\s*(?:[):]|\.(?![A-Za-z0-9]))\s*(.*)|([A-Za-z])",
    re.DOTALL,
)
_EMBEDDED_OPTION_RE = re.compile(r"\(([A-Z])\)")
_LABEL_RE = re.compile(r"^(.+)\.\d+$", re.DOTALL)
_BOX_SPLIT_RE = re.compile(r"[\s,;]+")
_BOX_KEYS = ("bbox", "bbox_2d", "box")
_PREDICATE_KEYS = ("predicate", "relation", "rel")
_RELATION_KEYS = ("relationships", "relations")


def _parse_json_int(digits: str) -> int | float:
    # Python refuses to build ints over 4300 digits; such numbers are garbage boxes anyway.
    return int(digits) if len(digits) <= 20 else float(digits)


_DECODER = json.JSONDecoder(parse_int=_parse_json_int)


class _Notes:
    """What was missing or repaired, in order, without repeats."""

    def __init__(self) -> None:
        self._items: dict[str, None] = {}

    def add(self, note: str) -> None:
        self._items[note] = None

    def extend(self, other: _Notes) -> None:
        self._items.update(other._items)

    def __bool__(self) -> bool:
        return bool(self._items)

    def text(self) -> str:
        items = list(self._items)
        if len(items) > MAX_NOTES:
            rest = len(items) - MAX_NOTES
            items = items[:MAX_NOTES] + [f"and {rest} more"]
        return "; ".join(items)


@dataclass(frozen=True)
class _Section:
    name: str
    content: str
    opened: bool  # an opening tag was present
    closed: bool  # the matching closing tag was present


def _scene_end_outside_strings(text: str, start: int) -> int | None:
    """Start of the `</scene>` closing the scene opened at `start`, skipping tags inside JSON
    strings; None when the first tag outside strings is anything else, or there is none."""
    for match in _SCENE_SCAN_RE.finditer(text, start):
        if match.group(2) is not None:  # a tag, not a string
            closes_scene = bool(match.group(1)) and match.group(2).lower() == "scene"
            return match.start() if closes_scene else None
    return None


def _tags(text: str) -> list[tuple[int, int, str, bool]]:
    """Known tags as (start, end, name, closing). Tag-like text inside a JSON string in <scene>
    (e.g. `"bbox": "<answer>"`) is not a tag when `</scene>` follows outside any string; when
    it does not (an unbalanced quote, truncation), every tag counts, so a stray quote cannot
    swallow the rest of the output."""
    tags: list[tuple[int, int, str, bool]] = []
    skip_until = -1
    for m in _TAG_RE.finditer(text):
        if m.start() < skip_until:
            continue
        name, closing = m.group(2).lower(), bool(m.group(1))
        tags.append((m.start(), m.end(), name, closing))
        if name == "scene" and not closing:
            scene_end = _scene_end_outside_strings(text, m.end())
            skip_until = -1 if scene_end is None else scene_end
    return tags


def _split_sections(text: str) -> dict[str, list[_Section]]:
    """Every tagged span, in order. An open tag's text runs to the next known tag (or the end);
    a closing tag without its opening takes the text since the previous known tag."""
    sections: dict[str, list[_Section]] = {name: [] for name in SECTIONS}
    tags = _tags(text)
    consumed_close = -1
    for i, (start, end, name, closing) in enumerate(tags):
        nxt = tags[i + 1] if i + 1 < len(tags) else None
        if not closing:
            stop = nxt[0] if nxt else len(text)
            closed = nxt is not None and nxt[2] == name and nxt[3]
            if closed:
                consumed_close = i + 1
            sections[name].append(_Section(name, text[end:stop], True, closed))
        elif i != consumed_close:
            begin = tags[i - 1][1] if i > 0 else 0
            sections[name].append(_Section(name, text[begin:start], False, True))
    return sections


def _first_complete(found: list[_Section]) -> _Section | None:
    return next((s for s in found if s.opened and s.closed), found[0] if found else None)


def _last_with_content(found: list[_Section]) -> _Section | None:
    return next((s for s in reversed(found) if s.content.strip()), found[-1] if found else None)


def _note_section(section: _Section, count: int, notes: _Notes) -> None:
    name = section.name
    if not section.opened:
        notes.add(f"missing opening <{name}>")
    elif not section.closed:
        notes.add(f"unclosed <{name}>")
    if count > 1:
        notes.add(f"repeated <{name}>")


# ---------------------------------------------------------------------------------- scene graph


def _load_scene_json(content: str, truncated: bool, notes: _Notes) -> object | None:
    """Plain JSON first (fast path); json-repair only when that fails. `truncated`: the section
    never closed, so whatever follows the last `}` was cut off mid-way."""
    text = _FENCE_RE.sub("", content) if "`" in content else content
    starts = [i for i in (text.find("{"), text.find("[")) if i >= 0]
    if not starts:
        notes.add("empty <scene>" if not text.strip() else "no JSON in <scene>")
        return None
    start = min(starts)
    try:
        value, end = _DECODER.raw_decode(text, start)
        if text[end:].strip():
            notes.add("ignored text after scene JSON")
        return value
    except (ValueError, RecursionError):
        pass
    if truncated:
        # Keep only what closed: a cut-off `[64, 120, 25` must not become a box ending at 25.
        end = text.rfind("}", start, start + MAX_REPAIR_CHARS) + 1
        snippet = text[start:end]
    else:
        snippet = text[start : start + MAX_REPAIR_CHARS]
    try:
        value = json_repair.loads(snippet, skip_json_loads=True)
    except Exception:  # json-repair has its own failure modes (recursion, odd input)
        value = None
    if isinstance(value, (dict, list)) and value:
        notes.add("repaired scene JSON")
        return value
    notes.add("unparseable scene JSON")
    return None


def _as_number(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        try:
            return float(value)
        except OverflowError:
            return math.inf
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def _parse_box(value: object) -> tuple[Box | None, str]:
    """A box from a list/str of 4 numbers, ordered; (None, why) when unusable."""
    if value is None:
        return None, "no box"
    if isinstance(value, str):
        parts = [p for p in _BOX_SPLIT_RE.split(value.strip().strip("[]()")) if p]
    elif isinstance(value, (list, tuple)):
        parts = list(value)
    else:
        return None, "box is not a list"
    if len(parts) != 4:
        return None, f"box with {len(parts)} values"
    numbers = [_as_number(p) for p in parts]
    if any(n is None for n in numbers):
        return None, "box with non-numeric values"
    x1, y1, x2, y2 = (n for n in numbers if n is not None)
    if not all(math.isfinite(n) and abs(n) <= MAX_COORD for n in (x1, y1, x2, y2)):
        return None, "box with non-finite or huge values"
    reordered = x2 < x1 or y2 < y1
    box = Box(min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2))
    return box, "reordered box corners" if reordered else ""


def _object_id(value: object) -> str:
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return ""


def label_of(object_id: str) -> str:
    """`cup.1` -> `cup`, `red_cup.12` -> `red_cup`; an id without `.N` is its own label."""
    match = _LABEL_RE.match(object_id)
    return match.group(1) if match else object_id


def _parse_objects(raw: object, notes: _Notes) -> tuple[SceneObject, ...]:
    if raw is None:
        notes.add("scene has no objects")
        return ()
    if not isinstance(raw, list):
        notes.add("scene objects are not a list")
        return ()
    objects: dict[str, SceneObject] = {}
    for item in raw:
        if not isinstance(item, dict):
            notes.add("dropped object that is not a JSON object")
            continue
        object_id = _object_id(item.get("id"))
        if not object_id:
            notes.add("dropped object without id")
            continue
        if object_id in objects:
            notes.add(f"duplicate object id {object_id!r} (kept the first)")
            continue
        box_value = next((item[k] for k in _BOX_KEYS if k in item), None)
        box, why = _parse_box(box_value)
        if why:
            notes.add(f"{why} for {object_id!r}" + (" (dropped the box)" if box is None else ""))
        objects[object_id] = SceneObject(id=object_id, label=label_of(object_id), box=box)
    return tuple(objects.values())


def _relation_fields(item: object) -> tuple[object, object, object] | None:
    if isinstance(item, dict):
        predicate = next((item[k] for k in _PREDICATE_KEYS if k in item), None)
        return item.get("subject"), predicate, item.get("object")
    if isinstance(item, (list, tuple)) and len(item) == 3:
        return item[0], item[1], item[2]
    return None


def _parse_relations(
    raw_lists: Iterable[object], known_ids: set[str], notes: _Notes
) -> tuple[Relation, ...]:
    relations: dict[Relation, None] = {}
    for raw in raw_lists:
        if not isinstance(raw, list):
            notes.add("scene relations are not a list")
            continue
        for item in raw:
            fields = _relation_fields(item)
            if fields is None or not all(isinstance(f, str) and f.strip() for f in fields):
                notes.add("dropped malformed relation")
                continue
            subject, predicate, obj = (str(f).strip() for f in fields)
            unknown = [i for i in (subject, obj) if i not in known_ids]
            if unknown:
                notes.add(f"dropped relation naming unknown id {unknown[0]!r}")
                continue
            relation = Relation(subject, predicate, obj)
            if relation in relations:
                notes.add("dropped duplicate relation")
                continue
            relations[relation] = None
    return tuple(relations)


def _scene_from_section(section: _Section, notes: _Notes) -> SceneGraph:
    value = _load_scene_json(section.content, not section.closed, notes)
    if value is None:
        return SceneGraph()
    if isinstance(value, list):
        notes.add("scene JSON is a bare list of objects")
        value = {"objects": value}
    if not isinstance(value, dict):
        notes.add("scene JSON is not an object")
        return SceneGraph()
    objects = _parse_objects(value.get("objects"), notes)
    relation_lists = [value[k] for k in _RELATION_KEYS if k in value]
    relations = _parse_relations(relation_lists, {o.id for o in objects}, notes)
    return SceneGraph(objects=objects, relations=relations)


# --------------------------------------------------------------------------------------- answer


def _normalise(text: str) -> str:
    return " ".join(text.split()).rstrip(".").strip().casefold()


def _last_answer_prefix(text: str) -> int:
    """End of the last `Answer:` in `text`, or -1."""
    end = -1
    for match in _ANSWER_PREFIX_RE.finditer(text):
        end = match.end()
    return end


def _after_answer_prefix(text: str) -> str:
    """Text after the last `Answer:` (the reference extraction), or the text itself."""
    last = _last_answer_prefix(text)
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


def _answer_text(text: str, sections: dict[str, list[_Section]], notes: _Notes) -> str:
    """The raw answer: the last non-empty <answer>, else text after the last `Answer:`."""
    found = sections["answer"]
    section = _last_with_content(found)
    answer = " ".join(_after_answer_prefix(section.content).split()) if section else ""
    if section is not None and answer:
        _note_section(section, len(found), notes)
        return answer
    notes.add("empty <answer>" if found else "missing <answer>")
    last = _last_answer_prefix(text)
    if last < 0:
        return ""
    tail = text[last:]
    tag = _TAG_RE.search(tail)
    tail = tail[: tag.start()] if tag else tail
    line = next((ln for ln in tail.splitlines() if ln.strip()), "")
    if line.strip():
        notes.add("used the text after 'Answer:'")
    return " ".join(line.split())


def _parse_answer(raw: str, choices: Sequence[str] | None, notes: _Notes) -> SpatialAnswer:
    if not raw:
        return SpatialAnswer()
    option, text = _split_option(raw)
    if not choices:
        return SpatialAnswer(option=option, text=text)
    normalised = [_normalise(c) for c in choices]
    by_text = normalised.index(_normalise(text)) if text and _normalise(text) in normalised else -1
    if option:
        index = ord(option) - ord("A")
        if index < len(choices):
            if by_text >= 0 and by_text != index:
                notes.add(f"answer text {text!r} is choice {chr(65 + by_text)}, not {option}")
            return SpatialAnswer(option=option, text=text, matched_choice=choices[index])
        notes.add(f"option {option} is not among {len(choices)} choices")
        option, text = "", text or raw
    if by_text >= 0:
        return SpatialAnswer(text=text, matched_choice=choices[by_text])
    notes.add("answer matches no choice")
    return SpatialAnswer(option=option, text=text)


# ------------------------------------------------------------------------------------ public API


def parse_output(text: str, choices: Sequence[str] | None = None) -> Reasoning:
    """Parse one model output. Never raises on a str; see `status` and `message`."""
    if not isinstance(text, str):
        raise TypeError(f"model output must be str, got {type(text).__name__}")
    try:
        return _parse_output(text, choices)
    except Exception as exc:  # a parser bug must not take the node down
        return Reasoning(
            raw=text,
            status=ParseStatus.PARSE_ERROR,
            message=f"parser error: {type(exc).__name__}: {exc}",
        )


def _parse_output(text: str, choices: Sequence[str] | None) -> Reasoning:
    notes = _Notes()
    sections = _split_sections(text)
    observation = _prose("observe", sections["observe"], notes)
    graph = _scene(sections["scene"], notes)
    thought = _prose("think", sections["think"], notes)
    raw_answer = _answer_text(text, sections, notes)
    answer = _parse_answer(raw_answer, [str(c) for c in choices] if choices else None, notes)
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
        message=message,
    )


def _scene(found: list[_Section], notes: _Notes) -> SceneGraph:
    """The first complete <scene> (the first at all when none closed); when it has no objects,
    a later complete one that has some."""
    first = _first_complete(found)
    if first is None:
        notes.add("missing <scene>")
        return SceneGraph()
    _note_section(first, len(found), notes)
    candidates = [first] + [s for s in found if s.opened and s.closed and s is not first]
    fallback: tuple[SceneGraph, _Notes] | None = None
    for section in candidates:
        section_notes = _Notes()
        graph = _scene_from_section(section, section_notes)
        if graph.objects:
            notes.extend(section_notes)
            return graph
        fallback = fallback or (graph, section_notes)
    assert fallback is not None
    notes.extend(fallback[1])
    return fallback[0]


def _prose(name: str, found: list[_Section], notes: _Notes) -> str:
    """The text of the first complete <observe>/<think> (or the first one at all)."""
    section = _first_complete(found)
    if section is None:
        notes.add(f"missing <{name}>")
        return ""
    _note_section(section, len(found), notes)
    content = section.content.strip()
    if not content:
        notes.add(f"empty <{section.name}>")
    return content


def scene_closed(text: str) -> bool:
    """True once `</scene>` has been generated (the scene graph can be published). A plain
    search, so it never turns False again as text streams in (even for a `"</scene>"` string)."""
    return _SCENE_CLOSE_RE.search(text) is not None


def answer_closed(text: str) -> bool:
    """True once `</answer>` has been generated."""
    return _ANSWER_CLOSE_RE.search(text) is not None


def parse_scene_graph(text: str) -> SceneGraph:
    """The scene graph in (possibly partial, streamed) text; empty when there is none yet."""
    try:
        section = _first_complete(_split_sections(text)["scene"])
        return _scene_from_section(section, _Notes()) if section else SceneGraph()
    except Exception:
        return SceneGraph()


def stream_stage(text: str) -> str:
    """Where generation is: "observing", "scene_graph_ready", "thinking" or "answered"."""
    if answer_closed(text):
        return "answered"
    if _OPEN_RE["think"].search(text) or _OPEN_RE["answer"].search(text):
        return "thinking"
    if scene_closed(text):
        return "scene_graph_ready"
    return "observing"
