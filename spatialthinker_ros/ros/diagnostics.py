"""Serving counters and the /diagnostics statuses: one for inference (the serving figures, frames
of all cameras summed) and one per camera (its frames and the age of its newest one)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

from ..core.status import AnswerStatus
from ..core.text import one_line
from .intake import CameraReport


@dataclass
class _Counts:
    answers: dict[int, int] = field(default_factory=dict)  # status -> count
    inferences: int = 0  # model calls that returned text (any parse status)
    image_errors: int = 0
    debug_images: int = 0
    publish_failures: int = 0
    questions_refused: int = 0  # invalid questions on the `question` topic (logged throttled)
    latency_last_s: float = 0.0
    latency_sum_s: float = 0.0
    last_error: str = ""


class ServingStats:
    """Thread-safe counters behind /diagnostics."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = _Counts()

    def answered(self, status: int, message: str = "") -> None:
        with self._lock:
            c = self._counts
            c.answers[status] = c.answers.get(status, 0) + 1
            if status in (AnswerStatus.INFERENCE_ERROR, AnswerStatus.TIMEOUT):
                c.last_error = one_line(message)

    def inference(self, latency_s: float) -> None:
        with self._lock:
            c = self._counts
            c.inferences += 1
            c.latency_last_s = latency_s
            c.latency_sum_s += latency_s

    def image_error(self) -> None:
        with self._lock:
            self._counts.image_errors += 1

    def debug_image(self) -> None:
        with self._lock:
            self._counts.debug_images += 1

    def publish_failure(self, message: str) -> None:
        with self._lock:
            self._counts.publish_failures += 1
            self._counts.last_error = one_line(message)

    def question_refused(self) -> int:
        """Count an invalid question from the `question` topic; the count so far."""
        with self._lock:
            self._counts.questions_refused += 1
            return self._counts.questions_refused

    def error(self, message: str) -> None:
        with self._lock:
            self._counts.last_error = one_line(message)

    def snapshot(self) -> dict[str, Any]:
        """The counters as plain values, named as /diagnostics reports them."""
        with self._lock:
            c = self._counts
            answers = dict(c.answers)
            counts = (c.inferences, c.image_errors, c.debug_images, c.publish_failures,
                      c.latency_last_s, c.latency_sum_s, c.last_error)
            questions_refused = c.questions_refused
        inferences, image_errors, debug_images, publish_failures, last, total, last_error = counts
        s = AnswerStatus
        parse_failures = answers.get(s.PARSE_ERROR, 0)
        return {
            "answers_ok": answers.get(s.OK, 0),
            "answers_partial": answers.get(s.PARTIAL, 0),
            "parse_failures": parse_failures,
            "parse_failure_rate": parse_failures / inferences if inferences else 0.0,
            "inferences": inferences,
            "inference_errors": answers.get(s.INFERENCE_ERROR, 0),
            "timeouts": answers.get(s.TIMEOUT, 0),
            "canceled": answers.get(s.CANCELED, 0),
            "busy": answers.get(s.BUSY, 0),
            "stale_image": answers.get(s.STALE_IMAGE, 0),
            "no_image": answers.get(s.NO_IMAGE, 0),
            "invalid_requests": answers.get(s.INVALID_REQUEST, 0),
            "image_conversion_errors": image_errors,
            "debug_images": debug_images,
            "publish_failures": publish_failures,
            "questions_refused": questions_refused,
            "latency_last_s": last,
            "latency_mean_s": total / inferences if inferences else 0.0,
            "last_error": last_error,
        }


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return one_line(value, max_chars=500)


def camera_status(node_name: str, report: CameraReport, *, active: bool, state: str,
                  max_image_age_s: float) -> DiagnosticStatus:
    """`<node>: camera <name>` (`<node>: camera` for the unnamed one): WARN while active with no
    frame yet, a newest frame older than max_image_age_s (a stopped camera), or when the last
    frame the model took up could not be converted (a wrong encoding); OK otherwise."""
    name = f"{node_name}: camera {report.name}" if report.name else f"{node_name}: camera"
    status = DiagnosticStatus(name=name, hardware_id=report.topic)
    age = report.newest_frame_age_s
    if not active:
        status.level, status.message = DiagnosticStatus.OK, state
    elif age is None:
        status.level, status.message = DiagnosticStatus.WARN, "no frame received yet"
    elif age > max_image_age_s:
        status.level = DiagnosticStatus.WARN
        status.message = (f"stale: newest frame {age:.1f} s old "
                          f"(max_image_age_s {max_image_age_s:g})")
    elif report.conversion_error:
        status.level = DiagnosticStatus.WARN
        status.message = f"frames cannot be converted: {report.conversion_error}"
    else:
        status.level, status.message = DiagnosticStatus.OK, "receiving"
    values = {
        "camera": report.name,
        "topic": report.topic,
        "frames_received": report.frames_received,
        "frames_dropped": report.frames_dropped,
        "newest_frame_age_s": "none" if age is None else age,
        "conversion_errors": report.conversion_errors,
    }
    status.values = [KeyValue(key=k, value=_format_value(v)) for k, v in values.items()]
    return status


def diagnostic_array(name: str, values: dict[str, Any], *, config_error: str, active: bool,
                     state: str, stamp: Any,
                     cameras: Sequence[DiagnosticStatus] = ()) -> DiagnosticArray:
    """The inference DiagnosticStatus (ERROR when configure failed, WARN after inference errors
    or timeouts, OK otherwise; every figure as a key/value), then the cameras' statuses."""
    status = DiagnosticStatus(name=name, hardware_id=f"{values.get('backend', '')}:"
                                                     f"{values.get('device', '')}")
    if config_error:
        status.level, status.message = DiagnosticStatus.ERROR, one_line(config_error)
    elif not active:
        status.level, status.message = DiagnosticStatus.OK, state
    elif values.get("last_error"):
        status.level = DiagnosticStatus.WARN
        status.message = one_line(
            f"{values['inference_errors']} inference errors, {values['timeouts']} timeouts; "
            f"last: {values['last_error']}"
        )
    else:
        status.level, status.message = DiagnosticStatus.OK, "serving"
    status.values = [KeyValue(key=k, value=_format_value(v)) for k, v in values.items()]
    array = DiagnosticArray(status=[status, *cameras])
    array.header.stamp = stamp
    return array
