"""`spatialthinker-ros make-sample-bag`: a small synthetic RGB-D camera bag for demos and tests.

A red cube left of a blue ball on a grey floor, drifting a little from frame to frame, with an
aligned 16UC1 depth image (millimetres) and camera_info, at 10 Hz. With several cameras
(`cameras=N`), camera k (from 0) is `sample_camera(k)`: the first on today's topics, the others
under `/camera<k+1>/`, each k x 0.5 m further back (its depths), k x 10 ms late (its stamps)
and with a darker floor, so that every camera's answers, stamps and 3D positions are its own.

With `tf=True` the bag also holds /tf_static (each camera's optical frame on `base_link`:
`camera_mount(k)`) and a moving /tf (`base_link` in `odom`: `base_pose(t)`, driving at
SPEED_M_S along odom's x while turning at YAW_RATE_RAD_S, at 20 Hz, stamps between the images'
and from 0.5 s before the first image to 1 s after the last), so that replay --target-frame
can be checked against R p + t at each image's stamp.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.rosbag2.enums import CompressionFormat, CompressionMode

from .arguments import fail
from .bag_types import make_typestore, new_message
from .core.files import creatable_problem
from .core.transforms import RigidTransform
from .replay_tf import TF_MESSAGE, TF_STATIC_TOPIC, TF_TOPIC

IMAGE_TOPIC = "/camera/image_raw"
DEPTH_TOPIC = "/camera/depth/image_raw"
CAMERA_INFO_TOPIC = "/camera/camera_info"
FRAME_ID = "camera_color_optical_frame"
WIDTH, HEIGHT = 640, 480
FX = FY = 525.0
START_NS = 1_700_000_000 * 10**9
# rosbag2's zstd modes: each message, each MCAP chunk ("storage"), or the whole file (.zstd).
COMPRESSION = {
    "none": CompressionMode.NONE,
    "message": CompressionMode.MESSAGE,
    "storage": CompressionMode.STORAGE,
    "file": CompressionMode.FILE,
}


MAX_CAMERAS = 9  # camera k is k x 10 ms late: all within one 100 ms frame period

# --tf: frames and motion (see the module docstring).
BASE_FRAME, ODOM_FRAME = "base_link", "odom"
CAMERA_HEIGHT_M, CAMERA_FORWARD_M, CAMERA_SPACING_M = 1.1, 0.25, 0.15
CAMERA_PITCH_RAD = math.radians(20.0)  # looking down
SPEED_M_S, YAW_RATE_RAD_S = 0.5, 0.2
TF_PERIOD_NS, TF_OFFSET_NS = 50_000_000, 13_000_000
# optical (x right, y down, z ahead) -> base_link (x ahead, y left, z up), as x y z w
OPTICAL_IN_BASE = (-0.5, 0.5, -0.5, 0.5)


@dataclass(frozen=True)
class SampleCamera:
    image_topic: str
    depth_topic: str
    camera_info_topic: str
    frame_id: str
    depth_offset_mm: int
    stamp_offset_ns: int
    floor_grey: int


def sample_camera(k: int) -> SampleCamera:
    """Camera k of a sample bag (k = 0: today's single camera)."""
    if not 0 <= k < MAX_CAMERAS:
        raise ValueError(f"camera {k}: a sample bag has cameras 0 to {MAX_CAMERAS - 1}")
    if k == 0:
        return SampleCamera(IMAGE_TOPIC, DEPTH_TOPIC, CAMERA_INFO_TOPIC, FRAME_ID, 0, 0, 128)
    ns = f"/camera{k + 1}"
    return SampleCamera(
        f"{ns}/image_raw",
        f"{ns}/depth/image_raw",
        f"{ns}/camera_info",
        f"camera{k + 1}_color_optical_frame",
        depth_offset_mm=500 * k,
        stamp_offset_ns=10_000_000 * k,
        floor_grey=128 - 12 * k,
    )


def _multiply(a: tuple[float, ...], b: tuple[float, ...]) -> tuple[float, float, float, float]:
    """Quaternion product a * b (x y z w): rotate by b, then by a."""
    ax, ay, az, aw = a
    bx, by, bz, bw = b
    return (aw * bx + ax * bw + ay * bz - az * by, aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw, aw * bw - ax * bx - ay * by - az * bz)


def camera_mount(k: int) -> RigidTransform:
    """Camera k's optical frame in base_link (static): CAMERA_FORWARD_M ahead, k x
    CAMERA_SPACING_M to the right, CAMERA_HEIGHT_M up, pitched down by CAMERA_PITCH_RAD."""
    half = CAMERA_PITCH_RAD / 2.0
    q = _multiply((0.0, math.sin(half), 0.0, math.cos(half)), OPTICAL_IN_BASE)
    return RigidTransform.from_xyzq(CAMERA_FORWARD_M, -CAMERA_SPACING_M * k, CAMERA_HEIGHT_M, *q,
                                    target_frame=BASE_FRAME,
                                    source_frame=sample_camera(k).frame_id)


def base_pose(stamp_ns: int) -> RigidTransform:
    """base_link in odom at `stamp_ns`: SPEED_M_S along x and YAW_RATE_RAD_S about z since
    START_NS."""
    dt = (stamp_ns - START_NS) / 1e9
    half = YAW_RATE_RAD_S * dt / 2.0
    return RigidTransform.from_xyzq(SPEED_M_S * dt, 0.0, 0.0, 0.0, 0.0, math.sin(half),
                                    math.cos(half), target_frame=ODOM_FRAME,
                                    source_frame=BASE_FRAME, stamp_ns=stamp_ns)


@dataclass(frozen=True)
class SampleFrame:
    rgb: np.ndarray  # HxWx3 uint8
    depth_mm: np.ndarray  # HxW uint16
    stamp_ns: int


def render_frame(index: int, camera: int = 0) -> SampleFrame:
    """Floor at 3 m, cube at 1.5 m on the left, ball at 2 m on the right (camera 0)."""
    cam = sample_camera(camera)
    rgb = np.full((HEIGHT, WIDTH, 3), cam.floor_grey, np.uint8)
    depth = np.full((HEIGHT, WIDTH), 3000, np.uint16)
    shift = 4 * index
    x0, y0 = 64 + shift, 120
    rgb[y0 : y0 + 240, x0 : x0 + 192] = (220, 30, 30)
    depth[y0 : y0 + 240, x0 : x0 + 192] = 1500
    cy, cx, r = 300, 480 - shift, 96
    yy, xx = np.ogrid[:HEIGHT, :WIDTH]
    ball = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    rgb[ball] = (30, 60, 220)
    depth[ball] = 2000
    depth += np.uint16(cam.depth_offset_mm)
    return SampleFrame(rgb, depth, START_NS + index * 100_000_000 + cam.stamp_offset_ns)


def write_sample_bag(
    out: Path,
    frames: int = 5,
    storage: str = "mcap",
    compression: str = "none",
    cameras: int = 1,
    tf: bool = False,
) -> Path:
    """Write the bag (the directory must not exist) and return its path."""
    if not 1 <= cameras <= MAX_CAMERAS:
        raise ValueError(f"a sample bag has 1 to {MAX_CAMERAS} cameras, not {cameras}")
    cams = [sample_camera(k) for k in range(cameras)]
    store = make_typestore()
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    if compression == "storage" and storage != "mcap":
        raise ValueError("storage (chunk) compression needs MCAP")
    writer = Writer(out, version=9, storage_plugin=plugin)
    if compression != "none":
        writer.set_compression(COMPRESSION[compression], CompressionFormat.ZSTD)
    with writer:
        conns = {}
        for cam in cams:
            for topic, msgtype in (
                (cam.image_topic, "sensor_msgs/msg/Image"),
                (cam.depth_topic, "sensor_msgs/msg/Image"),
                (cam.camera_info_topic, "sensor_msgs/msg/CameraInfo"),
            ):
                conns[topic] = writer.add_connection(topic, msgtype, typestore=store)
        records: list[tuple[int, str, bytes]] = []  # (bag time, topic, CDR), written in order
        if tf:
            for topic in (TF_STATIC_TOPIC, TF_TOPIC):
                conns[topic] = writer.add_connection(topic, TF_MESSAGE, typestore=store)
            records += _tf_records(store, cameras, frames)
        for i in range(frames):
            for k, cam in enumerate(cams):
                frame = render_frame(i, k)
                for topic, msg, msgtype in _camera_messages(store, cam, frame):
                    records.append((frame.stamp_ns, topic, store.serialize_cdr(msg, msgtype)))
        for bag_ns, topic, data in sorted(records, key=lambda r: r[0]):
            writer.write(conns[topic], bag_ns, data)
    return out


def transform_message(store, transform: RigidTransform, stamp_ns: int) -> Any:
    """A geometry_msgs/TransformStamped (rosbags) of `transform` stamped `stamp_ns`."""
    m = "geometry_msgs/msg/"
    x, y, z = transform.translation
    qx, qy, qz, qw = transform.rotation
    return new_message(
        store, m + "TransformStamped", header=_header(store, stamp_ns, transform.target_frame),
        child_frame_id=transform.source_frame,
        transform=new_message(
            store, m + "Transform",
            translation=new_message(store, m + "Vector3", x=x, y=y, z=z),
            rotation=new_message(store, m + "Quaternion", x=qx, y=qy, z=qz, w=qw),
        ),
    )


def _tf_records(store, cameras: int, frames: int) -> list[tuple[int, str, bytes]]:
    static_ns = START_NS - 1_000_000_000
    mounts = [transform_message(store, camera_mount(k), static_ns) for k in range(cameras)]
    static = new_message(store, TF_MESSAGE, transforms=mounts)
    records = [(static_ns, TF_STATIC_TOPIC, store.serialize_cdr(static, TF_MESSAGE))]
    stamp = START_NS - 500_000_000 + TF_OFFSET_NS
    while stamp <= START_NS + frames * 100_000_000 + 1_000_000_000:
        moving = new_message(store, TF_MESSAGE,
                             transforms=[transform_message(store, base_pose(stamp), stamp)])
        records.append((stamp, TF_TOPIC, store.serialize_cdr(moving, TF_MESSAGE)))
        stamp += TF_PERIOD_NS
    return records


def _header(store, stamp_ns: int, frame_id: str) -> Any:
    return new_message(
        store,
        "std_msgs/msg/Header",
        stamp=new_message(
            store, "builtin_interfaces/msg/Time", sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9
        ),
        frame_id=frame_id,
    )


def _camera_messages(store, cam: SampleCamera, frame: SampleFrame) -> list[tuple[str, Any, str]]:
    """(topic, message, type) of one camera's image, depth and camera_info for one frame."""
    header = _header(store, frame.stamp_ns, cam.frame_id)
    image = new_message(
        store,
        "sensor_msgs/msg/Image",
        header=header,
        height=HEIGHT,
        width=WIDTH,
        encoding="rgb8",
        step=WIDTH * 3,
        data=frame.rgb.reshape(-1),
    )
    depth = new_message(
        store,
        "sensor_msgs/msg/Image",
        header=header,
        height=HEIGHT,
        width=WIDTH,
        encoding="16UC1",
        step=WIDTH * 2,
        data=frame.depth_mm.view(np.uint8).reshape(-1),
    )
    k = np.array([FX, 0, WIDTH / 2, 0, FY, HEIGHT / 2, 0, 0, 1], np.float64)
    p = np.array([FX, 0, WIDTH / 2, 0, 0, FY, HEIGHT / 2, 0, 0, 0, 1, 0], np.float64)
    info = new_message(
        store,
        "sensor_msgs/msg/CameraInfo",
        header=header,
        height=HEIGHT,
        width=WIDTH,
        distortion_model="plumb_bob",
        d=np.zeros(5),
        k=k,
        r=np.eye(3).reshape(-1),
        p=p,
    )
    return [
        (cam.image_topic, image, "sensor_msgs/msg/Image"),
        (cam.depth_topic, depth, "sensor_msgs/msg/Image"),
        (cam.camera_info_topic, info, "sensor_msgs/msg/CameraInfo"),
    ]


def add_make_sample_bag_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", type=Path, help="output bag directory (must not exist)")
    parser.add_argument("--storage", choices=["mcap", "sqlite3"], default="mcap")
    parser.add_argument("--frames", type=int, default=5)
    parser.add_argument(
        "--cameras", type=int, default=1, help=f"1 to {MAX_CAMERAS} (the others under /camera<k>/)"
    )
    parser.add_argument(
        "--compression", choices=list(COMPRESSION), default="none", help="zstd, as rosbag2 does"
    )
    parser.add_argument(
        "--tf", action="store_true",
        help=f"also /tf_static (cameras on {BASE_FRAME}) and a moving /tf ({BASE_FRAME} in "
        f"{ODOM_FRAME}) for replay --target-frame",
    )


def make_sample_bag_main(args: argparse.Namespace) -> int:
    if os.path.lexists(args.out):
        return fail(f"{args.out} exists")
    problem = creatable_problem(args.out)
    if problem is not None:
        return fail(problem)
    try:
        write_sample_bag(args.out, args.frames, args.storage, args.compression, args.cameras,
                         args.tf)
    except ValueError as exc:
        return fail(exc)
    except Exception as exc:  # noqa: BLE001 - OSError, rosbags' WriterError: disk full and kin
        shutil.rmtree(args.out, ignore_errors=True)  # ours, and not a usable bag: nothing left
        fail(f"cannot write {args.out}: {exc}")
        return 1
    print(f"wrote {args.frames} frames to {args.out} ({args.storage}):")
    for cam in map(sample_camera, range(args.cameras)):
        print(f"  {cam.image_topic} (rgb8), {cam.depth_topic} (16UC1), {cam.camera_info_topic}")
    if args.tf:
        print(f"  /tf_static (cameras on {BASE_FRAME}), /tf ({BASE_FRAME} in {ODOM_FRAME})")
    return 0
