"""The answering and writing sides of bag replay.

`FrameAnswerer` turns one `FrameWork` into a `FrameOutcome`: the model's answers and everything
the live node would publish for them (built by `core.outputs`, the node's own code), serialized
in write order. It writes nothing, so several frames can be answered at once on worker threads.
`OutcomeWriter` writes the outcomes, one after the other in input order, to the output bag, the
JSONL file and the frames directory. No rclpy.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
from rosbags.typesys.store import Typestore

from .bag_io import CAMERA_INFO, COMPRESSED, IMAGE, ReplayOutputs
from .bag_types import BagMessages
from .core.depth import AlignedDepth
from .core.engine import EngineError, Result, SpatialThinkerEngine
from .core.fields import FrameHeader, positions_frame
from .core.images import ImageConversionError, message_to_rgb
from .core.outputs import AnswerOutputs, Request
from .core.scene import SceneGraph
from .core.serialize import result_to_dict
from .core.status import AnswerStatus
from .core.text import one_line
from .replay_config import ReplayConfig, ReplaySummary
from .replay_frames import FrameWork

SCENE_GRAPH = "spatialthinker_ros/msg/SceneGraph"
ANSWER = "spatialthinker_ros/msg/SpatialAnswer"
MARKERS = "visualization_msgs/msg/MarkerArray"
MAX_TRANSFORM_WARNINGS = 5  # frames without the target frame's transform warned of, then counted


@dataclass(frozen=True)
class BagRecord:
    topic: str
    msgtype: str
    data: bytes  # CDR


@dataclass(frozen=True)
class JsonLine:
    text: str  # one JSON record and its newline


@dataclass(frozen=True)
class AnnotatedFrame:
    rgb: np.ndarray
    stamp_ns: int
    camera: str


Output = BagRecord | JsonLine | AnnotatedFrame


@dataclass
class FrameOutcome:
    work: FrameWork
    outputs: list[Output] = field(default_factory=list)  # in write order
    warnings: list[str] = field(default_factory=list)
    answered: bool = False
    skipped_bad_image: bool = False
    inference_error: bool = False
    positions: int = 0
    transform_failure: str = ""  # why the target frame's transform was missing


class FrameAnswerer:
    """Answers the questions about one frame (callable from several threads at once)."""

    def __init__(
        self,
        config: ReplayConfig,
        engine: SpatialThinkerEngine,
        store: Typestore,
        stop: threading.Event,
    ) -> None:
        self.config = config
        self.engine = engine
        self.store = store
        self.make = BagMessages(store)
        self.stop = stop  # set: requests in flight give up (Ctrl-C, a failed output)

    def __call__(self, work: FrameWork) -> FrameOutcome:
        c, camera, frame = self.config, work.camera, work.frame
        outcome = FrameOutcome(work)
        at = f"{frame.stamp_ns / 1e9:.3f} s" + (f" of camera {camera.name}" if camera.name else "")
        try:
            rgb = message_to_rgb(frame.msg, frame.msgtype == COMPRESSED,
                                 self.engine.config.max_image_pixels)
        except ImageConversionError as exc:
            outcome.skipped_bad_image = True
            outcome.warnings.append(f"skipped image at {at}: {exc}")
            return outcome
        header = frame.msg.header
        outcome.outputs.append(BagRecord(camera.image, frame.msgtype, frame.raw))
        requests = [
            Request(q, c.choices, request_id=f"{work.seq}-{i}", camera=camera.name)
            for i, q in enumerate(c.questions)
        ]
        try:
            results = self._results(rgb)
        except EngineError as exc:
            outcome.inference_error = True
            outcome.warnings.append(f"inference failed at {at}: {exc}")
            for request in requests:
                answer = AnswerOutputs(self.make, request, header).status(
                    AnswerStatus.INFERENCE_ERROR, one_line(exc)
                )
                outcome.outputs.append(self._record(c.output_topic(camera, "answer"), ANSWER,
                                                    answer))
            return outcome
        depth = None
        if work.depth is not None:
            depth = AlignedDepth(work.depth, work.camera_info, (rgb.shape[1], rgb.shape[0]),
                                 image_frame_id=header.frame_id)
        resolved = work.transform  # --target-frame: looked up by the reader at the image stamp
        transform = None if resolved is None else (lambda: resolved)
        if isinstance(work.transform, str):
            outcome.transform_failure = work.transform
        if work.camera_info_raw is not None:  # Foxglove's 3D panel needs the intrinsics
            outcome.outputs.append(BagRecord(camera.info, CAMERA_INFO, work.camera_info_raw))
        for index, (request, result) in enumerate(zip(requests, results, strict=True)):
            outputs = AnswerOutputs(
                self.make, request, header, depth=depth, camera_info=work.camera_info,
                transform=transform,
            )
            scene, answer = outputs.answer(result)
            if depth is not None and depth.error:
                outcome.warnings.append(f"no 3D positions: {depth.error}")
            note = outputs.note(scene.graph)
            if note:  # as the live node: why objects have no 3D position
                answer.status_message = "; ".join(
                    m for m in (answer.status_message, note) if m
                )
            outcome.positions += sum(o.position is not None for o in scene.graph.objects)
            for kind, msgtype, msg in (
                ("scene_graph", SCENE_GRAPH, scene.scene_graph),
                ("markers", MARKERS, scene.markers),
                ("answer", ANSWER, answer),
            ):
                outcome.outputs.append(self._record(c.output_topic(camera, kind), msgtype, msg))
            if c.jsonl is not None:
                outcome.outputs.append(JsonLine(self._json(work, result, scene.graph, note)))
            if index == 0:  # the debug image shows the first question's answer
                annotated = outputs.annotate(rgb, scene, result)
                debug = outputs.debug_image(annotated)
                outcome.outputs.append(
                    self._record(c.output_topic(camera, "debug_image"), IMAGE, debug)
                )
                if c.save_frames is not None:
                    outcome.outputs.append(AnnotatedFrame(annotated, frame.stamp_ns, camera.name))
        outcome.answered = True
        return outcome

    def _results(self, rgb: np.ndarray) -> list[Result]:
        c = self.config
        if len(c.questions) == 1:
            return [self.engine.answer(rgb, c.questions[0], c.choices or None,
                                       should_stop=self.stop.is_set, stop_after=c.stop_after)]
        # The image and the shared prompt prefix are encoded once for all questions.
        return self.engine.answer_many(rgb, [(q, c.choices) for q in c.questions],
                                       stop_after=c.stop_after, should_stop=self.stop.is_set)

    def _record(self, topic: str, msgtype: str, msg) -> BagRecord:
        return BagRecord(topic, msgtype, self.store.serialize_cdr(msg, msgtype))

    def _json(self, work: FrameWork, result: Result, graph: SceneGraph, note: str) -> str:
        header = work.frame.msg.header
        record = {
            "stamp": work.frame.stamp_ns / 1e9,
            "frame_id": header.frame_id,
            "camera": work.camera.name,
            "target_frame": self.config.target_frame,
            "positions_note": note,
        }
        # The frame the positions are in, named as the SceneGraph message names it.
        frame = positions_frame(graph, FrameHeader.of(header))
        graph = replace(graph, positions_frame_id=frame)
        located = replace(result, reasoning=replace(result.reasoning, scene_graph=graph))
        record.update(result_to_dict(located))
        return json.dumps(record) + "\n"


class OutcomeWriter:
    """Writes outcomes in the order given and counts them in the summary."""

    def __init__(
        self,
        outputs: ReplayOutputs,
        summary: ReplaySummary,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        self.outputs = outputs
        self.summary = summary
        self.warn = warn or summary.warn

    def write(self, outcome: FrameOutcome) -> None:
        s = self.summary
        for text in outcome.warnings:
            self.warn(text)
        s.skipped_bad_image += outcome.skipped_bad_image
        s.inference_errors += outcome.inference_error
        s.positions += outcome.positions
        if outcome.transform_failure and outcome.answered:
            s.transform_failures += 1
            if s.transform_failures <= MAX_TRANSFORM_WARNINGS:
                more = " (further ones are counted)" if (
                    s.transform_failures == MAX_TRANSFORM_WARNINGS) else ""
                self.warn(f"no 3D positions: {outcome.transform_failure}{more}")
        bag_ns = outcome.work.frame.bag_ns
        for output in outcome.outputs:
            if isinstance(output, BagRecord):
                self.outputs.bag.write(output.topic, output.msgtype, bag_ns, output.data)
            elif isinstance(output, JsonLine) and self.outputs.jsonl is not None:
                self.outputs.jsonl.write(output.text)
            elif isinstance(output, AnnotatedFrame) and self.outputs.frames is not None:
                self.outputs.frames.save(output.rgb, output.stamp_ns, output.camera)
        if outcome.answered:
            s.frames_answered += 1
            name = outcome.work.camera.name
            s.answered_by_camera[name] = s.answered_by_camera.get(name, 0) + 1
