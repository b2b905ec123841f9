"""`spatialthinker-ros replay`: the perception pipeline over a rosbag2 (MCAP or sqlite3), no ROS.

Reads camera images (Image or CompressedImage, plus optional aligned depth and CameraInfo matched
by stamp), answers one or more questions on each selected frame, and writes an output bag with
the images used, SceneGraph and SpatialAnswer messages, annotated images and markers, each
stamped with the source image's header; optionally a JSONL of results and the annotated frames.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .arguments import engine_config_from_args, fail
from .bag_io import (
    CAMERA_INFO,
    COMPRESSED,
    IMAGE,
    BagInput,
    OutputError,
    OutputPaths,
    ReplayError,
    ReplayOutputs,
    check_outputs,
    open_bag,
    topic_roles,
)
from .bag_types import BagMessages, make_typestore
from .core.depth import AlignedDepth
from .core.engine import EngineError, Result, SpatialThinkerEngine
from .core.images import ImageConversionError, decode_compressed, image_to_rgb
from .core.outputs import AnswerOutputs, Request
from .core.serialize import result_to_dict
from .core.status import AnswerStatus
from .core.text import one_line

SCENE_GRAPH = "spatialthinker_ros/msg/SceneGraph"
ANSWER = "spatialthinker_ros/msg/SpatialAnswer"
MARKERS = "visualization_msgs/msg/MarkerArray"


@dataclass(frozen=True)
class ReplayConfig:
    in_bag: Path
    out_bag: Path
    image_topic: str
    questions: tuple[str, ...]  # several: the image prefix is shared (engine.answer_many)
    choices: tuple[str, ...] = ()
    depth_topic: str = ""
    camera_info_topic: str = ""
    every: int = 1  # answer every Nth image
    rate_hz: float = 0.0  # or at most this many images per second of bag time (0: off)
    max_frames: int = 0  # 0: all
    storage: str = ""  # mcap | sqlite3; "" = same as the input
    prefix: str = "/spatialthinker"
    jsonl: Path | None = None
    save_frames: Path | None = None
    depth_tolerance_s: float = 0.05
    progress: bool = True

    def __post_init__(self) -> None:
        if self.every < 1 or self.max_frames < 0:
            raise ReplayError(
                f"every must be >= 1 and max_frames >= 0 (0: all), got "
                f"{self.every} and {self.max_frames}"
            )
        if not (math.isfinite(self.rate_hz) and self.rate_hz >= 0):
            raise ReplayError(f"rate_hz must be >= 0 (0: off), got {self.rate_hz}")
        if not (math.isfinite(self.depth_tolerance_s) and self.depth_tolerance_s >= 0):
            raise ReplayError(f"depth_tolerance_s must be >= 0, got {self.depth_tolerance_s}")


@dataclass
class ReplaySummary:
    images_seen: int = 0
    frames_answered: int = 0
    skipped_bad_image: int = 0
    inference_errors: int = 0
    positions: int = 0
    stopped_early: str = ""  # why the input ended before its end ("" when read to the end)
    interrupted: bool = False
    output_error: str = ""  # why writing an output failed mid-run (the run stopped there)
    elapsed_s: float = 0.0
    warnings: list[str] = field(default_factory=list)

    def describe(self) -> str:
        fps = self.frames_answered / self.elapsed_s if self.elapsed_s > 0 else 0.0
        text = (
            f"{self.frames_answered} frames answered of {self.images_seen} images "
            f"({fps:.2f} frames/s), {self.skipped_bad_image} skipped (bad image), "
            f"{self.inference_errors} inference errors, {self.positions} 3D positions"
        )
        if self.stopped_early:
            text += f"; input stopped early: {self.stopped_early}"
        if self.interrupted:
            text += "; interrupted (output bag closed cleanly)"
        if self.output_error:
            text += "; stopped: an output could not be written (output bag closed cleanly)"
        return text


@dataclass
class ReplayInput:
    """The opened input bag and each wanted topic's role, checked with the output paths."""

    bag: BagInput
    roles: dict[str, str]  # topic -> "image" | "depth" | "info"


def prepare_replay(config: ReplayConfig) -> ReplayInput:
    """Open the input, check its topics and every output path: all before a model loads."""
    bag = open_bag(config.in_bag)
    try:
        roles = topic_roles(bag, config.image_topic, config.depth_topic, config.camera_info_topic)
        check_outputs(bag, OutputPaths(config.out_bag, config.jsonl, config.save_frames))
    except BaseException:
        bag.close()
        raise
    return ReplayInput(bag, roles)


@dataclass
class _Frame:
    bag_ns: int
    stamp_ns: int
    msgtype: str
    raw: bytes
    msg: object


def _stamp_ns(header) -> int:
    return int(header.stamp.sec) * 10**9 + int(header.stamp.nanosec)


class _Replayer:
    def __init__(self, config: ReplayConfig, engine: SpatialThinkerEngine):
        self.config = config
        self.engine = engine
        self.store = make_typestore()
        self.make = BagMessages(self.store)
        self.summary = ReplaySummary()
        self.depths: deque[_Frame] = deque(maxlen=64)
        self.camera_info = None
        self.camera_info_raw: bytes | None = None
        self.pending: deque[_Frame] = deque()
        self.last_selected_stamp: int | None = None
        self.selected = 0

    # --- input -------------------------------------------------------------------------------
    def run(self, prepared: ReplayInput | None = None) -> ReplaySummary:
        c = self.config
        t0 = time.perf_counter()
        prepared = prepared or prepare_replay(c)
        bag = prepared.bag
        try:
            storage = c.storage or bag.storage  # the input's storage unless asked
            outputs = ReplayOutputs(
                OutputPaths(c.out_bag, c.jsonl, c.save_frames), storage, self.store
            )
            total = bag.topics[c.image_topic].count
            bar = tqdm(
                total=total if total >= 0 else None,
                unit="img",
                disable=not (c.progress and sys.stderr.isatty()),
                desc="replay",
            )
            try:
                with outputs:
                    self.writer, self.jsonl = outputs.bag, outputs.jsonl
                    self.frames = outputs.frames
                    self._read(bag, prepared.roles, bar)
            except KeyboardInterrupt:
                self.summary.interrupted = True
            except OutputError as exc:
                self.summary.output_error = str(exc)
            finally:
                bar.close()
        finally:
            bag.close()
        self.summary.elapsed_s = time.perf_counter() - t0
        return self.summary

    def _read(self, source: BagInput, roles: dict[str, str], bar) -> None:
        tolerance_ns = int(self.config.depth_tolerance_s * 1e9)
        last_ns, count = 0, 0
        try:
            for topic, msgtype, bag_ns, raw in source.messages(set(roles)):
                count, last_ns = count + 1, bag_ns
                role = roles[topic]
                msg = self.store.deserialize_cdr(raw, msgtype)
                if role == "info":
                    self.camera_info, self.camera_info_raw = msg, raw
                elif role == "depth":
                    self.depths.append(_Frame(bag_ns, _stamp_ns(msg.header), IMAGE, raw, msg))
                else:
                    bar.update(1)
                    self.summary.images_seen += 1
                    frame = _Frame(bag_ns, _stamp_ns(msg.header), msgtype, raw, msg)
                    if self._select(frame):
                        self.pending.append(frame)
                # A frame is answered once depth up to its stamp + tolerance had time to arrive.
                while self.pending and self.pending[0].bag_ns + tolerance_ns < bag_ns:
                    self._answer(self.pending.popleft())
                if self._done():
                    break
        except (KeyboardInterrupt, OutputError):
            raise
        except Exception as exc:  # noqa: BLE001 - truncated or corrupt input: keep what we have
            self.summary.stopped_early = (
                f"after {count} messages (last bag time {last_ns / 1e9:.3f} s): "
                f"{type(exc).__name__}: {exc}"
            )
        while self.pending and not self._done(flushing=True):
            self._answer(self.pending.popleft())

    def _select(self, frame: _Frame) -> bool:
        c = self.config
        index = self.summary.images_seen - 1
        if c.max_frames and self.selected >= c.max_frames:
            return False
        if c.every > 1 and index % c.every:
            return False
        if c.rate_hz > 0 and self.last_selected_stamp is not None:
            if frame.stamp_ns - self.last_selected_stamp < 1e9 / c.rate_hz:
                return False
        self.last_selected_stamp = frame.stamp_ns
        self.selected += 1
        return True

    def _done(self, flushing: bool = False) -> bool:
        c = self.config
        reached = c.max_frames and self.summary.frames_answered >= c.max_frames
        return bool(reached and (flushing or not self.pending))

    # --- one frame ---------------------------------------------------------------------------
    def _answer(self, frame: _Frame) -> None:
        """Answer the questions about one frame and write what the live node would publish
        (built by core.outputs, the node's own code)."""
        c = self.config
        try:
            rgb = self._to_rgb(frame)
        except ImageConversionError as exc:
            self.summary.skipped_bad_image += 1
            self._warn(f"skipped image at {frame.stamp_ns / 1e9:.3f} s: {exc}")
            return
        header = frame.msg.header
        self._write(c.image_topic, frame.msgtype, frame.bag_ns, raw=frame.raw)
        requests = [
            Request(q, c.choices, request_id=f"{self.summary.frames_answered}-{i}")
            for i, q in enumerate(c.questions)
        ]
        try:
            if len(c.questions) == 1:
                results = [self.engine.answer(rgb, c.questions[0], c.choices or None)]
            else:  # the image and the shared prompt prefix are encoded once for all questions
                results = self.engine.answer_many(rgb, [(q, c.choices) for q in c.questions])
        except EngineError as exc:
            self.summary.inference_errors += 1
            self._warn(f"inference failed at {frame.stamp_ns / 1e9:.3f} s: {exc}")
            for request in requests:
                answer = AnswerOutputs(self.make, request, header).status(
                    AnswerStatus.INFERENCE_ERROR, one_line(exc)
                )
                self._write(f"{c.prefix}/answer", ANSWER, frame.bag_ns, answer)
            return
        depth = self._aligned_depth(frame, rgb)
        if self.camera_info_raw is not None:  # Foxglove's 3D panel needs the intrinsics
            self._write(c.camera_info_topic, CAMERA_INFO, frame.bag_ns, raw=self.camera_info_raw)
        for index, (request, result) in enumerate(zip(requests, results, strict=True)):
            outputs = AnswerOutputs(
                self.make, request, header, depth=depth, camera_info=self.camera_info
            )
            scene, answer = outputs.answer(result)
            if depth is not None and depth.error:
                self._warn(f"no 3D positions: {depth.error}")
            self.summary.positions += sum(o.position is not None for o in scene.graph.objects)
            self._write(f"{c.prefix}/scene_graph", SCENE_GRAPH, frame.bag_ns, scene.scene_graph)
            self._write(f"{c.prefix}/markers", MARKERS, frame.bag_ns, scene.markers)
            self._write(f"{c.prefix}/answer", ANSWER, frame.bag_ns, answer)
            if self.jsonl is not None:
                record = {"stamp": frame.stamp_ns / 1e9, "frame_id": header.frame_id}
                record.update(result_to_dict(replace(
                    result, reasoning=replace(result.reasoning, scene_graph=scene.graph)
                )))
                self.jsonl.write(json.dumps(record) + "\n")
                self.jsonl.flush()
            if index == 0:  # the debug image shows the first question's answer
                self._write_debug_image(frame, outputs, rgb, scene, result)
        self.summary.frames_answered += 1

    def _write_debug_image(self, frame: _Frame, outputs: AnswerOutputs, rgb: np.ndarray, scene,
                           result: Result) -> None:
        c = self.config
        annotated = outputs.annotate(rgb, scene, result)
        self._write(f"{c.prefix}/debug_image", IMAGE, frame.bag_ns, outputs.debug_image(annotated))
        if self.frames is not None:
            self.frames.save(annotated, frame.stamp_ns)

    def _to_rgb(self, frame: _Frame) -> np.ndarray:
        m = frame.msg
        if frame.msgtype == COMPRESSED:
            return decode_compressed(bytes(m.data))
        return image_to_rgb(m.encoding, m.width, m.height, m.step, m.data, bool(m.is_bigendian))

    def _aligned_depth(self, frame: _Frame, rgb: np.ndarray) -> AlignedDepth | None:
        """The depth frame nearest in stamp (within the tolerance) with the camera info, or
        None without either."""
        if not self.depths or self.camera_info is None:
            return None
        depth = min(self.depths, key=lambda d: abs(d.stamp_ns - frame.stamp_ns))
        if abs(depth.stamp_ns - frame.stamp_ns) > self.config.depth_tolerance_s * 1e9:
            return None
        return AlignedDepth(depth.msg, self.camera_info, (rgb.shape[1], rgb.shape[0]))

    def _write(self, topic: str, msgtype: str, bag_ns: int, msg=None, raw: bytes | None = None):
        data = raw if raw is not None else self.store.serialize_cdr(msg, msgtype)
        self.writer.write(topic, msgtype, bag_ns, data)

    def _warn(self, text: str) -> None:
        if text not in self.summary.warnings:
            print(f"spatialthinker-ros replay: warning: {text}", file=sys.stderr)
        self.summary.warnings.append(text)


def run_replay(
    config: ReplayConfig, engine: SpatialThinkerEngine, prepared: ReplayInput | None = None
) -> ReplaySummary:
    """Replay `config.in_bag` through a loaded engine; the output bag is always closed.
    `prepared` (from `prepare_replay`) is used and closed; without it the checks run here."""
    return _Replayer(config, engine).run(prepared)


def _at_least(minimum: float, kind: type, meaning: str = ""):
    """An argparse type: a finite number of `kind` >= `minimum`."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not math.isfinite(value) or value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}{meaning}, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


def add_replay_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "in_bag", type=Path, help="rosbag2 directory or bare .mcap/.db3 file (MCAP or sqlite3)"
    )
    parser.add_argument("--image-topic", required=True, help="sensor_msgs/Image or CompressedImage")
    parser.add_argument("--depth-topic", default="", help="aligned depth (16UC1 mm or 32FC1 m)")
    parser.add_argument("--camera-info-topic", default="")
    parser.add_argument(
        "--question",
        required=True,
        action="append",
        dest="questions",
        help="repeat for several questions per frame (the image is encoded once for all)",
    )
    parser.add_argument("--choices", nargs="+", default=[], metavar="CHOICE")
    pace = parser.add_mutually_exclusive_group()
    pace.add_argument(
        "--every", type=_at_least(1, int), default=1, metavar="N", help="answer every Nth image"
    )
    pace.add_argument(
        "--rate",
        type=_at_least(0, float, " (0: off)"),
        default=0.0,
        metavar="HZ",
        help="at most HZ per bag second",
    )
    parser.add_argument("--max-frames", type=_at_least(0, int, " (0: all)"), default=0, metavar="N")
    parser.add_argument("--out", type=Path, required=True, help="output bag directory")
    parser.add_argument(
        "--storage", choices=["mcap", "sqlite3"], default="", help="default: input's"
    )
    parser.add_argument("--jsonl", type=Path, help="write one JSON result per frame")
    parser.add_argument("--save-frames", type=Path, metavar="DIR", help="annotated frames as PNG")
    parser.add_argument("--prefix", default="/spatialthinker", help="output topic prefix")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def replay_main(args: argparse.Namespace) -> int:
    try:  # preflight: input, topics, output paths; then the model; then the run
        config = ReplayConfig(
            in_bag=args.in_bag,
            out_bag=args.out,
            image_topic=args.image_topic,
            questions=tuple(args.questions),
            choices=tuple(args.choices),
            depth_topic=args.depth_topic,
            camera_info_topic=args.camera_info_topic,
            every=args.every,
            rate_hz=args.rate,
            max_frames=args.max_frames,
            storage=args.storage,
            prefix=args.prefix.rstrip("/"),
            jsonl=args.jsonl,
            save_frames=args.save_frames,
            progress=not args.quiet,
        )
        prepared = prepare_replay(config)
    except ReplayError as exc:
        return fail(exc)
    try:
        engine = SpatialThinkerEngine(engine_config_from_args(args))
        engine.load()
    except BaseException:
        prepared.bag.close()
        raise
    try:
        summary = run_replay(config, engine, prepared)
    except ReplayError as exc:
        return fail(exc)
    print(f"{summary.describe()}\noutput bag: {args.out}")
    if summary.output_error:
        fail(summary.output_error)
        return 1
    if summary.interrupted:
        return 130
    return 1 if summary.stopped_early else 0
