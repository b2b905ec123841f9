"""The errors of bag replay's input and outputs, each with a message for the user."""

from __future__ import annotations


class ReplayError(RuntimeError):
    """A problem with the input bag or an output path, with a message for the user (exit 2)."""


class OutputError(RuntimeError):
    """Writing an output failed mid-run (disk full, ...): the run stops, the outputs closed."""


class BagCutShort(RuntimeError):
    """The input ends inside a record or without its footer (the recorder was killed)."""
