"""Lenient JSON for model-written scene graphs: one pass, linear time, never raises.

Models get JSON wrong in a handful of ways: trailing or missing commas, missing colons, single
quotes, comments, unquoted keys and words, Python literals (`True`, `None`), `NaN`/`Infinity`,
and brackets or strings left open when generation stops. `loads` reads all of them with one
tokenising regex and an explicit stack (no recursion), so its time is proportional to the input
whatever its shape. (json-repair, used before, is pure Python and super-linear on some inputs:
16 KB of `{"a"a"a…"` took 18 s.)

Strings come back as decoded, possibly holding lone surrogates or NULs (`"\\ud800"`): the caller
cleans what it publishes (`core.text.safe_text`).
"""

from __future__ import annotations

import json
import re

__all__ = ["MAX_DEPTH", "loads"]

# Deeper nesting is garbage for a scene graph (it has three levels); parsing stops there.
MAX_DEPTH = 64

# One token per match; possessive quantifiers, so no token is ever re-scanned. A double- or
# single-quoted string ends at its closing quote, or open at the end of its line.
_TOKEN_RE = re.compile(
    r"""\s*+(?:
      ("(?:[^"\\\n]++|\\.)*+"?)
    | ('(?:[^'\\\n]++|\\.)*+'?)
    | (//[^\n]*+|/\*(?:[^*]++|\*(?!/))*+(?:\*/)?)
    | ([-+]?(?:\d++\.?\d*+|\.\d++)(?:[eE][-+]?\d++)?|[-+]?(?:Infinity|NaN)\b)
    | ([^\W\d][\w$.\-]*+)
    | ([{}\[\],:])
    | ([^\s"'/\w{}\[\],:+\-.]++|\S)
    | \Z  # trailing blanks end here (else each of them would start a failing match)
    )""",
    re.VERBOSE,
)
_ESCAPE_RE = re.compile(r"\\(?:u([0-9a-fA-F]{4})|([\s\S]))")
_ESCAPES = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_WORDS: dict[str, object] = {
    "true": True,
    "True": True,
    "false": False,
    "False": False,
    "null": None,
    "None": None,
}
_INTEGER_RE = re.compile(r"[-+]?\d+")
# Decodes a well-formed double-quoted string in C (control characters allowed).
_STRING_DECODER = json.JSONDecoder(strict=False)
_NO_KEY = object()
_STRING_DQ, _STRING_SQ, _COMMENT, _NUMBER, _WORD, _PUNCT, _OTHER = range(1, 8)


def _unescape(match: re.Match[str]) -> str:
    if match.group(1) is not None:
        return chr(int(match.group(1), 16))
    char = match.group(2)
    return _ESCAPES.get(char, char)


def _string(token: str) -> str:
    quote = token[0]
    closed = len(token) > 1 and token.endswith(quote) and not _ends_escaped(token[1:-1])
    body = token[1:-1] if closed else token[1:]
    if "\\" not in body:
        return body
    if quote == '"' and closed:
        try:
            return _STRING_DECODER.decode(token)
        except ValueError:
            pass  # an invalid escape: decoded by hand below
    return _ESCAPE_RE.sub(_unescape, body)


def _ends_escaped(body: str) -> bool:
    """True when `body` ends with an odd run of backslashes (its last quote is escaped)."""
    stripped = body.rstrip("\\")
    return (len(body) - len(stripped)) % 2 == 1


def _number(token: str) -> int | float | str:
    if _INTEGER_RE.fullmatch(token):
        # Python refuses to build ints over 4300 digits; such numbers are garbage boxes anyway.
        return int(token) if len(token) <= 20 else float(token)
    try:
        return float(token)
    except ValueError:
        return token


def _is_open_string(token: str) -> bool:
    return len(token) == 1 or not token.endswith(token[0]) or _ends_escaped(token[1:-1])


def loads(text: str, truncated: bool = False) -> object | None:
    """The JSON value starting at the first token of `text`, read leniently; None when there is
    none. Containers left open are closed. `truncated`: the text was cut off, so a string still
    open at the very end is dropped rather than kept half-written. Text after the value closes
    is ignored."""
    root: object = None
    have_root = False
    stack: list[dict | list] = []
    keys: list[object] = []  # per open container: the key waiting for its value (dicts)
    open_count = {dict: 0, list: 0}  # so a stray closer is found without searching the stack

    for match in _TOKEN_RE.finditer(text):
        group = match.lastindex
        if group is None or group == _COMMENT or group == _OTHER:
            continue
        token = match.group(group)
        if group == _PUNCT:
            if token == "{" or token == "[":
                if len(stack) >= MAX_DEPTH:
                    break
                value: object = {} if token == "{" else []
            elif token == "}" or token == "]":
                wanted = dict if token == "}" else list
                if not open_count[wanted]:
                    continue  # a stray closer
                while True:  # close what is still open inside the container it closes
                    closed = stack.pop()
                    keys.pop()
                    open_count[type(closed)] -= 1
                    if type(closed) is wanted:
                        break
                if not stack:
                    break
                continue
            else:
                if token == "," and stack and type(stack[-1]) is dict:
                    keys[-1] = _NO_KEY  # a key without a value is dropped
                continue
        elif group == _NUMBER:
            value = _number(token)
        elif group == _WORD:
            value = _WORDS.get(token, token)
        else:
            if truncated and match.end() == len(text) and _is_open_string(token):
                break
            value = _string(token)
        # Put the value where the parser stands.
        if not stack:
            if have_root:
                break
            root, have_root = value, True
        else:
            top = stack[-1]
            if type(top) is list:
                top.append(value)
            elif keys[-1] is not _NO_KEY:
                top[keys[-1]] = value  # type: ignore[index]
                keys[-1] = _NO_KEY
            elif not isinstance(value, (dict, list)):
                keys[-1] = value if isinstance(value, str) else json.dumps(value)
            # A container where a key belongs is read (to stay in step) but kept nowhere.
        if type(value) is dict or type(value) is list:
            stack.append(value)  # type: ignore[arg-type]
            keys.append(_NO_KEY)
            open_count[type(value)] += 1
    return root if have_root else None
