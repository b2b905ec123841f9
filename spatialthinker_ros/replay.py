"""`spatialthinker-ros replay`: the perception pipeline over a rosbag2 (MCAP or sqlite3), no ROS.

Reads camera images (Image or CompressedImage, plus optional aligned depth and CameraInfo matched
by stamp), answers one or more questions on each selected frame, and writes an output bag with
the images used, SceneGraph and SpatialAnswer messages, annotated images and markers, each
stamped with the source image's header; optionally a JSONL of results and the annotated frames.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from mcap import records as mcap_records
from mcap.stream_reader import StreamReader
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from tqdm import tqdm

from .arguments import engine_config_from_args
from .bag_types import BagMessages, make_typestore
from .core.depth import AlignedDepth
from .core.engine import EngineError, Result, SpatialThinkerEngine
from .core.images import ImageConversionError, decode_compressed, image_to_rgb
from .core.outputs import AnswerOutputs, Request
from .core.serialize import result_to_dict
from .core.status import AnswerStatus
from .core.text import one_line

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
SCENE_GRAPH = "spatialthinker_ros/msg/SceneGraph"
ANSWER = "spatialthinker_ros/msg/SpatialAnswer"
MARKERS = "visualization_msgs/msg/MarkerArray"


class ReplayError(RuntimeError):
    """A problem with the input or output bag, with a message for the user."""


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


@dataclass
class ReplaySummary:
    images_seen: int = 0
    frames_answered: int = 0
    skipped_bad_image: int = 0
    inference_errors: int = 0
    positions: int = 0
    stopped_early: str = ""  # why the input ended before its end ("" when read to the end)
    interrupted: bool = False
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
        return text


@dataclass(frozen=True)
class _Topic:
    name: str
    msgtype: str
    count: int  # -1 when unknown (a truncated MCAP has no summary)


class _RosbagsSource:
    """rosbags' reader (MCAP and sqlite3 bags with intact metadata)."""

    def __init__(self, path: Path):
        self.reader = Reader(path)
        self.reader.open()
        self.topics = {
            c.topic: _Topic(c.topic, c.msgtype, c.msgcount) for c in self.reader.connections
        }

    def messages(self, topics: set[str]) -> Iterator[tuple[str, str, int, bytes]]:
        wanted = [c for c in self.reader.connections if c.topic in topics]
        for conn, bag_ns, raw in self.reader.messages(connections=wanted):
            yield conn.topic, conn.msgtype, bag_ns, raw

    def close(self) -> None:
        self.reader.close()


class _McapStreamSource:
    """A truncated MCAP (e.g. the recorder died): rosbags needs the footer, so read the records
    in order with the mcap library until the data ends."""

    def __init__(self, path: Path):
        files = sorted(Path(path).glob("*.mcap")) if Path(path).is_dir() else [Path(path)]
        if not files:
            raise ReplayError(f"no .mcap file in {path}")
        self.file = files[0]
        counts: dict[int, int] = {}
        channels: dict[int, tuple[str, str]] = {}
        try:
            for kind, channel_id, topic, msgtype, *_ in self._records():
                if kind == "channel":
                    channels[channel_id] = (topic, msgtype)
                else:
                    counts[channel_id] = counts.get(channel_id, 0) + 1
        except Exception:  # noqa: BLE001 - the scan stops where the file stops
            pass
        self.topics = {t: _Topic(t, m, counts.get(i, 0)) for i, (t, m) in channels.items()}

    def _records(self):
        schemas: dict[int, str] = {}
        with open(self.file, "rb") as f:
            for record in StreamReader(f, emit_chunks=False).records:
                if isinstance(record, mcap_records.Schema):
                    schemas[record.id] = record.name
                elif isinstance(record, mcap_records.Channel):
                    yield (
                        "channel",
                        record.id,
                        record.topic,
                        schemas.get(record.schema_id, ""),
                        0,
                        b"",
                    )
                elif isinstance(record, mcap_records.Message):
                    yield "message", record.channel_id, "", "", record.log_time, record.data

    def messages(self, topics: set[str]) -> Iterator[tuple[str, str, int, bytes]]:
        channels: dict[int, tuple[str, str]] = {}
        for kind, channel_id, topic, msgtype, log_time, data in self._records():
            if kind == "channel":
                channels[channel_id] = (topic, msgtype)
            elif channels.get(channel_id, ("", ""))[0] in topics:
                topic, msgtype = channels[channel_id]
                yield topic, msgtype, log_time, data

    def close(self) -> None:
        pass


def _open_source(path: Path):
    try:
        return _RosbagsSource(path)
    except Exception as exc:  # noqa: BLE001 - any unreadable input is the user's to fix
        is_mcap = Path(path).is_dir() and any(Path(path).glob("*.mcap"))
        if is_mcap:
            source = _McapStreamSource(path)
            if source.topics:
                return source
        raise ReplayError(f"cannot open bag {path}: {exc}") from exc


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
    def run(self) -> ReplaySummary:
        c = self.config
        t0 = time.perf_counter()
        source = _open_source(c.in_bag)
        try:
            roles = self._roles(source.topics)
            storage = c.storage or ("mcap" if self._is_mcap(c.in_bag) else "sqlite3")
            total = source.topics[c.image_topic].count
            plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
            if c.out_bag.exists():
                raise ReplayError(f"output {c.out_bag} exists")
            with Writer(c.out_bag, version=9, storage_plugin=plugin) as writer, self._jsonl() as js:
                self.writer, self.jsonl = writer, js
                self.out_conns: dict[str, object] = {}
                bar = tqdm(
                    total=total,
                    unit="img",
                    disable=not (c.progress and sys.stderr.isatty()),
                    desc="replay",
                )
                try:
                    self._read(source, roles, bar)
                except KeyboardInterrupt:
                    self.summary.interrupted = True
                finally:
                    bar.close()
        finally:
            source.close()
        self.summary.elapsed_s = time.perf_counter() - t0
        return self.summary

    @staticmethod
    def _is_mcap(path: Path) -> bool:
        return any(p.suffix == ".mcap" for p in Path(path).glob("*"))

    def _roles(self, topics: dict[str, _Topic]) -> dict[str, str]:
        """topic -> "image" | "depth" | "info"; each topic must exist with a known type."""
        c = self.config
        names = sorted(topics)
        existing = ", ".join(f"{n} ({topics[n].msgtype})" for n in names)
        roles = {}
        for role, topic, types in (
            ("image", c.image_topic, (IMAGE, COMPRESSED)),
            ("depth", c.depth_topic, (IMAGE,)),
            ("info", c.camera_info_topic, (CAMERA_INFO,)),
        ):
            if not topic:
                continue
            if topic not in topics:
                raise ReplayError(f"topic {topic} is not in {c.in_bag}; it has: {existing}")
            if topics[topic].msgtype not in types:
                raise ReplayError(
                    f"topic {topic} has type {topics[topic].msgtype}, expected one of "
                    + ", ".join(types)
                )
            roles[topic] = role
        return roles

    def _read(self, source, roles: dict[str, str], bar) -> None:
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
        except KeyboardInterrupt:
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

    def _jsonl(self):
        import contextlib

        if self.config.jsonl is None:
            return contextlib.nullcontext(None)
        return open(self.config.jsonl, "w", encoding="utf-8")  # noqa: SIM115

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
        if c.save_frames is not None:
            from PIL import Image

            c.save_frames.mkdir(parents=True, exist_ok=True)
            Image.fromarray(annotated).save(c.save_frames / f"{frame.stamp_ns}.png")

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
        key = (topic, msgtype)
        if key not in self.out_conns:
            self.out_conns[key] = self.writer.add_connection(topic, msgtype, typestore=self.store)
        data = raw if raw is not None else self.store.serialize_cdr(msg, msgtype)
        self.writer.write(self.out_conns[key], bag_ns, data)

    def _warn(self, text: str) -> None:
        if text not in self.summary.warnings:
            print(f"spatialthinker-ros replay: warning: {text}", file=sys.stderr)
        self.summary.warnings.append(text)


def run_replay(config: ReplayConfig, engine: SpatialThinkerEngine) -> ReplaySummary:
    """Replay `config.in_bag` through a loaded engine; the output bag is always closed."""
    return _Replayer(config, engine).run()


def add_replay_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("in_bag", type=Path, help="rosbag2 directory (MCAP or sqlite3)")
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
    pace.add_argument("--every", type=int, default=1, metavar="N", help="answer every Nth image")
    pace.add_argument(
        "--rate", type=float, default=0.0, metavar="HZ", help="at most HZ per bag second"
    )
    parser.add_argument("--max-frames", type=int, default=0, metavar="N")
    parser.add_argument("--out", type=Path, required=True, help="output bag directory")
    parser.add_argument(
        "--storage", choices=["mcap", "sqlite3"], default="", help="default: input's"
    )
    parser.add_argument("--jsonl", type=Path, help="write one JSON result per frame")
    parser.add_argument("--save-frames", type=Path, metavar="DIR", help="annotated frames as PNG")
    parser.add_argument("--prefix", default="/spatialthinker", help="output topic prefix")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def replay_main(args: argparse.Namespace) -> int:
    config = ReplayConfig(
        in_bag=args.in_bag,
        out_bag=args.out,
        image_topic=args.image_topic,
        questions=tuple(args.questions),
        choices=tuple(args.choices),
        depth_topic=args.depth_topic,
        camera_info_topic=args.camera_info_topic,
        every=max(1, args.every),
        rate_hz=args.rate,
        max_frames=args.max_frames,
        storage=args.storage,
        prefix=args.prefix.rstrip("/"),
        jsonl=args.jsonl,
        save_frames=args.save_frames,
        progress=not args.quiet,
    )
    engine = SpatialThinkerEngine(engine_config_from_args(args))
    engine.load()
    try:
        summary = run_replay(config, engine)
    except ReplayError as exc:
        print(f"spatialthinker-ros: error: {exc}", file=sys.stderr)
        return 2
    print(f"{summary.describe()}\noutput bag: {args.out}")
    if summary.interrupted:
        return 130
    return 1 if summary.stopped_early else 0
