"""Tolerant parser of SpatialThinker output: model text -> `Reasoning`, never an exception.

The model writes `<observe>` text, a `<scene>` JSON scene graph, `<think>` text and
`<answer> (B) text </answer>`. Real outputs drift: tags go missing, stay open or are cut off
(truncation), JSON carries trailing commas, single quotes or comments, boxes arrive as strings
or garbage, answers come wrapped in braces or after `Answer:`. Everything recoverable is
recovered and noted in `Reasoning.message`; `Reasoning.status` says whether the answer is usable
(OK / PARTIAL) or not (PARSE_ERROR).

Guarantees, whatever the text: time linear in its length (no backtracking regex, no rescans,
scene JSON repaired by `lenient_json` on at most `MAX_REPAIR_CHARS` per output), and every string
in the result is valid UTF-8 without NULs or control characters (`text.safe_text`).

One job per module: `tags` (the tags and the sections they delimit), `scene_graph` (scene JSON
-> `SceneGraph`), `answer` (the answer and the choice it matches), `reasoning` (a whole output
-> `Reasoning`), `stream` (`StreamParser` and the stage of a growing text), `notes` (what was
missing or repaired). This module is the public API.
"""

from __future__ import annotations

from .reasoning import parse_output, parse_until_scene
from .scene_graph import (
    MAX_COORD,
    MAX_REPAIR_CHARS,
    MAX_SCENE_CANDIDATES,
    label_of,
    parse_scene_graph,
)
from .stream import StreamParser, answer_closed, scene_closed, stream_stage

__all__ = [
    "MAX_COORD",
    "MAX_REPAIR_CHARS",
    "MAX_SCENE_CANDIDATES",
    "StreamParser",
    "answer_closed",
    "label_of",
    "parse_output",
    "parse_scene_graph",
    "parse_until_scene",
    "scene_closed",
    "stream_stage",
]
