"""One request, run on the inference worker thread: newest frame -> engine -> outputs.

The scene graph is published as soon as `</scene>` closes (before the answer exists), its 3D
positions lifted once; the answer reuses it. Every job ends in exactly one SpatialAnswer, whatever
fails (frame, model, publishing); the worker publishes it on `answer` and the waiting caller
returns it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rclpy.lifecycle import LifecycleNode

from spatialthinker_ros.msg import SpatialAnswer as SpatialAnswerMsg

from ..core.images import ImageConversionError
from ..core.outputs import AnswerOutputs, MarkerSource, Request
from ..core.scene import SceneGraph
from ..core.status import AnswerStatus
from ..core.text import one_line
from ..core.transforms import RigidTransform
from ..core.types import BackendBusy, BackendTimeout, InvalidQuestion
from . import topics
from .conversions import image_msg_to_rgb, rclpy_message
from .diagnostics import ServingStats
from .frames import Frame
from .intake import Camera, CameraIntake
from .params import NodeSettings
from .publishing import Publishers
from .transforms import TargetFrame
from .worker import FeedbackEvent, Job, Stage, StageTracker, StopReason


@dataclass(frozen=True)
class AskRequest:
    """One question to answer about one camera's newest frame."""

    question: str
    choices: tuple[str, ...]
    max_image_age_s: float
    request_id: str
    camera: str = ""  # "" = the first camera
    not_before_s: float = 0.0  # answer about a frame stamped at or after this (0: any)
    stop_after: str = ""  # "" = full answer; "scene_graph"
    standing: bool = False

    @property
    def echo(self) -> Request:
        return Request(self.question, self.choices, self.request_id, self.camera)


def is_out_of_memory(exc: BaseException) -> bool:
    return "out of memory" in str(exc).lower()


class Answerer:
    """Runs jobs for the worker (see the module doc)."""

    def __init__(self, node: LifecycleNode, intake: CameraIntake, publishers: Publishers,
                 stats: ServingStats, now_s: Callable[[], float]) -> None:
        self._node = node
        self._intake = intake
        self._publishers = publishers
        self._stats = stats
        self._now_s = now_s
        self.engine: Any = None  # set on configure, None after cleanup
        self.settings: NodeSettings | None = None
        self.target_frame: TargetFrame | None = None  # set on configure with a target_frame
        # Called with the camera and frame a standing question is answered about (the standing
        # question skips frames it already answered).
        self.on_standing_frame: Callable[[str, Frame], None] = lambda camera, frame: None
        # Named cameras share the markers topic: each has its own namespaces (core.outputs).
        self._marker_sources = {name: MarkerSource(name) for name in intake.cameras if name}

    def camera(self, name: str) -> Camera | None:
        """The camera `name` names ("" = the first), None when there is none."""
        return self._intake.camera(name)

    def camera_name(self, name: str) -> str:
        """The name a request's `camera` stands for: "" is the first camera; an unknown name
        stays as it is (admission answers INVALID_REQUEST naming the cameras)."""
        return name or self._intake.camera("").name

    def status(self, request: AskRequest, status: AnswerStatus, message: str,
               header: Any = None, **extra: Any) -> SpatialAnswerMsg:
        """A SpatialAnswer without a model answer for `request`; `message` made one safe line
        (it may echo what the caller sent)."""
        return AnswerOutputs(rclpy_message, request.echo, header).status(
            status, one_line(message), **extra)

    def frame_problem(self, request: AskRequest, frame: Frame | None = None
                      ) -> tuple[AnswerStatus, str, Any] | None:
        """(status, reason, header) when `request` cannot be answered about `frame` (default:
        its camera's newest) for lack of a usable frame (unknown camera, none yet, stale,
        stamped ahead, stamped before the request's not_before); None when it can."""
        settings = self.settings
        camera = self._intake.camera(request.camera)
        if camera is None:
            known = ", ".join(repr(n) for n in self._intake.cameras)
            asked = one_line(repr(request.camera), max_chars=80)
            return (AnswerStatus.INVALID_REQUEST, f"unknown camera {asked}; cameras: {known}",
                    None)
        if frame is None:
            frame = camera.images.peek()
        if frame is None:
            return AnswerStatus.NO_IMAGE, "no camera image received yet", None
        reason = frame.unusable_reason(self._now_s(), request.max_image_age_s,
                                       settings.max_future_stamp_s if settings else 0.5)
        if reason is None and frame.stamp_s < request.not_before_s:
            # Admission saw a frame at or after not_before; a newer one stamped earlier came
            # since (a driver restart, a time step, a looping bag).
            reason = (f"newest image is stamped {request.not_before_s - frame.stamp_s:.3f} s "
                      f"before the request's not_before (the camera's stamps went back)")
        if reason is not None:
            return AnswerStatus.STALE_IMAGE, reason, frame.message.header
        return None

    def run(self, job: Job) -> SpatialAnswerMsg:
        """Always returns an answer."""
        request: AskRequest = job.payload
        try:
            return self._run(job, request)
        except Exception as exc:  # noqa: BLE001 - the worker must survive anything
            message = one_line(f"{type(exc).__name__}: {exc}")
            self._node.get_logger().error(f"inference failed: {message}")
            return self.status(request, AnswerStatus.INFERENCE_ERROR, message)

    def _run(self, job: Job, request: AskRequest) -> SpatialAnswerMsg:
        engine, settings = self.engine, self.settings
        if engine is None or settings is None or not engine.loaded:
            return self.status(request, AnswerStatus.INFERENCE_ERROR, "the model is not loaded")
        camera = self._intake.camera(request.camera)
        # The frame answered about is the one checked: a newer one may arrive meanwhile.
        frame = camera.images.peek() if camera is not None else None
        problem = self.frame_problem(request, frame)
        if problem is not None:
            return self.status(request, *problem)
        camera.images.mark_used(frame)
        header = frame.message.header
        if request.standing:
            self.on_standing_frame(camera.name, frame)
        try:
            rgb = image_msg_to_rgb(frame.message, settings.engine.max_image_pixels)
        except ImageConversionError as exc:
            self._stats.image_error()
            camera.converted(one_line(exc))
            self._node.get_logger().warning(f"bad camera frame: {exc}", throttle_duration_sec=5.0)
            return self.status(request, AnswerStatus.INFERENCE_ERROR,
                               one_line(f"camera image could not be converted: {exc}"), header)
        camera.converted()
        source_size = (int(rgb.shape[1]), int(rgb.shape[0]))
        depth = None
        if settings.use_depth:
            depth = camera.aligned_depth(frame.stamp_s, settings.depth_stamp_tolerance_s,
                                         source_size, settings.engine.max_image_pixels,
                                         header.frame_id)
        outputs = AnswerOutputs(rclpy_message, request.echo, header, depth=depth,
                                camera_info=camera.camera_info,
                                marker_source=self._marker_sources.get(camera.name),
                                transform=self._transform_source(header, settings))
        stream = _Stream(job, outputs, self._publishers)
        job.feedback.push(FeedbackEvent(Stage.OBSERVING, ""))
        t0 = time.monotonic()
        try:
            result = engine.answer(rgb, request.question, request.choices or None,
                                   on_text=stream.on_text, on_scene_graph=stream.on_scene_graph,
                                   should_stop=job.should_stop, stop_after=request.stop_after)
        except Exception as exc:  # noqa: BLE001 - EngineError, GenerationStopped, OOM, bugs
            return self._failed(job, request, exc, outputs, stream.text,
                                time.monotonic() - t0)
        latency = time.monotonic() - t0
        self._stats.inference(latency)
        streamed = outputs.streamed
        scene, answer = outputs.answer(result)
        if depth is not None:
            note = outputs.note(scene.graph)
            if note:
                answer.status_message = "; ".join(m for m in (answer.status_message, note) if m)
        if scene is not streamed:  # `</scene>` never closed, or the final graph differs
            self._publish_scene(outputs, scene)
        job.feedback.push(FeedbackEvent(Stage.ANSWERED, ""))
        debug_topic = camera.topic(topics.DEBUG_IMAGE)
        if settings.publish_debug_image and self._publishers.subscribers(debug_topic) > 0:
            self._publish_debug_image(debug_topic, outputs, rgb, scene, result)
        return answer

    def _transform_source(self, header: Any, settings: NodeSettings
                          ) -> Callable[[], RigidTransform | str] | None:
        """The lookup of target_frame <- the image's frame at its stamp, run by AnswerOutputs
        on this (the worker) thread when positions are first placed; None without a target."""
        target = self.target_frame
        if target is None:
            return None
        frame, sec, nanosec = str(header.frame_id), header.stamp.sec, header.stamp.nanosec
        return lambda: target.resolve(frame, sec, nanosec, settings.transform_timeout_s)

    def _publish_scene(self, outputs: AnswerOutputs, scene) -> None:
        self._publishers.publish_scene(scene, outputs)

    def _publish_debug_image(self, topic: str, outputs: AnswerOutputs, rgb, scene,
                             result) -> None:
        try:
            image = outputs.debug_image(outputs.annotate(rgb, scene, result))
        except Exception as exc:  # noqa: BLE001 - the debug image never fails an answer
            self._node.get_logger().warning(f"debug image failed: {exc}",
                                            throttle_duration_sec=5.0)
            return
        if self._publishers.publish(topic, image):
            self._stats.debug_image()

    def _failed(self, job: Job, request: AskRequest, exc: Exception, outputs: AnswerOutputs,
                text: str, elapsed_s: float) -> SpatialAnswerMsg:
        reason = job.stop_reason
        if reason is StopReason.TIMEOUT:
            status, message = AnswerStatus.TIMEOUT, f"no answer within timeout_s = " \
                f"{job.timeout_s:g} s"
        elif reason is StopReason.CANCELED:
            status, message = AnswerStatus.CANCELED, "canceled while the model was generating"
        elif isinstance(exc, InvalidQuestion):  # the engine's own check (same rule as admission)
            status, message = AnswerStatus.INVALID_REQUEST, one_line(exc)
        elif isinstance(exc, BackendBusy):  # a server's 429/503: the client retries BUSY
            status, message = AnswerStatus.BUSY, one_line(exc)
        elif isinstance(exc, BackendTimeout):
            status, message = AnswerStatus.TIMEOUT, one_line(exc)
        else:
            status, message = AnswerStatus.INFERENCE_ERROR, one_line(str(exc) or
                                                                     type(exc).__name__)
            self._node.get_logger().error(f"inference failed: {message}",
                                          throttle_duration_sec=5.0)
            if is_out_of_memory(exc) and self.engine is not None:
                release = getattr(self.engine, "release_memory", None)
                if release is not None:
                    release()
        return outputs.status(status, message, raw_output=text, inference_time_s=elapsed_s)


class _Stream:
    """The engine's streaming callbacks for one job (worker thread): the scene graph published
    as soon as it is complete, action feedback as text deltas."""

    def __init__(self, job: Job, outputs: AnswerOutputs, publishers: Publishers) -> None:
        self._job = job
        self._outputs = outputs
        self._publishers = publishers
        self._stage = StageTracker()
        self._parts: list[str] = []

    @property
    def text(self) -> str:
        return "".join(self._parts)

    def on_text(self, delta: str) -> None:
        self._parts.append(delta)
        stage = self._stage.feed(delta)
        self._job.feedback.push(FeedbackEvent(stage, delta), coalesce=True)

    def on_scene_graph(self, graph: SceneGraph, observation: str) -> None:
        scene = self._outputs.scene(graph, observation)
        self._publishers.publish_scene(scene, self._outputs)
        self._job.feedback.push(FeedbackEvent(Stage.SCENE_GRAPH_READY, "", scene.scene_graph))
