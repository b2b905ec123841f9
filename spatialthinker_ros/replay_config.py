"""What a bag replay is asked to do (`ReplayConfig`) and what it did (`ReplaySummary`): the
cameras and their names, the questions, the frame selection, the outputs. No rclpy."""

from __future__ import annotations

import math
import re
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from .bag_io import ReplayError

# A camera name is a ROS name (it becomes part of the output topics): segments of letters,
# digits and underscores, not starting with a digit, separated by "/".
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(/[A-Za-z_][A-Za-z0-9_]*)*")
OUTPUT_KINDS = ("scene_graph", "answer", "markers", "debug_image")


@dataclass(frozen=True)
class CameraTopics:
    """One camera of the input bag: its image topic and optional aligned depth and CameraInfo."""

    name: str  # "" only for a single unnamed camera
    image: str
    depth: str = ""
    info: str = ""


def parse_camera(text: str) -> tuple[str, str]:
    """`--image-topic [NAME=]TOPIC` -> (name, topic); a topic never holds "="."""
    name, sep, topic = text.partition("=")
    return (name.strip(), topic.strip()) if sep else ("", text.strip())


def camera_topics(
    images: Sequence[str], depths: Sequence[str] = (), infos: Sequence[str] = ()
) -> tuple[CameraTopics, ...]:
    """The cameras of repeated `--image-topic`, `--depth-topic` and `--camera-info-topic`: each
    of the latter given never or once per camera, in the same order ("" for none)."""
    if not images:
        raise ReplayError("give the camera image topic: --image-topic [NAME=]TOPIC")
    for flag, given in (("--depth-topic", depths), ("--camera-info-topic", infos)):
        if given and len(given) != len(images):
            raise ReplayError(
                f"{flag} given {len(given)} times for {len(images)} cameras (--image-topic): "
                'give it once per camera, in the same order ("" for a camera without)'
            )
    cameras = []
    for i, text in enumerate(images):
        name, topic = parse_camera(text)
        cameras.append(CameraTopics(name, topic, depths[i] if depths else "",
                                    infos[i] if infos else ""))
    return tuple(cameras)


def camera_namespace(topic: str) -> str:
    """The namespace of an image topic: `/front/image_raw` -> `front`,
    `/arm/wrist/image_raw/compressed` -> `arm/wrist` (image_transport's suffix dropped)."""
    parts = [p for p in topic.split("/") if p]
    if parts and parts[-1] == "compressed":
        parts.pop()
    return "/".join(parts[:-1])


def name_cameras(cameras: Sequence[CameraTopics]) -> tuple[CameraTopics, ...]:
    """Names for the unnamed cameras among several: the image topic's namespace
    (`camera_namespace`), or `camera<k>` (k: the camera's position, from 1) where that namespace
    is empty, not a valid name, or shared with another camera. A single camera keeps ""."""
    if len(cameras) < 2:
        return tuple(cameras)
    derived = [c.name or camera_namespace(c.image) for c in cameras]
    counts = Counter(derived)
    named = []
    for k, (camera, name) in enumerate(zip(cameras, derived, strict=True), start=1):
        if not camera.name and (counts[name] > 1 or not _NAME.fullmatch(name)):
            name = f"camera{k}"
        named.append(replace(camera, name=name))
    return tuple(named)


@dataclass(frozen=True)
class ReplayConfig:
    """The cameras are `cameras`, or for one camera `image_topic` (+ `depth_topic`,
    `camera_info_topic`); after construction `cameras` always holds them, named."""

    in_bag: Path
    out_bag: Path
    image_topic: str = ""
    questions: tuple[str, ...] = ()  # several: the image prefix is shared (engine.answer_many)
    choices: tuple[str, ...] = ()
    depth_topic: str = ""
    camera_info_topic: str = ""
    cameras: tuple[CameraTopics, ...] = ()
    every: int = 1  # answer every Nth image of each camera
    rate_hz: float = 0.0  # or at most this many images per second of bag time (0: off)
    max_frames: int = 0  # per camera; 0: all
    concurrency: int = 1  # frames in flight (> 1 needs a backend taking concurrent requests)
    storage: str = ""  # mcap | sqlite3; "" = same as the input
    prefix: str = "/spatialthinker"
    jsonl: Path | None = None
    save_frames: Path | None = None
    depth_tolerance_s: float = 0.05
    progress: bool = True
    stop_after: str = ""  # "scene_graph": answers end with the scene graph (engine.answer)
    # Positions and sizes in this tf2 frame (from the bag's /tf and /tf_static); "": each
    # camera's own frame.
    target_frame: str = ""

    def __post_init__(self) -> None:
        if self.every < 1 or self.max_frames < 0:
            raise ReplayError(
                f"every must be >= 1 and max_frames >= 0 (0: all), got "
                f"{self.every} and {self.max_frames}"
            )
        if self.concurrency < 1:
            raise ReplayError(f"concurrency must be >= 1, got {self.concurrency}")
        if not (math.isfinite(self.rate_hz) and self.rate_hz >= 0):
            raise ReplayError(f"rate_hz must be >= 0 (0: off), got {self.rate_hz}")
        if not (math.isfinite(self.depth_tolerance_s) and self.depth_tolerance_s >= 0):
            raise ReplayError(f"depth_tolerance_s must be >= 0, got {self.depth_tolerance_s}")
        if not self.questions:
            raise ReplayError("give at least one question")
        frame = self.target_frame
        if frame and (frame != frame.strip() or frame.startswith("/") or len(frame) > 256
                      or not frame.isprintable()):
            raise ReplayError(
                f"--target-frame {frame[:80]!r}: give a tf2 frame id such as base_link (no "
                "leading /, no spaces or control characters, at most 256 characters)"
            )
        if self.prefix and not (self.prefix.startswith("/") and _NAME.fullmatch(self.prefix[1:])):
            raise ReplayError(
                f"--prefix {self.prefix!r}: give an absolute ROS name such as /spatialthinker "
                "(segments of letters, digits and _, not starting with a digit)"
            )
        cameras = self.cameras
        if self.image_topic:
            if cameras:
                raise ReplayError("give the cameras or image_topic, not both")
            one = CameraTopics("", self.image_topic, self.depth_topic, self.camera_info_topic)
            cameras = (one,)
        elif self.depth_topic or self.camera_info_topic:
            raise ReplayError("depth_topic and camera_info_topic need image_topic")
        if not cameras:
            raise ReplayError("give the camera image topic")
        object.__setattr__(self, "cameras", name_cameras(cameras))
        self._check_cameras()

    def _check_cameras(self) -> None:
        names = [c.name for c in self.cameras]
        for name in names:
            if (name or len(names) > 1) and not _NAME.fullmatch(name):
                raise ReplayError(
                    f"camera name {name!r}: use letters, digits and _ (not first), segments "
                    "separated by /"
                )
        if len(set(names)) < len(names):
            raise ReplayError(f"camera names must differ, got {', '.join(names)}")
        written = [t for c in self.cameras for t in (c.image, c.info) if t]
        written += [self.output_topic(c, kind) for c in self.cameras for kind in OUTPUT_KINDS]
        read = [t for c in self.cameras for t in (c.image, c.depth, c.info) if t]
        for topics, what in ((read, "an input"), (written, "an output")):
            repeated = sorted(t for t, n in Counter(topics).items() if n > 1)
            if repeated:
                raise ReplayError(f"topic {repeated[0]} is given as {what} more than once")

    def output_topic(self, camera: CameraTopics, kind: str) -> str:
        """`<prefix>/<kind>` for the unnamed camera, `<prefix>/<name>/<kind>` for a named one."""
        return f"{self.prefix}/" + "/".join(p for p in (camera.name, kind) if p)


@dataclass
class ReplaySummary:
    images_seen: int = 0
    frames_answered: int = 0
    skipped_bad_image: int = 0
    inference_errors: int = 0
    positions: int = 0
    transform_failures: int = 0  # answered frames without the target frame's transform
    transforms_dropped: int = 0  # bad /tf input left out (see warnings)
    answered_by_camera: dict[str, int] = field(default_factory=dict)
    stopped_early: str = ""  # why the input ended before its end ("" when read to the end)
    interrupted: bool = False
    output_error: str = ""  # why writing an output failed mid-run (the run stopped there)
    bag_cut: bool = False  # the output bag could not be closed (its disk full): no index
    elapsed_s: float = 0.0
    warnings: list[str] = field(default_factory=list)

    def warn(self, text: str) -> None:
        """Print a warning (once per text) and keep it."""
        if text not in self.warnings:
            print(f"spatialthinker-ros replay: warning: {text}", file=sys.stderr)
        self.warnings.append(text)

    def describe(self) -> str:
        fps = self.frames_answered / self.elapsed_s if self.elapsed_s > 0 else 0.0
        text = (
            f"{self.frames_answered} frames answered of {self.images_seen} images "
            f"({fps:.2f} frames/s), {self.skipped_bad_image} skipped (bad image), "
            f"{self.inference_errors} inference errors, {self.positions} 3D positions"
        )
        if self.transform_failures or self.transforms_dropped:
            text += (f", {self.transform_failures} frames without the target frame's transform,"
                     f" {self.transforms_dropped} transforms dropped")
        if len(self.answered_by_camera) > 1:
            text += " (answered by camera: " + ", ".join(
                f"{name} {n}" for name, n in self.answered_by_camera.items()
            ) + ")"
        if self.stopped_early:
            text += f"; input stopped early: {self.stopped_early}"
        closed = ("output bag cut short: its index or metadata.yaml could not be written; "
                  "replay reads it as far as it goes") if self.bag_cut else \
            "output bag closed cleanly"
        if self.interrupted:
            text += f"; interrupted ({closed})"
        if self.output_error:
            text += f"; stopped: an output could not be written ({closed})"
        return text
