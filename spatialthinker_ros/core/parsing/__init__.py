"""Tolerant parser of SpatialThinker output: model text -> `Reasoning`, never an exception.

The model writes `<observe>` text, a `<scene>` JSON scene graph, `<think>` text and
`<answer> (B) text </answer>`. Real outputs drift: tags go missing, stay open or are cut off
(truncation), JSON carries trailing commas, single quotes or comments, boxes arrive as strings
or garbage, answers come wrapped in braces or after `Answer:`. Everything recoverable is
recovered and noted in `Reasoning.message`; `Reasoning.status` says whether the answer is usable
(OK / PARTIAL) or not (PARSE_ERROR). Answer extraction follows the authors' evaluation code,
except that an answer matching no choice stays unmatched (docs/model.md).

Guarantees, whatever the text: time linear in its length (no backtracking regex, no rescans,
scene JSON repaired by `lenient_json` on at most `MAX_REPAIR_CHARS` per output), and every string
in the result is valid UTF-8 without NULs or control characters (`text.safe_text`).

Tag-like text inside a JSON string of a closed <scene> is text, not a tag (see `_TagScanner`).
Boxes stay in the model's frame (the size stated in the prompt); the engine maps them to source
pixels. `StreamParser` follows a streamed output: the scene graph once `</scene>` closes, then
the whole `Reasoning` without parsing the scene again; `scene_closed`, `parse_scene_graph`,
`answer_closed` and `stream_stage` answer one-off questions on the text so far.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .. import lenient_json
from ..scene import (
    Box,
    ParseStatus,
    Reasoning,
    Relation,
    SceneGraph,
    SceneObject,
    SpatialAnswer,
)
from ..text import safe_text

__all__ = [
    "StreamParser",
    "answer_closed",
    "parse_output",
    "parse_scene_graph",
    "scene_closed",
    "stream_stage",
]

SECTIONS = ("observe", "scene", "think", "answer")
# Coordinates beyond this are garbage (Qwen2.5-VL sees at most ~16k pixels a side).
MAX_COORD = 1.0e6
# Broken scene JSON repaired per output, in characters (lenient_json is a Python loop, about
# 1 us a token; a real scene graph is 1-4 KB, and valid JSON of any size needs no repair).
MAX_REPAIR_CHARS = 8_192
# Complete <scene> sections tried for a scene graph with objects (a model repeating sections
# is looping: the first few are what it meant).
MAX_SCENE_CANDIDATES = 4
# Notes beyond this many are summarised as a count; values quoted in notes are cut to this.
MAX_NOTES = 12
MAX_QUOTED_CHARS = 40

# Tags allow a little ASCII whitespace (`< /answer >`); bounded, so a tag is at most
# MAX_TAG_CHARS long and every tag search is linear (and resumable at the end of a growing text).
_S = r"\s{0,16}"
_NAMES = "|".join(SECTIONS)
MAX_TAG_CHARS = 64  # >= len("<" + 16 blanks + "/" + 16 + "observe" + 16 + ">") = 58
_TAG_FLAGS = re.IGNORECASE | re.ASCII
# What may follow `<` in a tag, and what may not (a cheap first test: most `<` fail it).
_TAG_START = r"[\s/ostaOSTA]"
_NOT_TAG_START = r"[^\s/ostaOSTA]"
_TAG_RE = re.compile(rf"<(?={_TAG_START}){_S}(?:(/){_S})?({_NAMES}){_S}>", _TAG_FLAGS)
_SCENE_CLOSE_RE = re.compile(rf"<{_S}/{_S}scene{_S}>", _TAG_FLAGS)
_ANSWER_CLOSE_RE = re.compile(rf"<{_S}/{_S}answer{_S}>", _TAG_FLAGS)
_THINK_OR_ANSWER_OPEN_RE = re.compile(rf"<{_S}(?:think|answer){_S}>", _TAG_FLAGS)
# The start of a tag cut off at the end of the text (`</ans`, `<`).
_NAME_PREFIXES = sorted({n[:i] for n in SECTIONS for i in range(1, len(n) + 1)}, key=len)[::-1]
_PARTIAL_TAG_RE = re.compile(rf"<{_S}(?:/{_S})?(?:(?:{'|'.join(_NAME_PREFIXES)}){_S})?", _TAG_FLAGS)
# The rest of a one-line JSON string after its opening quote (possessive: never backtracks).
_STRING_REST_RE = re.compile(r'(?:[^"\\\n]++|\\.)*+')


def _scene_body_re(final: bool) -> re.Pattern[str]:
    """Everything in a <scene> body up to the first tag outside JSON strings, in one possessive
    match: plain text, one-line strings (tags inside are text), a quote that does not close on
    its line (the rest of the line, when no tag is on it), a `<` that starts no tag. With
    `final` False the text is still growing: a `<` closer than a tag's length to the end, and a
    line that has not ended yet, are left for later."""
    tag_rest = rf"{_S}(?:/{_S})?(?:{_NAMES}){_S}>"
    settled = "" if final else rf"(?=[\s\S]{{{MAX_TAG_CHARS - 1}}})"
    not_a_tag = rf"<(?={_NOT_TAG_START})|<{settled}(?!{tag_rest})"
    line_end = r"(?=\n|\Z)" if final else r"(?=\n)"
    return re.compile(
        rf'(?:[^"<]++|"(?:[^"\\\n]++|\\.)*+"|"[^<\n]*+(?:(?:{not_a_tag})[^<\n]*+)*+{line_end}'
        rf"|{not_a_tag})*+",
        _TAG_FLAGS,
    )


_SCENE_BODY_RE = {final: _scene_body_re(final) for final in (False, True)}
_PENDING = object()  # a scan that needs more text

_ANSWER_PREFIX_RE = re.compile(r"\banswer\s*:", re.IGNORECASE)
# `(B) text`, `( b ). text`, `B) text`, `B. text`, `B: text`, `B`.
_LEADING_OPTION_RE = re.compile(
    r"\(\s*([A-Za-z])\s*\)[\s.:)\-]*(.*)|([A-Za-z])\s*(?:[):]|\.(?![A-Za-z0-9]))\s*(.*)|([A-Za-z])",
    re.DOTALL,
)
_EMBEDDED_OPTION_RE = re.compile(r"\(([A-Z])\)")
# Markdown emphasis, code and quotes around a whole answer (`**(B) behind**`, `"B"`).
_ANSWER_WRAPPERS = "*`\"' "
_BOX_SPLIT_RE = re.compile(r"[\s,;]+")
_BOX_KEYS = ("bbox", "bbox_2d", "box")
_PREDICATE_KEYS = ("predicate", "relation", "rel")
_RELATION_KEYS = ("relationships", "relations")


def _parse_json_int(digits: str) -> int | float:
    # Python refuses to build ints over 4300 digits; such numbers are garbage boxes anyway.
    return int(digits) if len(digits) <= 20 else float(digits)


_DECODER = json.JSONDecoder(parse_int=_parse_json_int)


def _quoted(value: str) -> str:
    """`value` as quoted in a note, cut to MAX_QUOTED_CHARS."""
    if len(value) > MAX_QUOTED_CHARS:
        value = value[: MAX_QUOTED_CHARS - 1] + "\u2026"
    return repr(value)


class _Notes:
    """What was missing or repaired, in order, without repeats."""

    def __init__(self, items: Iterable[str] = ()) -> None:
        self._items: dict[str, None] = dict.fromkeys(items)

    def add(self, note: str) -> None:
        self._items[note] = None

    def extend(self, items: Iterable[str]) -> None:
        self._items.update(dict.fromkeys(items))

    def items(self) -> tuple[str, ...]:
        return tuple(self._items)

    def __bool__(self) -> bool:
        return bool(self._items)

    def text(self) -> str:
        items = list(self._items)
        if len(items) > MAX_NOTES:
            rest = len(items) - MAX_NOTES
            items = items[:MAX_NOTES] + [f"and {rest} more"]
        return "; ".join(items)


# ------------------------------------------------------------------------------------------ tags


@dataclass(slots=True)  # thousands of tags: cheap to make
class _Tag:
    start: int
    end: int
    name: str
    closing: bool


class _TagScanner:
    """The known tags of a text, found left to right, also while the text grows (streaming).

    Tag-like text inside a JSON string of a <scene> (`"bbox": "<answer>"`) is not a tag when the
    first tag outside strings after `<scene>` is `</scene>`; when it is anything else (an
    unbalanced quote, truncation), every tag counts, so a stray quote cannot swallow the rest of
    the output. Strings are one-line JSON strings; a quote that does not close on its line hides
    nothing. A part of the text that one scene scan has looked at is never scanned again.

    `scan(text, final=False)` reports only tags that no later text can change and resumes where
    it stopped, so each character is looked at a bounded number of times however the text
    arrives; `scan(text, final=True)` settles the rest (the text is complete).
    """

    def __init__(self) -> None:
        self.tags: list[_Tag] = []
        self._pos = 0  # the next tag is searched from here
        self._scanned_until = 0  # scene scans never start before this
        self._scene: _Tag | None = None  # the <scene> whose body is being scanned
        self._body_pos = 0  # scene body scanned up to here
        self._quote = -1  # >= 0: a quote in the body whose string may still close
        self._quote_rest = 0  # that string scanned up to here
        self._quote_tag: re.Match[str] | None = None  # the first tag on the quote's line
        self._quote_tags_pos = 0  # no tag starts between the quote and here

    def scan(self, text: str, final: bool) -> None:
        tags = self.tags
        while True:
            if self._scene is not None and not self._end_scene(text, final):
                return  # the scene body needs more text
            for match in _TAG_RE.finditer(text, self._pos):
                closing, name = match.group(1, 2)
                start, end = match.span()
                tag = _Tag(start, end, name.lower(), closing is not None)
                tags.append(tag)
                self._pos = end
                if tag.name == "scene" and closing is None and start >= self._scanned_until:
                    self._scene, self._body_pos = tag, end
                    if not self._end_scene(text, final):
                        return
                    if self._pos != end:
                        break  # the scene closed: go on from its `</scene>`
            else:
                if not final:  # a tag may be arriving at the end
                    self._pos = max(self._pos, len(text) - MAX_TAG_CHARS)
                return

    def _end_scene(self, text: str, final: bool) -> bool:
        """Scan the current scene's body; False when it needs more text. When `</scene>` is the
        first tag outside strings, the search for tags goes on from there (tags inside strings
        are text); otherwise every tag counts and no scene scan looks at this stretch again."""
        end = self._scan_body(text, final)
        if end is _PENDING:
            return False
        self._scene = None
        if end is None:
            self._scanned_until = len(text)
        elif end.group(1) and end.group(2).lower() == "scene":  # type: ignore[union-attr]
            self._pos = end.start()  # type: ignore[union-attr]
        else:
            self._scanned_until = end.start()  # type: ignore[union-attr]
        return True

    def _scan_body(self, text: str, final: bool) -> object:
        """The first tag outside strings in the scene body (a match), None when there is none
        up to the end of a final text, or _PENDING."""
        while True:
            if self._quote >= 0:
                result = self._resolve_quote(text, final)
                if result is not None:
                    return result
            pos = _SCENE_BODY_RE[final].match(text, self._body_pos).end()  # type: ignore[union-attr]
            self._body_pos = pos
            if pos == len(text):
                return None if final else _PENDING
            if text[pos] == "<":
                return _TAG_RE.match(text, pos) or _PENDING  # unsettled `<` (streaming only)
            # A quote whose line holds a tag, or (streaming) whose line has not ended yet.
            self._quote, self._quote_rest = pos, pos + 1
            self._quote_tag, self._quote_tags_pos = None, pos

    def _resolve_quote(self, text: str, final: bool) -> object:
        """Follow the open quote: None once it closed or its line holds no tag (scanning goes
        on), the first tag on its line when it never closes, or _PENDING."""
        n = len(text)
        rest = _STRING_REST_RE.match(text, self._quote_rest).end()  # type: ignore[union-attr]
        if rest < n and text[rest] == '"':  # a string after all: the tags inside are text
            self._body_pos, self._quote = rest + 1, -1
            return None
        if rest < n and text[rest] == "\n":
            line_end: int | None = rest
        elif rest + 1 < n:  # a backslash before the newline
            line_end = rest + 1
        elif final:
            line_end = n
        else:
            line_end, self._quote_rest = None, rest
        # The first tag starting on the quote's line, searched as far as the text allows.
        limit = n if line_end is None else line_end
        if self._quote_tag is None:
            found = _TAG_RE.search(text, self._quote_tags_pos, min(n, limit + MAX_TAG_CHARS))
            if found is not None and found.start() < limit:
                self._quote_tag = found
            else:
                settled = limit if final else min(limit, n - MAX_TAG_CHARS + 1)
                self._quote_tags_pos = max(self._quote_tags_pos, settled)
        if line_end is None:
            return _PENDING
        if self._quote_tag is not None:
            self._quote = -1
            return self._quote_tag
        if self._quote_tags_pos < line_end:
            return _PENDING  # a tag may still complete at the start of the next line
        self._body_pos, self._quote = line_end, -1  # the quote hides nothing
        return None


def _scan_tags(text: str) -> list[_Tag]:
    scanner = _TagScanner()
    scanner.scan(text, final=True)
    return scanner.tags


def _partial_tag_length(text: str) -> int:
    """Length of a tag cut off at the end of `text` (`</ans`), 0 when there is none."""
    start = text.rfind("<", max(0, len(text) - MAX_TAG_CHARS))
    if start >= 0 and _PARTIAL_TAG_RE.fullmatch(text, start):
        return len(text) - start
    return 0


# -------------------------------------------------------------------------------------- sections


@dataclass(slots=True)
class _Section:
    name: str
    content: str
    opened: bool  # an opening tag was present
    closed: bool  # the matching closing tag was present


def _split_sections(text: str, tags: list[_Tag], end: int) -> dict[str, list[_Section]]:
    """Every tagged span, in order. An open tag's text runs to the next known tag (or `end`);
    a closing tag without its opening takes the text since the previous known tag."""
    sections: dict[str, list[_Section]] = {name: [] for name in SECTIONS}
    consumed_close = -1
    for i, tag in enumerate(tags):
        nxt = tags[i + 1] if i + 1 < len(tags) else None
        if not tag.closing:
            stop = nxt.start if nxt else max(end, tag.end)
            closed = nxt is not None and nxt.name == tag.name and nxt.closing
            if closed:
                consumed_close = i + 1
            sections[tag.name].append(_Section(tag.name, text[tag.end : stop], True, closed))
        elif i != consumed_close:
            begin = tags[i - 1].end if i > 0 else 0
            sections[tag.name].append(_Section(tag.name, text[begin : tag.start], False, True))
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
    content: str, truncated: bool, repair_limit: int, notes: _Notes
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


def _parse_objects(raw: object, notes: _Notes) -> tuple[SceneObject, ...]:
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
            notes.add(f"named objects without id after their label ({_quoted(object_id)})")
        if not object_id:
            notes.add("dropped object without id")
            continue
        if object_id in objects:
            notes.add(f"duplicate object id {_quoted(object_id)} (kept the first)")
            continue
        box_value = next((item[k] for k in _BOX_KEYS if k in item), None)
        box, why = _parse_box(box_value)
        if why:
            dropped = " (dropped the box)" if box is None else ""
            notes.add(f"{why} for {_quoted(object_id)}{dropped}")
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
            cleaned = [_clean(f) for f in fields if isinstance(f, str)] if fields else []
            if len(cleaned) != 3 or not all(cleaned):
                notes.add("dropped malformed relation")
                continue
            subject, predicate, obj = cleaned
            unknown = [i for i in (subject, obj) if i not in known_ids]
            if unknown:
                notes.add(f"dropped relation naming unknown id {_quoted(unknown[0])}")
                continue
            relation = Relation(subject, predicate, obj)
            if relation in relations:
                notes.add("dropped duplicate relation")
                continue
            relations[relation] = None
    return tuple(relations)


@dataclass(frozen=True)
class _SceneResult:
    graph: SceneGraph
    notes: tuple[str, ...]
    repaired_chars: int


def _parse_scene_section(content: str, truncated: bool, repair_limit: int) -> _SceneResult:
    """The scene graph of one <scene> section's text (the one place scene JSON is read)."""
    notes = _Notes()
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
    return _SceneResult(graph, notes.items(), repaired)


class _SceneCache:
    """Scene sections parsed so far, by content: a stream parses its scene once, when
    `</scene>` closes, and the final parse of the whole output reuses it."""

    def __init__(self) -> None:
        self._results: dict[tuple[str, bool, int], _SceneResult] = {}

    def parse(self, section: _Section, repair_limit: int) -> _SceneResult:
        key = (section.content, section.closed, repair_limit)
        result = self._results.get(key)
        if result is None:
            result = _parse_scene_section(section.content, not section.closed, repair_limit)
            self._results[key] = result
        return result


def _scene(found: list[_Section], notes: _Notes, cache: _SceneCache) -> SceneGraph:
    """The first complete <scene> (the first at all when none closed); when it has no objects,
    one of the next complete ones that has some. At most MAX_REPAIR_CHARS are repaired in all."""
    first = _first_complete(found)
    if first is None:
        notes.add("missing <scene>")
        return SceneGraph()
    _note_section(first, len(found), notes)
    later = (s for s in found if s.opened and s.closed and s is not first)
    candidates = [first, *itertools.islice(later, MAX_SCENE_CANDIDATES - 1)]
    budget = MAX_REPAIR_CHARS
    fallback: _SceneResult | None = None
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


# --------------------------------------------------------------------------------------- answer


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


def _answer_text(
    text: str,
    end: int,
    tags: list[_Tag],
    sections: dict[str, list[_Section]],
    choices: Sequence[str] | None,
    notes: _Notes,
) -> str:
    """The raw answer: the last non-empty <answer>, else the text after the last `Answer:`,
    else untagged text after the last closing tag (or a whole untagged output) that names an
    option or a choice."""
    found = sections["answer"]
    section = _last_with_content(found)
    answer = _clean_answer(_after_answer_prefix(section.content)) if section else ""
    if section is not None and answer:
        _note_section(section, len(found), notes)
        return answer
    notes.add("empty <answer>" if found else "missing <answer>")
    last = _last_answer_prefix(text, end)
    if last >= 0:
        tag = _TAG_RE.search(text, last, end)
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
                notes.add(
                    f"answer text {_quoted(text)} is choice {chr(65 + by_text)}, not {option}"
                )
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
    clean = safe_text(text)
    try:
        return _parse(clean, _scan_tags(clean), choices, _SceneCache())
    except Exception as exc:  # a parser bug must not take the node down
        return _parser_error(clean, exc)


def _parser_error(text: str, exc: Exception) -> Reasoning:
    return Reasoning(
        raw=text,
        status=ParseStatus.PARSE_ERROR,
        message=safe_text(f"parser error: {type(exc).__name__}: {exc}"),
    )


def _parse(
    text: str, tags: list[_Tag], choices: Sequence[str] | None, cache: _SceneCache
) -> Reasoning:
    """Parse a safe_text-clean output whose tags are known."""
    notes = _Notes()
    end = len(text) - _partial_tag_length(text)
    sections = _split_sections(text, tags, end)
    observation = _prose("observe", sections["observe"], notes)
    graph = _scene(sections["scene"], notes, cache)
    thought = _prose("think", sections["think"], notes)
    clean_choices = [safe_text(c) for c in choices] if choices else None
    raw_answer = _answer_text(text, end, tags, sections, clean_choices, notes)
    answer = _parse_answer(raw_answer, clean_choices, notes)
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


class _StageMarks:
    """Which stage markers a growing text holds (the rules of `stream_stage`), searched
    incrementally: each update looks at the new text and a tag's length before it."""

    def __init__(self) -> None:
        self.scene_closed = self.thinking = self.answered = False
        self._searched = 0

    def update(self, text: str) -> None:
        start = max(0, self._searched - MAX_TAG_CHARS)
        self.answered = self.answered or _ANSWER_CLOSE_RE.search(text, start) is not None
        self.thinking = self.thinking or _THINK_OR_ANSWER_OPEN_RE.search(text, start) is not None
        self.scene_closed = self.scene_closed or _SCENE_CLOSE_RE.search(text, start) is not None
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
        self._scanner = _TagScanner()
        self._cache = _SceneCache()
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
                section = _Section("scene", text[opening.end : closing.start], True, True)
                self._scene_graph = self._cache.parse(section, MAX_REPAIR_CHARS).graph
                before = _split_sections(text, tags[: i + 1], closing.end)
                self._scene_observation = _prose("observe", before["observe"], _Notes())
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
            return _parse(self._text, self._scanner.tags, choices, self._cache)
        except Exception as exc:  # a parser bug must not take the node down
            return _parser_error(self._text, exc)


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
        clean = safe_text(text)
        tags = _scan_tags(clean)
        section = _first_complete(_split_sections(clean, tags, len(clean))["scene"])
        if section is None:
            return SceneGraph()
        return _parse_scene_section(section.content, not section.closed, MAX_REPAIR_CHARS).graph
    except Exception:
        return SceneGraph()


def stream_stage(text: str) -> str:
    """Where generation is: "observing", "scene_graph_ready", "thinking" or "answered"."""
    marks = _StageMarks()
    marks.update(text)
    return marks.stage
