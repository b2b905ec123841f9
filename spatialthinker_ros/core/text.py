"""Untrusted text made safe for every output: ROS strings, bags, JSONL, PNG labels and logs.

Text from a model, a server, a bag or a user may hold lone surrogates (`"\\ud800"` decodes to
one from plain-ASCII JSON), NULs (C strings end there) or other control characters. None of
them can be serialised as a ROS string or written as UTF-8. `safe_text` is the one place that
replaces them; everything that builds an output calls it.
"""

from __future__ import annotations

import json
import re

REPLACEMENT = "\ufffd"
# Lone surrogates (invalid in UTF-8), NUL and the C0/C1 controls except tab, newline and
# carriage return (model text keeps its line breaks).
_UNSAFE = re.compile("[\ud800-\udfff\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def safe_text(text: object) -> str:
    """`text` as a str that encodes to valid UTF-8 and holds no NUL or control characters
    (replaced by U+FFFD). Linear time; returns the same object when nothing needs replacing."""
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    if text.isascii() and text.isprintable():
        return text
    return _UNSAFE.sub(REPLACEMENT, text)


# Credentials that servers, URLs or exceptions may carry into a message.
_CREDENTIALS = (
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+"), r"\1 [redacted]"),
    (re.compile(r"(?i)\b(authorization|proxy-authorization|x-api-key|api[-_]?key|token|"
                r"password|secret)(\s*[:=]\s*)(\"[^\"]*\"|'[^']*'|[^\s,;&'\"}]+)"),
     r"\1\2[redacted]"),
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s:@]*:[^/\s@]*@"), r"\1[redacted]@"),
    (re.compile(r"\bsk-[A-Za-z0-9_-]{8,}"), "[redacted]"),
)


def redact_credentials(text: str) -> str:
    """`text` with bearer tokens, authorization headers, api keys and URL user:password parts
    replaced by [redacted]."""
    for pattern, replacement in _CREDENTIALS:
        text = pattern.sub(replacement, text)
    return text


def one_line(text: object, max_chars: int = 300) -> str:
    """A safe single line of at most `max_chars` characters, credentials redacted: what status
    messages, diagnostics and log lines carry."""
    flat = redact_credentials(" ".join(safe_text(text).split()))
    return flat if len(flat) <= max_chars else flat[: max_chars - 1] + "\u2026"


def safe_fields(fields: dict[str, object]) -> dict[str, object]:
    """Message fields with every string (and every string in a list) made safe: what the
    message factories of `core.outputs` apply to everything they build."""
    out = {}
    for name, value in fields.items():
        if isinstance(value, str):
            value = safe_text(value)
        elif isinstance(value, (list, tuple)) and value and isinstance(value[0], str):
            value = [safe_text(v) for v in value]
        out[name] = value
    return out


def loads_json(text: str | bytes) -> object:
    """json.loads for text from a user, a file, a server or an LLM: every failure is a
    ValueError, nesting too deep for the decoder included (json raises RecursionError there)."""
    try:
        return json.loads(text)
    except RecursionError as exc:
        raise ValueError("JSON nested too deeply") from exc


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # terminal colours in torch's messages


def first_useful_line(exc: BaseException) -> str:
    """The line of an exception's message that says what went wrong: colours stripped, a line
    ending in ':' joined with the next, a bare short message (KeyError('x')) with its type."""
    lines = [ln.strip() for ln in _ANSI.sub("", str(exc)).splitlines() if ln.strip()]
    first_line = " ".join(lines[:2] if lines and lines[0].endswith(":") else lines[:1])
    if len(first_line) < 12:
        first_line = f"{type(exc).__name__}: {first_line}".rstrip(": ")
    return first_line
