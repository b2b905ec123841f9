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

from .bag_io import (
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
from .bag_types import make_typestore, new_message
from .core.engine import EngineError, Result, SpatialThinkerEngine
from .core.geometry import CameraIntrinsics, lift_box_to_3d
from .core.images import ImageConversionError, decode_compressed, depth_to_meters, image_to_rgb
from .core.scene import ParseStatus, SceneGraph, SceneObject
from .core.serialize import result_to_dict
from .core.visualize import draw_scene_graph

SCENE_GRAPH = "spatialthinker_ros/msg/SceneGraph"
ANSWER = "spatialthinker_ros/msg/SpatialAnswer"
MARKERS = "visualization_msgs/msg/MarkerArray"
STATUS_OF_PARSE = {ParseStatus.OK: 0, ParseStatus.PARTIAL: 1, ParseStatus.PARSE_ERROR: 2}
STATUS_INFERENCE_ERROR = 6


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
        self.summary = ReplaySummary()
        self.depths: deque[_Frame] = deque(maxlen=64)
        self.camera_info = None
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
                    self.camera_info = msg
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
        c = self.config
        try:
            rgb = self._to_rgb(frame)
        except ImageConversionError as exc:
            self.summary.skipped_bad_image += 1
            self._warn(f"skipped image at {frame.stamp_ns / 1e9:.3f} s: {exc}")
            return
        header = frame.msg.header
        self._write(c.image_topic, frame.msgtype, frame.bag_ns, raw=frame.raw)
        try:
            if len(c.questions) == 1:
                results = [self.engine.answer(rgb, c.questions[0], c.choices or None)]
            else:  # the image and the shared prompt prefix are encoded once for all questions
                results = self.engine.answer_many(rgb, [(q, c.choices) for q in c.questions])
        except EngineError as exc:
            self.summary.inference_errors += 1
            self._warn(f"inference failed at {frame.stamp_ns / 1e9:.3f} s: {exc}")
            for question in c.questions:
                answer = self._answer_msg(header, question, None, STATUS_INFERENCE_ERROR, str(exc))
                self._write(f"{c.prefix}/answer", ANSWER, frame.bag_ns, answer)
            return
        depth = self._aligned_depth(frame, rgb.shape)
        for index, result in enumerate(results):
            graph = self._with_positions(result.reasoning.scene_graph, depth)
            result = replace(result, reasoning=replace(result.reasoning, scene_graph=graph))
            graph_msg = self._graph_msg(header, graph, result.reasoning.observation)
            status = STATUS_OF_PARSE[result.reasoning.status]
            answer = self._answer_msg(
                header, result.question, result, status, result.reasoning.message, graph_msg
            )
            self._write(f"{c.prefix}/scene_graph", SCENE_GRAPH, frame.bag_ns, graph_msg)
            self._write(f"{c.prefix}/answer", ANSWER, frame.bag_ns, answer)
            if self.jsonl is not None:
                record = {"stamp": frame.stamp_ns / 1e9, "frame_id": header.frame_id}
                record.update(result_to_dict(result))
                self.jsonl.write(json.dumps(record) + "\n")
                self.jsonl.flush()
            if index == 0:  # the debug image and markers show the first question's graph
                self._write_visuals(frame, header, rgb, graph, result)
        self.summary.frames_answered += 1

    def _write_visuals(self, frame: _Frame, header, rgb: np.ndarray, graph, result: Result) -> None:
        c = self.config
        annotated = draw_scene_graph(rgb, graph, result.reasoning.answer)
        image = self._image_msg(header, annotated)
        self._write(f"{c.prefix}/debug_image", IMAGE, frame.bag_ns, image)
        self._write(f"{c.prefix}/markers", MARKERS, frame.bag_ns, self._markers(header, graph))
        if self.frames is not None:
            self.frames.save(annotated, frame.stamp_ns)

    def _to_rgb(self, frame: _Frame) -> np.ndarray:
        m = frame.msg
        if frame.msgtype == COMPRESSED:
            return decode_compressed(bytes(m.data))
        return image_to_rgb(m.encoding, m.width, m.height, m.step, m.data, bool(m.is_bigendian))

    def _aligned_depth(self, frame: _Frame, shape) -> tuple[np.ndarray, CameraIntrinsics] | None:
        """Depth (metres) nearest in stamp within tolerance, and intrinsics; None without."""
        if not self.depths or self.camera_info is None:
            return None
        depth = min(self.depths, key=lambda d: abs(d.stamp_ns - frame.stamp_ns))
        if abs(depth.stamp_ns - frame.stamp_ns) > self.config.depth_tolerance_s * 1e9:
            return None
        d = depth.msg
        if (d.height, d.width) != tuple(shape[:2]):
            self._warn("depth and colour sizes differ: no 3D positions (depth must be aligned)")
            return None
        try:
            meters = depth_to_meters(
                d.encoding, d.width, d.height, d.step, d.data, bool(d.is_bigendian)
            )
        except ImageConversionError as exc:
            self._warn(f"depth image unusable: {exc}")
            return None
        k = self.camera_info.k
        return meters, CameraIntrinsics(float(k[0]), float(k[4]), float(k[2]), float(k[5]))

    def _with_positions(self, graph: SceneGraph, depth) -> SceneGraph:
        """3D centres of the boxes from `_aligned_depth`'s result."""
        if depth is None:
            return graph
        meters, intrinsics = depth
        objects = []
        for o in graph.objects:
            position = lift_box_to_3d(o.box, meters, intrinsics) if o.box else None
            self.summary.positions += position is not None
            objects.append(SceneObject(o.id, o.label, o.box, position))
        return graph.with_objects(tuple(objects))

    # --- messages ----------------------------------------------------------------------------
    def _graph_msg(self, header, graph: SceneGraph, observation: str):
        s = self.store
        objects = []
        for o in graph.objects:
            box = o.box.as_list() if o.box else [0.0, 0.0, 0.0, 0.0]
            position = new_message(
                s,
                "geometry_msgs/msg/Point",
                **dict(zip("xyz", o.position or (0.0, 0.0, 0.0), strict=True)),
            )
            objects.append(
                new_message(
                    s,
                    "spatialthinker_ros/msg/SceneObject",
                    id=o.id,
                    label=o.label,
                    has_box=o.box is not None,
                    x_min=box[0],
                    y_min=box[1],
                    x_max=box[2],
                    y_max=box[3],
                    has_position=o.position is not None,
                    position=position,
                )
            )
        relations = [
            new_message(
                s,
                "spatialthinker_ros/msg/SceneRelation",
                subject_id=r.subject,
                predicate=r.predicate,
                object_id=r.object,
            )
            for r in graph.relations
        ]
        return new_message(
            s,
            SCENE_GRAPH,
            header=header,
            image_width=graph.image_width,
            image_height=graph.image_height,
            observation=observation,
            objects=objects,
            relations=relations,
        )

    def _answer_msg(
        self,
        header,
        question: str,
        result: Result | None,
        status: int,
        message: str,
        graph_msg=None,
    ):
        c = self.config
        fields = {
            "header": header,
            "question": question,
            "choices": list(c.choices),
            "status": status,
            "status_message": message,
        }
        if result is not None:
            r = result.reasoning
            total_ns = int(result.timings.total_s * 1e9)
            fields.update(
                option=r.answer.option,
                answer_text=r.answer.text,
                matched_choice=r.answer.matched_choice,
                reasoning=r.thought,
                scene_graph=graph_msg,
                raw_output=r.raw,
                generated_tokens=result.generated_tokens,
                inference_time=new_message(
                    self.store,
                    "builtin_interfaces/msg/Duration",
                    sec=total_ns // 10**9,
                    nanosec=total_ns % 10**9,
                ),
            )
        return new_message(self.store, ANSWER, **fields)

    def _image_msg(self, header, rgb: np.ndarray):
        h, w = rgb.shape[:2]
        return new_message(
            self.store,
            IMAGE,
            header=header,
            height=h,
            width=w,
            encoding="rgb8",
            step=w * 3,
            data=np.ascontiguousarray(rgb).reshape(-1),
        )

    def _markers(self, header, graph: SceneGraph):
        """A DELETEALL, then per object a text label (and a cube where a 3D position is known)."""
        s = self.store
        M = s.types["visualization_msgs/msg/Marker"]
        markers = [
            new_message(s, "visualization_msgs/msg/Marker", header=header, action=M.DELETEALL)
        ]
        for i, o in enumerate(graph.objects):
            if o.position is None:
                continue
            x, y, z = o.position
            pose = new_message(
                s,
                "geometry_msgs/msg/Pose",
                position=new_message(s, "geometry_msgs/msg/Point", x=x, y=y, z=z),
                orientation=new_message(s, "geometry_msgs/msg/Quaternion", w=1.0),
            )
            color = new_message(s, "std_msgs/msg/ColorRGBA", r=0.1, g=0.8, b=0.2, a=0.6)
            lifetime = new_message(s, "builtin_interfaces/msg/Duration", sec=1)
            size = 0.2
            if o.box is not None and self.camera_info is not None:
                size = max(0.05, o.box.width * z / float(self.camera_info.k[0]))
            scale = new_message(s, "geometry_msgs/msg/Vector3", x=size, y=size, z=size)
            markers.append(
                new_message(
                    s,
                    "visualization_msgs/msg/Marker",
                    header=header,
                    ns="objects",
                    id=i,
                    type=M.CUBE,
                    pose=pose,
                    scale=scale,
                    color=color,
                    lifetime=lifetime,
                )
            )
            text_scale = new_message(s, "geometry_msgs/msg/Vector3", z=0.1)
            white = new_message(s, "std_msgs/msg/ColorRGBA", r=1.0, g=1.0, b=1.0, a=1.0)
            markers.append(
                new_message(
                    s,
                    "visualization_msgs/msg/Marker",
                    header=header,
                    ns="labels",
                    id=i,
                    type=M.TEXT_VIEW_FACING,
                    pose=pose,
                    scale=text_scale,
                    color=white,
                    lifetime=lifetime,
                    text=o.id,
                )
            )
        return new_message(s, MARKERS, markers=markers)

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
    from .cli import engine_config_from_args

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
        print(f"spatialthinker-ros: error: {exc}", file=sys.stderr)
        return 2
    try:
        engine = SpatialThinkerEngine(engine_config_from_args(args))
        engine.load()
    except BaseException:
        prepared.bag.close()
        raise
    try:
        summary = run_replay(config, engine, prepared)
    except ReplayError as exc:
        print(f"spatialthinker-ros: error: {exc}", file=sys.stderr)
        return 2
    print(f"{summary.describe()}\noutput bag: {args.out}")
    if summary.output_error:
        print(f"spatialthinker-ros: error: {summary.output_error}", file=sys.stderr)
        return 1
    if summary.interrupted:
        return 130
    return 1 if summary.stopped_early else 0
