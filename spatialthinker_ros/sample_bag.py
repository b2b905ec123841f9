"""`spatialthinker-ros make-sample-bag`: a small synthetic RGB-D camera bag for demos and tests.

A red cube left of a blue ball on a grey floor, drifting a little from frame to frame, with an
aligned 16UC1 depth image (millimetres) and camera_info, at 10 Hz.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.rosbag2.enums import CompressionFormat, CompressionMode

from .bag_types import make_typestore, new_message

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


@dataclass(frozen=True)
class SampleFrame:
    rgb: np.ndarray  # HxWx3 uint8
    depth_mm: np.ndarray  # HxW uint16
    stamp_ns: int


def render_frame(index: int) -> SampleFrame:
    """Floor at 3 m, cube at 1.5 m on the left, ball at 2 m on the right."""
    rgb = np.full((HEIGHT, WIDTH, 3), (128, 128, 128), np.uint8)
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
    return SampleFrame(rgb, depth, START_NS + index * 100_000_000)


def write_sample_bag(
    out: Path, frames: int = 5, storage: str = "mcap", compression: str = "none"
) -> Path:
    """Write the bag (the directory must not exist) and return its path."""
    store = make_typestore()
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    if compression == "storage" and storage != "mcap":
        raise ValueError("storage (chunk) compression needs MCAP")
    writer = Writer(out, version=9, storage_plugin=plugin)
    if compression != "none":
        writer.set_compression(COMPRESSION[compression], CompressionFormat.ZSTD)
    with writer:
        conns = {
            IMAGE_TOPIC: writer.add_connection(
                IMAGE_TOPIC, "sensor_msgs/msg/Image", typestore=store
            ),
            DEPTH_TOPIC: writer.add_connection(
                DEPTH_TOPIC, "sensor_msgs/msg/Image", typestore=store
            ),
            CAMERA_INFO_TOPIC: writer.add_connection(
                CAMERA_INFO_TOPIC, "sensor_msgs/msg/CameraInfo", typestore=store
            ),
        }
        for i in range(frames):
            frame = render_frame(i)
            header = new_message(
                store,
                "std_msgs/msg/Header",
                stamp=new_message(
                    store,
                    "builtin_interfaces/msg/Time",
                    sec=frame.stamp_ns // 10**9,
                    nanosec=frame.stamp_ns % 10**9,
                ),
                frame_id=FRAME_ID,
            )
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
            for topic, msg, msgtype in (
                (IMAGE_TOPIC, image, "sensor_msgs/msg/Image"),
                (DEPTH_TOPIC, depth, "sensor_msgs/msg/Image"),
                (CAMERA_INFO_TOPIC, info, "sensor_msgs/msg/CameraInfo"),
            ):
                writer.write(conns[topic], frame.stamp_ns, store.serialize_cdr(msg, msgtype))
    return out


def add_make_sample_bag_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", type=Path, help="output bag directory (must not exist)")
    parser.add_argument("--storage", choices=["mcap", "sqlite3"], default="mcap")
    parser.add_argument("--frames", type=int, default=5)
    parser.add_argument(
        "--compression", choices=list(COMPRESSION), default="none", help="zstd, as rosbag2 does"
    )


def make_sample_bag_main(args: argparse.Namespace) -> int:
    if args.out.exists():
        raise SystemExit(f"spatialthinker-ros: error: {args.out} exists")
    try:
        write_sample_bag(args.out, args.frames, args.storage, args.compression)
    except ValueError as exc:
        raise SystemExit(f"spatialthinker-ros: error: {exc}") from None
    print(
        f"wrote {args.frames} frames to {args.out} ({args.storage}): "
        f"{IMAGE_TOPIC} (rgb8), {DEPTH_TOPIC} (16UC1), {CAMERA_INFO_TOPIC}"
    )
    return 0
