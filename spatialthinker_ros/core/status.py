"""SpatialAnswer statuses: values, which a caller may retry, and how an action goal ends.

The values are `msg/SpatialAnswer.msg`'s STATUS_* constants (a test pins them to the .msg file
and to the generated messages); ROS-free code (replay, the CLI, the client's typed errors) uses
this enum, never bare numbers.
"""

from __future__ import annotations

import enum

from .scene import ParseStatus


class AnswerStatus(enum.IntEnum):
    OK = 0  # answer parsed from a complete, well-formed model output
    PARTIAL = 1  # answer found, but part of the output was missing, repaired or dropped
    PARSE_ERROR = 2  # the model answered but no answer could be read (see raw_output)
    NO_IMAGE = 3  # no camera image has been received yet
    STALE_IMAGE = 4  # the newest image is older than the request allowed (or stamped ahead)
    BUSY = 5  # the model was busy and the request queue full, or the node is not active
    INFERENCE_ERROR = 6  # the model failed (see status_message); the node keeps serving
    TIMEOUT = 7  # no answer within the node's timeout_s
    CANCELED = 8  # the request was canceled (action cancel or node deactivation)
    INVALID_REQUEST = 9  # the request was rejected (question, choices, camera, ...)


# A caller may send the same request again later and expect another outcome.
RETRYABLE = frozenset(
    {AnswerStatus.BUSY, AnswerStatus.NO_IMAGE, AnswerStatus.STALE_IMAGE, AnswerStatus.TIMEOUT}
)
# Statuses that carry a model answer (the action goal succeeds with them).
MODEL_ANSWERED = frozenset({AnswerStatus.OK, AnswerStatus.PARTIAL, AnswerStatus.PARSE_ERROR})

STATUS_OF_PARSE: dict[ParseStatus, AnswerStatus] = {
    ParseStatus.OK: AnswerStatus.OK,
    ParseStatus.PARTIAL: AnswerStatus.PARTIAL,
    ParseStatus.PARSE_ERROR: AnswerStatus.PARSE_ERROR,
}


class GoalOutcome(enum.Enum):
    """How an AskSpatial action goal ends for an answer's status."""

    SUCCEEDED = "succeeded"  # a model answer (OK, PARTIAL, PARSE_ERROR)
    CANCELED = "canceled"  # CANCELED after the client asked to cancel
    ABORTED = "aborted"  # everything else (the result still carries the answer and its status)


def goal_outcome(status: int, cancel_requested: bool) -> GoalOutcome:
    if status in MODEL_ANSWERED:
        return GoalOutcome.SUCCEEDED
    if status == AnswerStatus.CANCELED and cancel_requested:
        return GoalOutcome.CANCELED
    return GoalOutcome.ABORTED


def status_name(status: int) -> str:
    """`"BUSY"` for 5; `"UNKNOWN(42)"` for a value no status has."""
    try:
        return AnswerStatus(status).name
    except ValueError:
        return f"UNKNOWN({status})"
