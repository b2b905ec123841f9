"""The tags of a SpatialThinker output and the sections they delimit.

The known tags are `<observe>`, `<scene>`, `<think>` and `<answer>` and their closing tags,
with a little whitespace allowed. Tag-like text inside a JSON string of a closed <scene> is text,
not a tag (see `TagScanner`). Every tag search is linear in the text (no backtracking regex, no
rescans) and resumable at the end of a growing text (streaming). An open tag's section runs to
the next known tag; a closing tag without its opening takes the text since the previous one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .notes import Notes

SECTIONS = ("observe", "scene", "think", "answer")

# Tags allow a little ASCII whitespace (`< /answer >`); bounded, so a tag is at most
# MAX_TAG_CHARS long and every tag search is linear (and resumable at the end of a growing text).
_S = r"\s{0,16}"
_NAMES = "|".join(SECTIONS)
MAX_TAG_CHARS = 64  # >= len("<" + 16 blanks + "/" + 16 + "observe" + 16 + ">") = 58
_TAG_FLAGS = re.IGNORECASE | re.ASCII
# What may follow `<` in a tag, and what may not (a cheap first test: most `<` fail it).
_TAG_START = r"[\s/ostaOSTA]"
_NOT_TAG_START = r"[^\s/ostaOSTA]"
TAG_RE = re.compile(rf"<(?={_TAG_START}){_S}(?:(/){_S})?({_NAMES}){_S}>", _TAG_FLAGS)
SCENE_CLOSE_RE = re.compile(rf"<{_S}/{_S}scene{_S}>", _TAG_FLAGS)
ANSWER_CLOSE_RE = re.compile(rf"<{_S}/{_S}answer{_S}>", _TAG_FLAGS)
THINK_OR_ANSWER_OPEN_RE = re.compile(rf"<{_S}(?:think|answer){_S}>", _TAG_FLAGS)
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


@dataclass(slots=True)  # thousands of tags: cheap to make
class Tag:
    start: int
    end: int
    name: str
    closing: bool


class TagScanner:
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
        self.tags: list[Tag] = []
        self._pos = 0  # the next tag is searched from here
        self._scanned_until = 0  # scene scans never start before this
        self._scene: Tag | None = None  # the <scene> whose body is being scanned
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
            for match in TAG_RE.finditer(text, self._pos):
                closing, name = match.group(1, 2)
                start, end = match.span()
                tag = Tag(start, end, name.lower(), closing is not None)
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
                return TAG_RE.match(text, pos) or _PENDING  # unsettled `<` (streaming only)
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
            found = TAG_RE.search(text, self._quote_tags_pos, min(n, limit + MAX_TAG_CHARS))
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


def scan_tags(text: str) -> list[Tag]:
    scanner = TagScanner()
    scanner.scan(text, final=True)
    return scanner.tags


def partial_tag_length(text: str) -> int:
    """Length of a tag cut off at the end of `text` (`</ans`), 0 when there is none."""
    start = text.rfind("<", max(0, len(text) - MAX_TAG_CHARS))
    if start >= 0 and _PARTIAL_TAG_RE.fullmatch(text, start):
        return len(text) - start
    return 0


# -------------------------------------------------------------------------------------- sections


@dataclass(slots=True)
class Section:
    name: str
    content: str
    opened: bool  # an opening tag was present
    closed: bool  # the matching closing tag was present


def split_sections(text: str, tags: list[Tag], end: int) -> dict[str, list[Section]]:
    """Every tagged span, in order. An open tag's text runs to the next known tag (or `end`);
    a closing tag without its opening takes the text since the previous known tag."""
    sections: dict[str, list[Section]] = {name: [] for name in SECTIONS}
    consumed_close = -1
    for i, tag in enumerate(tags):
        nxt = tags[i + 1] if i + 1 < len(tags) else None
        if not tag.closing:
            stop = nxt.start if nxt else max(end, tag.end)
            closed = nxt is not None and nxt.name == tag.name and nxt.closing
            if closed:
                consumed_close = i + 1
            sections[tag.name].append(Section(tag.name, text[tag.end : stop], True, closed))
        elif i != consumed_close:
            begin = tags[i - 1].end if i > 0 else 0
            sections[tag.name].append(Section(tag.name, text[begin : tag.start], False, True))
    return sections


def first_complete(found: list[Section]) -> Section | None:
    return next((s for s in found if s.opened and s.closed), found[0] if found else None)


def last_with_content(found: list[Section]) -> Section | None:
    return next((s for s in reversed(found) if s.content.strip()), found[-1] if found else None)


def note_section(section: Section, count: int, notes: Notes) -> None:
    name = section.name
    if not section.opened:
        notes.add(f"missing opening <{name}>")
    elif not section.closed:
        notes.add(f"unclosed <{name}>")
    if count > 1:
        notes.add(f"repeated <{name}>")
