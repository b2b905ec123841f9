"""What a planner gets back from the node: one SpatialAnswer message as core values, its JSON
form, and the one error type the planner client raises. No rclpy here (the client converts the
message in `ros.conversions`; the LLM tool runner and py_trees behaviour read these)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .fields import positions_frame
from .outputs import FrameHeader
from .scene import SceneGraph, SceneObject
from .serialize import scene_graph_to_dict
from .status import RETRYABLE, AnswerStatus

# The status name an error carries when the node never answered (no server, goal rejected).
UNAVAILABLE = "UNAVAILABLE"


@dataclass(frozen=True)
class SpatialResult:
    """One answer about one camera frame (the fields of msg/SpatialAnswer.msg)."""

    status: AnswerStatus
    status_message: str = ""
    question: str = ""
    choices: tuple[str, ...] = ()
    option: str = ""  # "B"; "" when the model gave no letter
    answer_text: str = ""  # "behind"
    matched_choice: str = ""  # the entry of `choices` the answer matched, "" when none
    matched_index: int = -1  # its index in `choices`, -1 when none
    reasoning: str = ""
    observation: str = ""
    # Objects (boxes in source-image pixels, positions and sizes in metres in
    # `positions_frame_id`) and relations.
    scene_graph: SceneGraph = field(default_factory=SceneGraph)
    header: FrameHeader = field(default_factory=FrameHeader)  # the source image's stamp, frame
    camera: str = ""
    request_id: str = ""
    model: str = ""
    prompt_version: str = ""
    raw_output: str = ""
    inference_time_s: float = 0.0
    generated_tokens: int = 0

    @property
    def answered(self) -> bool:
        """The model gave an answer a planner can act on (OK or PARTIAL)."""
        return self.status in (AnswerStatus.OK, AnswerStatus.PARTIAL)

    @property
    def positions_frame_id(self) -> str:
        """The frame of every object's position and size: the node's target_frame (base_link,
        odom, ...) or, without one, the camera's optical frame (header.frame_id); "" when no
        object has a position."""
        return positions_frame(self.scene_graph, self.header)

    def find(self, id_or_label: str) -> SceneObject | None:
        """The object with this id ("cup.1"), else the first with this label ("cup")."""
        found = self.scene_graph.object_by_id(id_or_label)
        if found is None:
            found = next((o for o in self.scene_graph.objects if o.label == id_or_label), None)
        return found


class SpatialThinkerError(Exception):
    """An ask that ended without a usable answer.

    `status`: the node's answer status (INVALID_REQUEST, INFERENCE_ERROR, CANCELED, PARSE_ERROR;
    a retryable one when the retry deadline passed; TIMEOUT when the client's own timeout_s
    passed), or None when the node never answered (no action server, goal rejected).
    `result`: the node's answer when there was one. `attempts`: goals sent.
    """

    def __init__(self, status: AnswerStatus | None, message: str,
                 result: SpatialResult | None = None, attempts: int = 0) -> None:
        super().__init__(f"{status.name if status is not None else UNAVAILABLE}: {message}")
        self.status = status
        self.message = message
        self.result = result
        self.attempts = attempts

    @property
    def status_name(self) -> str:
        return self.status.name if self.status is not None else UNAVAILABLE

    @property
    def retryable(self) -> bool:
        """Asking again later may give another outcome (see core.status.RETRYABLE)."""
        return self.status is None or self.status in RETRYABLE


def result_to_json(result: SpatialResult) -> dict[str, Any]:
    """A plain-JSON dict of `result` for an LLM or a log (no raw output: it repeats the rest)."""
    return {
        "status": result.status.name,
        "status_message": result.status_message,
        "question": result.question,
        "choices": list(result.choices),
        "option": result.option,
        "answer": result.answer_text,
        "matched_choice": result.matched_choice,
        "matched_index": result.matched_index,
        "observation": result.observation,
        "reasoning": result.reasoning,
        "scene_graph": {**scene_graph_to_dict(result.scene_graph),
                        "positions_frame_id": result.positions_frame_id},
        "positions_frame_id": result.positions_frame_id,
        "frame_id": result.header.frame_id,
        "stamp_s": result.header.stamp_s,
        "camera": result.camera,
        "request_id": result.request_id,
        "model": result.model,
        "prompt_version": result.prompt_version,
    }


def error_to_json(error: SpatialThinkerError) -> dict[str, Any]:
    return {"error": error.message, "status": error.status_name, "retryable": error.retryable}
