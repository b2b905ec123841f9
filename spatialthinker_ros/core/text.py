"""Untrusted text made safe for every output: ROS strings, bags, JSONL, PNG labels and logs.

Text from a model, a server, a bag or a user may hold lone surrogates (`"\\ud800"` decodes to
one from plain-ASCII JSON), NULs (C strings end there) or other control characters. None of
them can be serialised as a ROS string or written as UTF-8. `safe_text` is the one place that
replaces them; everything that builds an output calls it.
"""

from __future__ import annotations

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


def one_line(text: object, max_chars: int = 300) -> str:
    """A safe single line of at most `max_chars` characters (status messages, log lines)."""
    flat = " ".join(safe_text(text).split())
    return flat if len(flat) <= max_chars else flat[: max_chars - 1] + "\u2026"
