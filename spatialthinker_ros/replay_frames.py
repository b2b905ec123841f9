"""The reading side of bag replay: the input bag's messages become frames to answer.

Each camera keeps its own depth history, CameraInfo and pending frames. A selected image waits
until depth up to its stamp + the tolerance had time to arrive (bag time), then leaves as a
`FrameWork` with the depth image nearest in stamp and the CameraInfo its camera had then.
Frames leave in bag-time order across the cameras. With a target frame, /tf and /tf_static go
into tf2's BufferCore (`replay_tf`), a frame waits TF_WAIT_S of bag time for the transforms
after its stamp, and leaves with the transform at its stamp (or why there is none). Nothing here
calls the model. No rclpy.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from rosbags.typesys.store import Typestore

from .bag_io import BagInput, OutputPaths, ReplayError, check_outputs, open_bag, topic_roles
from .core.text import one_line
from .core.transforms import RigidTransform
from .replay_config import CameraTopics, ReplayConfig, ReplaySummary
from .replay_tf import (
    TF_MESSAGE,
    TF_STATIC_TOPIC,
    TF_TOPIC,
    TF_WAIT_S,
    BagTransforms,
    import_tf2_py,
)

DEPTH_HISTORY = 64  # depth images kept per camera for matching by stamp


@dataclass(frozen=True)
class Route:
    camera: int  # index into ReplayConfig.cameras (-1: none, for /tf)
    role: str  # "image" | "depth" | "info" | "tf" | "tf_static"


@dataclass
class ReplayInput:
    """The opened input bag and where each wanted topic goes, checked with the output paths."""

    bag: BagInput
    routes: dict[str, Route]


def prepare_replay(config: ReplayConfig) -> ReplayInput:
    """Open the input, check every camera's topics and every output path: all before a model
    loads."""
    bag = open_bag(config.in_bag)
    try:
        routes = {}
        for index, camera in enumerate(config.cameras):
            roles = topic_roles(bag, camera.image, camera.depth, camera.info)
            routes.update({topic: Route(index, role) for topic, role in roles.items()})
            if bag.topics[camera.image].count == 0:
                raise ReplayError(f"topic {camera.image} of {bag.path} holds no messages")
        if config.target_frame:
            routes.update(_tf_routes(bag, config.target_frame))
            import_tf2_py()  # before a model loads: one line where tf2 is absent
        check_outputs(bag, OutputPaths(config.out_bag, config.jsonl, config.save_frames))
    except BaseException:
        bag.close()
        raise
    return ReplayInput(bag, routes)


def _tf_routes(bag: BagInput, target_frame: str) -> dict[str, Route]:
    """/tf and /tf_static (either may be missing, not both), each a TFMessage."""
    routes = {}
    for topic, role in ((TF_TOPIC, "tf"), (TF_STATIC_TOPIC, "tf_static")):
        info = bag.topics.get(topic)
        if info is None:
            continue
        if info.msgtype != TF_MESSAGE:
            raise ReplayError(f"topic {topic} has type {info.msgtype}, expected {TF_MESSAGE}")
        routes[topic] = Route(-1, role)
    if not routes:
        raise ReplayError(
            f"--target-frame {target_frame}: {bag.path} has neither {TF_TOPIC} nor "
            f"{TF_STATIC_TOPIC} (record them with the cameras)"
        )
    return routes


@dataclass(frozen=True)
class Frame:
    bag_ns: int
    stamp_ns: int  # the header's
    msgtype: str
    raw: bytes  # CDR, as read
    msg: Any


@dataclass(frozen=True)
class FrameWork:
    """One selected image to answer, with what its camera knew when the image was released."""

    seq: int  # its place in the output order, from 0 (request ids are built on it)
    camera: CameraTopics
    frame: Frame
    depth: Any | None  # the depth image nearest in stamp within the tolerance (with CameraInfo)
    camera_info: Any | None
    camera_info_raw: bytes | None
    # With a target frame: the image's frame -> target frame at its stamp, or why none.
    transform: RigidTransform | str | None = None


@dataclass
class _Camera:
    index: int
    topics: CameraTopics
    depths: deque[Frame] = field(default_factory=lambda: deque(maxlen=DEPTH_HISTORY))
    info: Any = None
    info_raw: bytes | None = None
    pending: deque[Frame] = field(default_factory=deque)
    seen: int = 0  # images read
    selected: int = 0
    last_selected_stamp: int | None = None


def _stamp_ns(header: Any) -> int:
    return int(header.stamp.sec) * 10**9 + int(header.stamp.nanosec)


class FrameReader:
    """Reads the input and yields the frames to answer (`work`), counting the images seen."""

    def __init__(
        self,
        config: ReplayConfig,
        store: Typestore,
        summary: ReplaySummary,
        on_image: Callable[[], object] = lambda: None,
    ) -> None:
        self.config = config
        self.store = store
        self.summary = summary
        self.on_image = on_image
        self.tolerance_ns = int(config.depth_tolerance_s * 1e9)
        self.wait_ns = self.tolerance_ns  # how long (bag time) a selected image waits
        self.transforms: BagTransforms | None = None
        if config.target_frame:
            self.transforms = BagTransforms(config.target_frame, summary.warn)
            self.wait_ns = max(self.wait_ns, int(TF_WAIT_S * 1e9))
        self.cameras = [_Camera(i, c) for i, c in enumerate(config.cameras)]
        self.released = 0

    def work(self, source: ReplayInput) -> Iterator[FrameWork]:
        """The selected frames in bag-time order. A truncated or corrupt input ends the
        messages where it breaks (`summary.stopped_early` says where); the frames read so far
        are still answered."""
        messages = iter(source.bag.messages(set(source.routes)))
        count, last_ns = 0, 0
        images = [0] * len(self.cameras)  # image messages read per camera
        while not self._done():
            try:
                topic, msgtype, bag_ns, raw = next(messages)
            except StopIteration:  # read to the end: as many images as the metadata lists?
                self._check_counts(source, images)
                break
            except Exception as exc:  # noqa: BLE001 - truncated or corrupt input: keep what we have
                self.summary.stopped_early = (
                    f"after {count} messages (last bag time {last_ns / 1e9:.3f} s): "
                    f"{type(exc).__name__}: {exc}"
                )
                break
            count, last_ns = count + 1, bag_ns
            route = source.routes[topic]
            if route.camera < 0:  # frames due leave first: a looped bag's jump clears the buffer
                yield from self._release(bag_ns)
                self._take_tf(route, topic, msgtype, bag_ns, raw)
                continue
            images[route.camera] += route.role == "image"
            try:  # one message a recorder wrote badly (invalid CDR, a non-UTF-8 frame_id)
                msg = self.store.deserialize_cdr(raw, msgtype)
                stamp_ns = _stamp_ns(msg.header)
            except Exception as exc:  # noqa: BLE001 - skip it, read on
                self._skip_undecodable(route, topic, bag_ns, exc)
                continue
            self._take(self.cameras[route.camera], route.role, Frame(
                bag_ns, stamp_ns, msgtype, raw, msg
            ))
            # A frame leaves once depth up to its stamp + tolerance had time to arrive.
            yield from self._release(bag_ns)
        yield from self._release(None)

    def _check_counts(self, source: ReplayInput, images: list[int]) -> None:
        """A bag whose metadata.yaml lists images its files do not hold (a topic renamed or
        retyped in one but not the other): said, and the run ends as stopped early (exit 1),
        where before it answered nothing and exited 0."""
        if self.summary.stopped_early:
            return
        for camera, read in zip(self.cameras, images, strict=True):
            listed = source.bag.topics[camera.topics.image].count
            if listed > read:
                self.summary.stopped_early = one_line(
                    f"the bag lists {listed} messages on {camera.topics.image} but its files "
                    f"hold {read} of that topic and type (metadata.yaml and the bag files "
                    "disagree)", 400)
                return

    def _take_tf(self, route: Route, topic: str, msgtype: str, bag_ns: int, raw: bytes) -> None:
        if self.transforms is None:
            return
        try:
            msg = self.store.deserialize_cdr(raw, msgtype)
        except Exception as exc:  # noqa: BLE001 - a badly written message: skip it
            self.summary.warn(
                f"skipped {topic} message at bag time {bag_ns / 1e9:.3f} s that cannot be "
                f"decoded: {one_line(exc, 200)}"
            )
            return
        self.transforms.add(msg, route.role == "tf_static", bag_ns)
        self.summary.transforms_dropped = sum(
            n for kind, n in self.transforms.dropped.items() if kind != "repeated"
        )

    def _skip_undecodable(self, route: Route, topic: str, bag_ns: int, exc: Exception) -> None:
        if route.role == "image":
            self.on_image()
            self.summary.images_seen += 1
            self.summary.skipped_bad_image += 1
        self.summary.warn(
            f"skipped {route.role} message on {topic} at bag time {bag_ns / 1e9:.3f} s that "
            f"cannot be decoded: {one_line(exc, 200)}"
        )

    def _take(self, camera: _Camera, role: str, frame: Frame) -> None:
        if role == "info":
            camera.info, camera.info_raw = frame.msg, frame.raw
        elif role == "depth":
            camera.depths.append(frame)
        else:
            self.on_image()
            self.summary.images_seen += 1
            camera.seen += 1
            if self._select(camera, frame):
                camera.pending.append(frame)

    def _select(self, camera: _Camera, frame: Frame) -> bool:
        c = self.config
        if c.max_frames and camera.selected >= c.max_frames:
            return False
        if c.every > 1 and (camera.seen - 1) % c.every:
            return False
        if c.rate_hz > 0 and camera.last_selected_stamp is not None:
            if frame.stamp_ns - camera.last_selected_stamp < 1e9 / c.rate_hz:
                return False
        camera.last_selected_stamp = frame.stamp_ns
        camera.selected += 1
        return True

    def _done(self) -> bool:
        """Every camera has its `max_frames` selected and released: nothing more to read."""
        c = self.config
        return bool(c.max_frames) and all(
            cam.selected >= c.max_frames and not cam.pending for cam in self.cameras
        )

    def _release(self, now_ns: int | None) -> Iterator[FrameWork]:
        """Pending frames older than `now_ns` - tolerance (all of them at the end: None), oldest
        first across the cameras."""
        while True:
            ready = [
                cam for cam in self.cameras
                if cam.pending and (now_ns is None
                                    or cam.pending[0].bag_ns + self.wait_ns < now_ns)
            ]
            if not ready:
                return
            camera = min(ready, key=lambda cam: (cam.pending[0].bag_ns, cam.index))
            frame = camera.pending.popleft()
            seq, self.released = self.released, self.released + 1
            transform = None
            if self.transforms is not None:
                transform = self.transforms.lookup(frame.msg.header.frame_id, frame.stamp_ns)
            yield FrameWork(
                seq, camera.topics, frame, self._depth_for(camera, frame), camera.info,
                camera.info_raw, transform,
            )

    def _depth_for(self, camera: _Camera, frame: Frame) -> Any | None:
        """The camera's depth image nearest in stamp within the tolerance, or None (also without
        CameraInfo: no position can be computed then)."""
        if not camera.depths or camera.info is None:
            return None
        depth = min(camera.depths, key=lambda d: abs(d.stamp_ns - frame.stamp_ns))
        if abs(depth.stamp_ns - frame.stamp_ns) > self.tolerance_ns:
            return None
        return depth.msg
