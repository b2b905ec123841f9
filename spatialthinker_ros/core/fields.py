"""Helpers every message factory's output shares (no rclpy): headers, durations, the float32 and
uint32 limits of message fields, the frame of a graph's positions. See core.outputs."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .scene import SceneGraph

MessageFactory = Callable[..., Any]  # make(msgtype: str, **fields) -> message

_FLOAT32_MAX = 3.4028234e38
_UINT32_MAX = 2**32 - 1
_INT32_MAX = 2**31 - 1


@dataclass(frozen=True)
class FrameHeader:
    """The source image's std_msgs/Header as plain values (read from rclpy or rosbags)."""

    sec: int = 0
    nanosec: int = 0
    frame_id: str = ""

    @classmethod
    def of(cls, header: Any) -> FrameHeader:
        if header is None:
            return cls()
        if isinstance(header, FrameHeader):
            return header
        return cls(int(header.stamp.sec), int(header.stamp.nanosec), str(header.frame_id))

    @property
    def stamp_s(self) -> float:
        return self.sec + self.nanosec * 1e-9


def header_msg(make: MessageFactory, header: FrameHeader) -> Any:
    stamp = make("builtin_interfaces/msg/Time", sec=header.sec, nanosec=header.nanosec)
    return make("std_msgs/msg/Header", stamp=stamp, frame_id=header.frame_id)


def duration_fields(seconds: float) -> tuple[int, int]:
    """Seconds -> (sec, nanosec): negative and NaN become 0, huge values saturate."""
    if math.isnan(seconds) or seconds <= 0.0:
        return 0, 0
    if seconds >= _INT32_MAX:
        return _INT32_MAX, 999_999_999
    whole = int(seconds)
    nanosec = int(round((seconds - whole) * 1e9))
    if nanosec >= 1_000_000_000:  # rounding carried into the next second
        whole, nanosec = whole + 1, 0
    return whole, nanosec


def duration_msg(make: MessageFactory, seconds: float) -> Any:
    sec, nanosec = duration_fields(seconds)
    return make("builtin_interfaces/msg/Duration", sec=sec, nanosec=nanosec)


def finite(values: Sequence[float]) -> bool:
    """All finite and within float32 (what a message field can carry)."""
    return all(math.isfinite(v) and abs(v) <= _FLOAT32_MAX for v in values)


def uint32(value: int) -> int:
    return min(max(int(value), 0), _UINT32_MAX)


def positions_frame(graph: SceneGraph, header: FrameHeader) -> str:
    """The frame of the graph's positions and sizes: its positions_frame_id ("" = the image's
    own, header.frame_id); "" when no object has a position."""
    if not any(o.position is not None and finite(o.position) for o in graph.objects):
        return ""
    return graph.positions_frame_id or header.frame_id


def positions_header(graph: SceneGraph, header: FrameHeader) -> FrameHeader:
    """The image's header with the frame of the graph's positions (the image's stamp: the
    transform was taken at it)."""
    return FrameHeader(header.sec, header.nanosec, graph.positions_frame_id or header.frame_id)
