"""The scene graph of a <scene> section: scene JSON -> `SceneGraph`, every string cleaned.

Plain JSON is read first (any size); broken JSON (trailing commas, single quotes, comments, a
Markdown fence, truncation) is repaired by `lenient_json` on at most `MAX_REPAIR_CHARS` per
output. Boxes arrive as lists or strings of four numbers and stay in the model's frame (the size
stated in the prompt; the engine maps them to source pixels); unusable boxes, ids and relations
are dropped with a note. A scene section is parsed once per output (`SceneCache`), also when it
was streamed.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

from .. import lenient_json
from ..scene import Box, Relation, SceneGraph, SceneObject
from ..text import safe_text
from .notes import Notes, quoted
from .tags import Section, first_complete, note_section, scan_tags, split_sections

# Coordinates beyond this are garbage (Qwen2.5-VL sees at most ~16k pixels a side).
MAX_COORD = 1.0e6
# Broken scene JSON repaired per output, in characters (lenient_json is a Python loop, about
# 1 us a token; a real scene graph is 1-4 KB, and valid JSON of any size needs no repair).
MAX_REPAIR_CHARS = 8_192
# Complete <scene> sections tried for a scene graph with objects (a model repeating sections
# is looping: the first few are what it meant).
MAX_SCENE_CANDIDATES = 4

_BOX_SPLIT_RE = re.compile(r"[\s,;]+")
_BOX_KEYS = ("bbox", "bbox_2d", "box")
_PREDICATE_KEYS = ("predicate", "relation", "rel")
_RELATION_KEYS = ("relationships", "relations")


def _parse_json_int(digits: str) -> int | float:
    # Python refuses to build ints over 4300 digits; such numbers are garbage boxes anyway.
    return int(digits) if len(digits) <= 20 else float(digits)


_DECODER = json.JSONDecoder(parse_int=_parse_json_int)


def _strip_fence(text: str) -> str:
    """The text inside a Markdown code fence around the whole scene JSON (```json ... ```);
    backticks elsewhere (inside its strings) stay."""
    body = text.strip()
    if body.startswith("```"):
        body = body[3:]
        if body[:4].lower() == "json":
            body = body[4:]
        body = body.lstrip(" \t")
        body = body[1:] if body.startswith("\n") else body
    if body.endswith("```"):
        body = body[:-3]
    return body


def _load_scene_json(
    content: str, truncated: bool, repair_limit: int, notes: Notes
) -> tuple[object | None, int]:
    """(value, characters repaired). Plain JSON first (fast path, any size); lenient_json on at
    most `repair_limit` characters when that fails. `truncated`: the section never closed, so
    whatever follows the last `}` was cut off mid-way."""
    text = _strip_fence(content) if "```" in content else content
    starts = [i for i in (text.find("{"), text.find("[")) if i >= 0]
    if not starts:
        notes.add("empty <scene>" if not text.strip() else "no JSON in <scene>")
        return None, 0
    start = min(starts)
    try:
        value, end = _DECODER.raw_decode(text, start)
        if text[end:].strip():
            notes.add("ignored text after scene JSON")
        return value, 0
    except (ValueError, RecursionError):
        pass
    if repair_limit <= 0:
        notes.add("unparseable scene JSON (not repaired: repair budget spent)")
        return None, 0
    snippet = text[start : start + repair_limit]
    over_limit = len(text) - start > repair_limit
    cut = truncated or over_limit
    if cut:
        # Keep only what closed: a cut-off `[64, 120, 25` must not become a box ending at 25.
        snippet = snippet[: snippet.rfind("}") + 1]
        if over_limit:
            notes.add(f"repaired only the first {repair_limit} characters of the scene JSON")
    value = lenient_json.loads(snippet, truncated=cut)
    if isinstance(value, (dict, list)) and value:
        notes.add("repaired scene JSON")
        return value, len(snippet)
    notes.add("unparseable scene JSON")
    return None, len(snippet)


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


def _clean(value: str) -> str:
    """A string from the scene JSON, made publishable and stripped."""
    return safe_text(value).strip()


def _object_id(value: object) -> str:
    if isinstance(value, str):
        return _clean(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return ""


def label_of(object_id: str) -> str:
    """`cup.1` -> `cup`, `red_cup.12` -> `red_cup`; an id without `.N` is its own label."""
    head, dot, number = object_id.rpartition(".")
    return head if dot and head and number.isdecimal() else object_id


def _parse_objects(raw: object, notes: Notes) -> tuple[SceneObject, ...]:
    if raw is None:
        notes.add("scene has no objects")
        return ()
    if not isinstance(raw, list):
        notes.add("scene objects are not a list")
        return ()
    # Ids are cleaned before they are compared: two ids that differ only in characters
    # safe_text replaces are the same published id (the first is kept).
    ids = [_object_id(item.get("id")) if isinstance(item, dict) else "" for item in raw]
    explicit = set(ids)
    next_number: dict[str, int] = {}
    objects: dict[str, SceneObject] = {}
    for item, object_id in zip(raw, ids, strict=True):
        if not isinstance(item, dict):
            notes.add("dropped object that is not a JSON object")
            continue
        label = item.get("label")
        if not object_id and isinstance(label, str) and _clean(label):
            # Qwen2.5-VL's own grounding shape, {"bbox_2d": [...], "label": "cup"}: `cup.N`.
            label = _clean(label)
            number = next_number.get(label, 1)
            while f"{label}.{number}" in explicit or f"{label}.{number}" in objects:
                number += 1
            next_number[label] = number + 1
            object_id = f"{label}.{number}"
            notes.add(f"named objects without id after their label ({quoted(object_id)})")
        if not object_id:
            notes.add("dropped object without id")
            continue
        if object_id in objects:
            notes.add(f"duplicate object id {quoted(object_id)} (kept the first)")
            continue
        box_value = next((item[k] for k in _BOX_KEYS if k in item), None)
        box, why = _parse_box(box_value)
        if why:
            dropped = " (dropped the box)" if box is None else ""
            notes.add(f"{why} for {quoted(object_id)}{dropped}")
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
    raw_lists: Iterable[object], known_ids: set[str], notes: Notes
) -> tuple[Relation, ...]:
    relations: dict[Relation, None] = {}
    for raw in raw_lists:
        if not isinstance(raw, list):
            notes.add("scene relations are not a list")
            continue
        for item in raw:
            fields = _relation_fields(item)
            cleaned = [_clean(f) for f in fields if isinstance(f, str)] if fields else []
            if len(cleaned) != 3 or not all(cleaned):
                notes.add("dropped malformed relation")
                continue
            subject, predicate, obj = cleaned
            unknown = [i for i in (subject, obj) if i not in known_ids]
            if unknown:
                notes.add(f"dropped relation naming unknown id {quoted(unknown[0])}")
                continue
            relation = Relation(subject, predicate, obj)
            if relation in relations:
                notes.add("dropped duplicate relation")
                continue
            relations[relation] = None
    return tuple(relations)


@dataclass(frozen=True)
class SceneResult:
    """One <scene> section parsed: its graph, what was repaired or dropped, and how many
    characters `lenient_json` read."""

    graph: SceneGraph
    notes: tuple[str, ...]
    repaired_chars: int


def parse_scene_section(content: str, truncated: bool, repair_limit: int) -> SceneResult:
    """The scene graph of one <scene> section's text (the one place scene JSON is read)."""
    notes = Notes()
    value, repaired = _load_scene_json(content, truncated, repair_limit, notes)
    graph = SceneGraph()
    if isinstance(value, list):
        notes.add("scene JSON is a bare list of objects")
        value = {"objects": value}
    if isinstance(value, dict):
        objects = _parse_objects(value.get("objects"), notes)
        relation_lists = [value[k] for k in _RELATION_KEYS if k in value]
        relations = _parse_relations(relation_lists, {o.id for o in objects}, notes)
        graph = SceneGraph(objects=objects, relations=relations)
    elif value is not None:
        notes.add("scene JSON is not an object")
    return SceneResult(graph, notes.items(), repaired)


class SceneCache:
    """Scene sections parsed so far, by content: a stream parses its scene once, when
    `</scene>` closes, and the final parse of the whole output reuses it."""

    def __init__(self) -> None:
        self._results: dict[tuple[str, bool, int], SceneResult] = {}

    def parse(self, section: Section, repair_limit: int) -> SceneResult:
        key = (section.content, section.closed, repair_limit)
        result = self._results.get(key)
        if result is None:
            result = parse_scene_section(section.content, not section.closed, repair_limit)
            self._results[key] = result
        return result


def select_scene(found: list[Section], notes: Notes, cache: SceneCache) -> SceneGraph:
    """The first complete <scene> (the first at all when none closed); when it has no objects,
    one of the next complete ones that has some. At most MAX_REPAIR_CHARS are repaired in all."""
    first = first_complete(found)
    if first is None:
        notes.add("missing <scene>")
        return SceneGraph()
    note_section(first, len(found), notes)
    later = (s for s in found if s.opened and s.closed and s is not first)
    candidates = [first, *itertools.islice(later, MAX_SCENE_CANDIDATES - 1)]
    budget = MAX_REPAIR_CHARS
    fallback: SceneResult | None = None
    for section in candidates:
        result = cache.parse(section, budget)
        budget -= result.repaired_chars
        if result.graph.objects:
            notes.extend(result.notes)
            return result.graph
        fallback = fallback or result
    assert fallback is not None
    notes.extend(fallback.notes)
    return fallback.graph


def parse_scene_graph(text: str) -> SceneGraph:
    """The scene graph in (possibly partial, streamed) text; empty when there is none yet."""
    try:
        clean = safe_text(text)
        tags = scan_tags(clean)
        section = first_complete(split_sections(clean, tags, len(clean))["scene"])
        if section is None:
            return SceneGraph()
        return parse_scene_section(section.content, not section.closed, MAX_REPAIR_CHARS).graph
    except Exception:
        return SceneGraph()
