"""What the parser found missing or repaired: the notes that become `Reasoning.message`."""

from __future__ import annotations

from collections.abc import Iterable

# Notes beyond this many are summarised as a count; values quoted in notes are cut to this.
MAX_NOTES = 12
MAX_QUOTED_CHARS = 40


def quoted(value: str) -> str:
    """`value` as quoted in a note, cut to MAX_QUOTED_CHARS."""
    if len(value) > MAX_QUOTED_CHARS:
        value = value[: MAX_QUOTED_CHARS - 1] + "\u2026"
    return repr(value)


class Notes:
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
