"""Camera intake: subscriptions on a helper node with its own executor thread, and the newest
frame (plus aligned depth and CameraInfo) of each camera.

rclpy's MultiThreadedExecutor pays a wait-set rebuild and a thread hand-off per message; with
every entity of the lifecycle node (services, action, parameters) in its wait set it took as few
as 12 frames/s of a 1 kHz stream, and it shares its threads with the requests waiting on the
model. The helper node holds only the camera subscriptions, so frames are stored as fast as they
arrive, whatever the request load. Callbacks are O(1): they keep a reference to the message.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode
from rclpy.qos import HistoryPolicy, QoSProfile, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from ..core.depth import AlignedDepth
from ..core.geometry import Size
from . import topics
from .conversions import stamp_to_seconds
from .frames import LatestFrame, StampedHistory
from .spin_thread import SpinThread

CAMERA_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=1,
    reliability=qos_profile_sensor_data.reliability,
    durability=qos_profile_sensor_data.durability,
)
DEPTH_HISTORY = 16  # depth frames kept per camera to match an image's stamp


@dataclass(frozen=True)
class CameraReport:
    """One camera's figures for /diagnostics."""

    name: str
    topic: str  # the image topic subscribed (after namespace and remapping); "" before that
    frames_received: int
    frames_dropped: int
    newest_frame_age_s: float | None  # by stamp or receipt, whichever is older; None: no frame
    conversion_errors: int = 0  # frames the node took up but could not convert to pixels
    conversion_error: str = ""  # why the last frame taken up could not be ("" when it could)


@dataclass
class Camera:
    """One camera's streams. `name` "" is the single camera on the node's own topics (`image`,
    `depth`, `camera_info`); another name `C` reads `C/image`, `C/depth`, `C/camera_info`."""

    name: str
    images: LatestFrame[Image | CompressedImage] = field(default_factory=LatestFrame)
    depth: StampedHistory[Image] = field(
        default_factory=lambda: StampedHistory(capacity=DEPTH_HISTORY)
    )
    camera_info: CameraInfo | None = None
    image_topic: str = ""  # resolved, once subscribed
    conversion_errors: int = 0
    conversion_error: str = ""  # set and cleared by the worker for each frame it converts

    def converted(self, error: str = "") -> None:
        """The worker took up a frame of this camera: `error` says why it could not convert it."""
        self.conversion_error = error
        self.conversion_errors += bool(error)

    def topic(self, base: str) -> str:
        return topics.camera_topic(self.name, base)

    def report(self, now_s: float) -> CameraReport:
        stats = self.images.stats
        frame = self.images.peek()
        age = None if frame is None else frame.staleness_s(now_s)
        return CameraReport(self.name, self.image_topic, stats.received, stats.dropped, age,
                            self.conversion_errors, self.conversion_error)

    def clear(self) -> None:
        self.images.clear()
        self.depth.clear()
        self.camera_info = None

    def aligned_depth(self, stamp_s: float, tolerance_s: float, image_size: Size,
                      max_pixels: int, frame_id: str = "") -> AlignedDepth:
        """The depth frame closest to `stamp_s` (within the tolerance) with the newest
        CameraInfo; positions need both (`error` says which is missing), in the image's
        `frame_id` (another frame's depth is not aligned to it)."""
        depth = self.depth.closest(stamp_s, tolerance_s)
        missing = ""
        if self.camera_info is None:
            missing = "no camera_info received"
        elif depth is None and len(self.depth) == 0:
            missing = "no depth frame received"
        elif depth is None:
            missing = (f"no depth frame stamped within depth_stamp_tolerance_s = "
                       f"{tolerance_s:g} s of the image")
        return AlignedDepth(depth, self.camera_info, image_size, max_pixels, missing, frame_id)


class CameraIntake:
    """The cameras' subscriptions, on a helper node `<name>_camera_intake` spun by its own
    single-threaded executor thread. It subscribes to names already resolved (namespace +
    remapping) by the main node and ignores the process-wide arguments (`__node`/`__ns` remaps
    would otherwise rename it to the main node's name)."""

    def __init__(self, owner: LifecycleNode, camera_names: Sequence[str],
                 clock_s: Callable[[], float]) -> None:
        self._logger = owner.get_logger()
        self._clock_s = clock_s
        self.cameras: dict[str, Camera] = {name: Camera(name) for name in camera_names}
        self._subscriptions: list[Any] = []
        self.node = rclpy.create_node(
            f"{owner.get_name()}_camera_intake",
            namespace=owner.get_namespace(),
            context=owner.context,
            use_global_arguments=False,
            start_parameter_services=False,
        )
        self._executor = SingleThreadedExecutor(context=owner.context)
        self._executor.add_node(self.node)
        self._spin = SpinThread(self._executor, name="camera-intake", on_error=self._spin_failed)
        self._spin.start()

    def camera(self, name: str) -> Camera | None:
        """The camera called `name`; "" is the first one."""
        if not name:
            return next(iter(self.cameras.values()))
        return self.cameras.get(name)

    def reports(self) -> list[CameraReport]:
        now_s = self._clock_s()
        return [camera.report(now_s) for camera in self.cameras.values()]

    def _spin_failed(self, exc: BaseException) -> None:  # callbacks are guarded: rclpy itself
        self._logger.error(f"camera intake stopped: {type(exc).__name__}: {exc}")

    def subscribe(self, resolve: Callable[[str], str], *, use_compressed: bool,
                  use_depth: bool) -> None:
        """Subscribe every camera's topics (`resolve` applies the main node's namespace and
        remappings)."""
        for camera in self.cameras.values():
            camera.image_topic = resolve(camera.topic(topics.IMAGE))
            self._add(Image, camera.image_topic, self._on_image(camera))
            if use_compressed:
                self._add(CompressedImage, resolve(camera.topic(topics.COMPRESSED_IMAGE)),
                          self._on_image(camera))
            if use_depth:
                self._add(Image, resolve(camera.topic(topics.DEPTH)), self._on_depth(camera))
                self._add(CameraInfo, resolve(camera.topic(topics.CAMERA_INFO)),
                          self._on_camera_info(camera))

    def unsubscribe(self) -> None:
        for subscription in self._subscriptions:
            self.node.destroy_subscription(subscription)
        self._subscriptions = []

    def clear(self) -> None:
        for camera in self.cameras.values():
            camera.clear()

    def close(self) -> None:
        self.unsubscribe()
        self._spin.close([self.node], 5.0)

    def _add(self, msg_type: type, topic: str, callback: Callable[[Any], None]) -> None:
        def guarded(msg: Any) -> None:
            try:
                callback(msg)
            except Exception as exc:  # noqa: BLE001 - one bad message must not stop intake
                self._logger.warning(f"camera message dropped: {exc}", throttle_duration_sec=5.0)

        self._subscriptions.append(
            self.node.create_subscription(msg_type, topic, guarded, CAMERA_QOS)
        )

    def _on_image(self, camera: Camera) -> Callable[[Any], None]:
        return lambda msg: camera.images.put(msg, stamp_to_seconds(msg.header.stamp),
                                             self._clock_s())

    @staticmethod
    def _on_depth(camera: Camera) -> Callable[[Any], None]:
        return lambda msg: camera.depth.put(msg, stamp_to_seconds(msg.header.stamp))

    @staticmethod
    def _on_camera_info(camera: Camera) -> Callable[[Any], None]:
        def store(msg: CameraInfo) -> None:
            camera.camera_info = msg

        return store
