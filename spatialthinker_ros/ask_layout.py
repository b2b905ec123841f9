"""The text layout of `spatialthinker-ros ask`, one set of line builders for the local model's
Result and the live node's SpatialResult (`ask --node`), so both print alike:

    question: ...            question_lines
    choices:  ...
    observation: ...         scene_lines (the live node: as soon as the scene graph arrives)
    scene graph (W x H px):
      <id> <label> [box] [at (x, y, z) m]
      <subject> --<predicate>--> <object>
    answer:   (A) ...        answer_lines
    matched:  ...
    status:   ...
    <how it was answered>    the local model's tokens and timings, or the node's camera, stamp
                             and latency

Every piece of text is passed through `core.text.safe_text` (a model's or a node's text may hold
terminal control characters). No rclpy here.
"""

from __future__ import annotations

from collections.abc import Sequence

from .core.scene import ParseStatus, SceneGraph
from .core.status import AnswerStatus
from .core.text import safe_text


def question_lines(question: str, choices: Sequence[str]) -> list[str]:
    lines = [f"question: {safe_text(question)}"]
    if choices:
        lines.append("choices:  " + ", ".join(safe_text(c) for c in choices))
    return lines


def scene_lines(observation: str, graph: SceneGraph) -> list[str]:
    """The observation (one line) and the scene graph: objects with boxes in source-image
    pixels (and 3D positions where the node had depth), then relations."""
    lines = []
    if observation.strip():
        lines.append(f"observation: {' '.join(safe_text(observation).split())}")
    lines.append(f"scene graph ({graph.image_width} x {graph.image_height} px):")
    for o in graph.objects:
        box = (
            "no box"
            if o.box is None
            else "[" + ", ".join(f"{v:.0f}" for v in o.box.as_list()) + "]"
        )
        where = "" if o.position is None else (
            " at (" + ", ".join(f"{v:.2f}" for v in o.position) + ") m")
        lines.append(f"  {safe_text(o.id):<16} {safe_text(o.label):<12} {box}{where}")
    for rel in graph.relations:
        lines.append(f"  {safe_text(rel.subject)} --{safe_text(rel.predicate)}--> "
                     f"{safe_text(rel.object)}")
    return lines


def answer_lines(option: str, text: str, choices: Sequence[str], matched_choice: str,
                 status: AnswerStatus | ParseStatus, message: str,
                 stop_after: str) -> list[str]:
    """`status` as the local ask has always printed it: ok, partial, parse_error, ... (the
    engine's ParseStatus or the node's AnswerStatus)."""
    answer = safe_text(f"({option}) {text}" if option else text)
    stopped = f" (stopped after the {stop_after.replace('_', ' ')})" if (
        stop_after and not answer) else ""
    lines = [f"answer:   {answer or '-'}{stopped}"]
    if choices:
        lines.append(f"matched:  {safe_text(matched_choice) or '(no choice matched)'}")
    detail = f" ({safe_text(message)})" if message else ""
    lines.append(f"status:   {status.name.lower()}{detail}")
    return lines
