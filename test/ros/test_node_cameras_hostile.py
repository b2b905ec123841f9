"""Hostile camera drivers against the live node: odd encodings, broken buffers, bad stamps and
frame ids, unusable depth and CameraInfo, compressed garbage, stamps that go backwards.

Real rclpy in a loopback-only namespace, the real engine on the fitted tiny model (held between
tokens by `GatedEngine` where a request must wait in the queue). Every request gets exactly one
answer with a status and a one-line reason, about (the header of) the frame it was answered
about, and the node keeps serving.
"""

from __future__ import annotations

import struct
import zlib
from typing import Any

import numpy as np
import pytest

pytest.importorskip("rclpy")

import rclpy  # noqa: E402
from builtin_interfaces.msg import Time  # noqa: E402
from diagnostic_msgs.msg import DiagnosticStatus  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import CameraInfo, CompressedImage, Image  # noqa: E402
from test_node import (  # noqa: E402
    CHOICES,
    QUESTION,
    WAIT_S,
    GatedEngine,
    wait_future,
    wait_until,
)

from spatialthinker_ros.core.images import encode_jpeg  # noqa: E402

RNG = np.random.default_rng(7)
RGB = RNG.integers(0, 256, (480, 640, 3), dtype=np.uint8)
K = [500.0, 0.0, 320.0, 0.0, 500.0, 240.0, 0.0, 0.0, 1.0]


def stamp_at(harness, offset_s: float) -> Time:
    return (harness.client.get_clock().now()
            + rclpy.duration.Duration(nanoseconds=int(offset_s * 1e9))).to_msg()


def image(width: int, height: int, encoding: str, step: int, data: bytes, stamp: Time,
          frame_id: str, is_bigendian: int = 0) -> Image:
    msg = Image(width=width, height=height, encoding=encoding, step=step,
                is_bigendian=is_bigendian)
    msg.header.stamp, msg.header.frame_id = stamp, frame_id
    msg.data = data
    return msg


def rgb8(stamp: Time, frame_id: str) -> Image:
    return image(640, 480, "rgb8", 640 * 3, RGB.tobytes(), stamp, frame_id)


def deliver(harness, msg: Any, publisher=None) -> None:
    """Publish `msg` and wait until the node holds it as the newest frame."""
    (publisher or harness.image_pub).publish(msg)
    camera = harness.node.intake.camera("")

    def holds() -> bool:
        frame = camera.images.peek()
        return (frame is not None and frame.message.header.stamp == msg.header.stamp
                and frame.message.header.frame_id == msg.header.frame_id)
    wait_until(holds, what=f"the node to hold frame {msg.header.frame_id[:40]!r}")


def ask_not_before(harness, not_before: Time, request_id: str):
    request = harness.AskSpatial.Request(question=QUESTION, choices=CHOICES,
                                         request_id=request_id, not_before=not_before)
    return harness.ask_client.call_async(request)


def test_not_before_holds_when_the_camera_stamps_go_backwards(make_harness) -> None:
    """A request admitted on a frame stamped after its not_before waits in the queue; meanwhile
    the camera's stamps jump back (a driver restart, a time sync step, a looping bag). Before,
    the worker answered about the newest frame, stamped before not_before, with status OK."""
    harness = make_harness(engine_factory=lambda c: GatedEngine(c, hold_after="<observe>"))
    a = harness.SpatialAnswer
    engine = harness.engine
    deliver(harness, rgb8(stamp_at(harness, -2.0), "before"))
    running = harness.ask_async(request_id="running")
    assert engine.entered.wait(WAIT_S)

    not_before = stamp_at(harness, -1.0)
    deliver(harness, rgb8(stamp_at(harness, 0.0), "after"))
    queued = ask_not_before(harness, not_before, "queued")
    wait_until(lambda: harness.node.worker.stats.queue_depth == 1, what="the queued request")
    jumped = rgb8(stamp_at(harness, -1.5), "jumped_back")
    deliver(harness, jumped)

    engine.release.set()
    assert wait_future(running).answer.status == a.STATUS_OK
    answer = wait_future(queued).answer
    stamp_s = answer.header.stamp.sec + answer.header.stamp.nanosec * 1e-9
    not_before_s = not_before.sec + not_before.nanosec * 1e-9
    assert answer.status != a.STATUS_OK or stamp_s >= not_before_s, (
        f"answered about a frame stamped {not_before_s - stamp_s:.2f} s before not_before")
    assert answer.status == a.STATUS_STALE_IMAGE, answer.status_message
    assert "not_before" in answer.status_message and "\n" not in answer.status_message
    assert answer.header.stamp == jumped.header.stamp
    assert answer.header.frame_id == "jumped_back"
    # The node keeps serving: a fresh frame is answered.
    fresh = rgb8(stamp_at(harness, 0.0), "fresh")
    deliver(harness, fresh)
    again = wait_future(ask_not_before(harness, not_before, "again")).answer
    assert again.status == a.STATUS_OK and again.header.frame_id == "fresh"


def camera_info(stamp: Time, k: list[float], width: int = 640, height: int = 480) -> CameraInfo:
    info = CameraInfo(width=width, height=height)
    info.header.stamp, info.k = stamp, k
    return info


def depth_mm(stamp: Time, value_mm: int, width: int = 640, height: int = 480) -> Image:
    data = np.full((height, width), value_mm, dtype=np.uint16).tobytes()
    return image(width, height, "16UC1", width * 2, data, stamp, "depth")


def test_depth_and_camera_info_problems_are_named_in_the_answer(make_harness) -> None:
    """With use_depth, an answer whose objects got no 3D position says why in status_message.
    Before: status OK, an empty message, and no position, whatever was wrong (AlignedDepth's
    reason was never read)."""
    harness = make_harness(use_depth=True)
    a = harness.SpatialAnswer
    camera = harness.node.intake.camera("")

    def ask_about(frame_id: str, info: CameraInfo | None = None,
                  depth: Image | None = None, stamp: Time | None = None,
                  depth_frame: str = "") -> Any:
        stamp = stamp or stamp_at(harness, 0.0)
        if info is not None:
            info.header.stamp = stamp
            harness.info_pub.publish(info)
            wait_until(lambda: camera.camera_info is not None
                       and camera.camera_info.header.stamp == stamp, what="camera_info")
        if depth is not None:
            depth.header.stamp = depth.header.stamp if depth.header.stamp.sec else stamp
            depth.header.frame_id = depth_frame or frame_id  # aligned: the image's frame
            harness.depth_pub.publish(depth)
            wait_until(lambda: camera.depth.newest() is not None
                       and camera.depth.newest().header.stamp == depth.header.stamp,
                       what="the depth frame")
        frame = rgb8(stamp, frame_id)
        deliver(harness, frame)
        answer = harness.ask()
        assert answer.status in (a.STATUS_OK, a.STATUS_PARTIAL), answer.status_message
        assert answer.header.stamp == stamp and answer.header.frame_id == frame_id
        assert "\n" not in answer.status_message
        return answer

    no_info = ask_about("no_info")
    assert "no camera_info received" in no_info.status_message
    zero_k = ask_about("zero_k", camera_info(Time(), [0.0] * 9), depth_mm(Time(), 2000))
    assert "camera_info has no usable intrinsics" in zero_k.status_message
    bad_depth = image(640, 480, "rgb8", 1920, bytes(10), Time(), "depth")
    undecodable = ask_about("bad_depth", camera_info(Time(), K), bad_depth)
    assert "depth image:" in undecodable.status_message
    far = ask_about("far_depth", depth=depth_mm(Time(sec=1), 2000))
    assert "depth_stamp_tolerance_s = 0.05 s" in far.status_message
    nan = np.full((480, 640), np.nan, dtype=np.float32).tobytes()
    invalid = ask_about("nan_depth", depth=image(640, 480, "32FC1", 2560, nan, Time(), "depth"))
    assert "too few valid depth pixels" in invalid.status_message
    assert "cube.1" in invalid.status_message
    # Issue 21: another camera's depth (its own frame_id) was used as if aligned.
    crossed = ask_about("crossed", depth=depth_mm(Time(), 2000), depth_frame="cam2_depth")
    assert "the depth image is in frame 'cam2_depth'" in crossed.status_message
    for answer in (no_info, zero_k, undecodable, far, invalid, crossed):
        assert not any(o.has_position for o in answer.scene_graph.objects)
    # Half-size depth, CameraInfo of a double-size stream: scaled, positions, no note.
    half = depth_mm(Time(), 2000, 320, 240)
    good = ask_about("good", camera_info(Time(), [v * 2 for v in K[:8]] + [1.0], 1280, 960),
                     half)
    assert all(o.has_position for o in good.scene_graph.objects)
    assert good.scene_graph.objects[0].position.z == pytest.approx(2.0, abs=1e-3)
    assert "3D" not in good.status_message


def png_header_only(width: int, height: int) -> bytes:
    """A PNG claiming width x height with an empty IDAT: a decompression bomb's shape."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b""))
            + chunk(b"IEND", b""))


def compressed(stamp: Time, frame_id: str, data: bytes, fmt: str = "jpeg") -> CompressedImage:
    msg = CompressedImage(format=fmt, data=data)
    msg.header.stamp, msg.header.frame_id = stamp, frame_id
    return msg


def test_hostile_frames_each_get_one_answer_about_their_own_header(make_harness) -> None:
    """Odd encodings, broken buffers, compressed garbage, odd frame ids and stamps on the raw and
    compressed topics (both publishing): one answer each, with a status and a one-line reason,
    carrying that frame's header; the node keeps serving."""
    harness = make_harness(use_compressed=True)
    a = harness.SpatialAnswer
    reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    compressed_pub = harness.client.create_publisher(CompressedImage, "image/compressed",
                                                      reliable)
    gray16 = RNG.integers(0, 65536, (480, 640), dtype=np.uint16)
    depth = (RNG.random((480, 640), dtype=np.float32) * 5.0)
    depth[0], depth[1], depth[2], depth[3] = np.nan, np.inf, -1.0, 0.0
    bgr = np.zeros((480, 2000), dtype=np.uint8)
    bgr[:, :1920] = RGB[..., ::-1].reshape(480, 1920)
    answered_ok = [
        # (message, topic): the model answers (OK, or PARTIAL for boxes that do not fit).
        (image(640, 480, "bgr8", 2000, bgr.tobytes(), stamp_at(harness, 0), "bgr8_padded",
               is_bigendian=1), None),
        (image(640, 480, "mono16", 1280, gray16.byteswap().tobytes(), stamp_at(harness, 0),
               "mono16_big", is_bigendian=1), None),
        (image(640, 480, "32FC1", 2560, depth.tobytes(), stamp_at(harness, 0), "depth_nan_inf"),
         None),
        (rgb8(Time(), ""), None),  # zero stamp, empty frame_id
        (rgb8(Time(sec=-5, nanosec=7), "neg/\u00fc n\u00e4me \u2603\t" + "x" * 2000), None),
        (compressed(stamp_at(harness, 0), "jpeg", encode_jpeg(RGB)), compressed_pub),
    ]
    refused = [
        # (message, topic, words of the reason)
        (image(640, 480, "yuv422", 1280, bytes(1280 * 480), stamp_at(harness, 0), "yuv"), None,
         "unsupported image encoding 'yuv422'"),
        (image(640, 480, "bayer_rggb8", 640, bytes(640 * 480), stamp_at(harness, 0), "bayer"),
         None, "unsupported image encoding 'bayer_rggb8'"),
        (image(640, 480, "rgb8", 1920, bytes(100), stamp_at(harness, 0), "short"), None,
         "fewer than step x height"),
        (image(0, 0, "rgb8", 0, b"", stamp_at(harness, 0), "empty"), None,
         "image size must be positive"),
        (image(2**31, 2**31, "rgb8", 0, b"", stamp_at(harness, 0), "huge"), None,
         "exceeds the limit"),
        (image(2000, 5, "rgb8", 6000, bytes(6000 * 5), stamp_at(harness, 0), "sliver"), None,
         "aspect ratio of 2000 x 5 exceeds 200"),
        (compressed(stamp_at(harness, 0), "c_empty", b""), compressed_pub, "data is empty"),
        (compressed(stamp_at(harness, 0), "c_garbage", b"\xff\xd8garbage" * 50),
         compressed_pub, "cannot decode compressed image"),
        (compressed(stamp_at(harness, 0), "c_bomb", png_header_only(7000, 7000), "png"),
         compressed_pub, "exceeds the limit"),
    ]
    for msg, publisher in answered_ok:
        deliver(harness, msg, publisher)
        answer = harness.ask(request_id=msg.header.frame_id[:20])
        assert answer.status in (a.STATUS_OK, a.STATUS_PARTIAL), (msg.header.frame_id[:20],
                                                                  answer.status_message)
        assert answer.header.stamp == msg.header.stamp
        assert answer.header.frame_id == msg.header.frame_id
        assert answer.scene_graph.header.frame_id == msg.header.frame_id
    for msg, publisher, reason in refused:
        deliver(harness, msg, publisher)
        answer = harness.ask(request_id=msg.header.frame_id)
        assert answer.status == a.STATUS_INFERENCE_ERROR, msg.header.frame_id
        assert reason in answer.status_message and "\n" not in answer.status_message
        assert len(answer.status_message) <= 300
        assert answer.header.stamp == msg.header.stamp
        assert answer.header.frame_id == msg.header.frame_id
        assert answer.request_id == msg.header.frame_id
        if msg.header.frame_id == "bayer":  # the camera's diagnostics say why, not "receiving"
            camera = harness.diagnostics(lambda v: "bayer_rggb8" in v["_message"],
                                         status="camera")
            assert camera["_level"] == DiagnosticStatus.WARN
            assert camera["_message"].startswith("frames cannot be converted: unsupported")
    stats = harness.node.stats_snapshot()
    assert stats["inference_errors"] == len(refused)
    assert stats["image_conversion_errors"] == len(refused) - 1  # the sliver decodes
    deliver(harness, rgb8(stamp_at(harness, 0), "good again"))
    assert harness.ask().status in (a.STATUS_OK, a.STATUS_PARTIAL)
    camera = harness.diagnostics(lambda v: v["_message"] == "receiving", status="camera")
    assert int(camera["conversion_errors"]) == len(refused) - 1

    # A burst on both topics while requests arrive: each answer is about one frame that was
    # published, with that frame's own header (stamp and frame_id together).
    sent: dict[tuple[int, int], str] = {}
    futures = []
    for i in range(60):
        stamp = stamp_at(harness, 0)
        msg = (compressed(stamp, f"burst_c{i}", encode_jpeg(RGB[:240, :320]), "jpeg")
               if i % 2 else rgb8(stamp, f"burst_r{i}"))
        sent[(stamp.sec, stamp.nanosec)] = msg.header.frame_id
        (compressed_pub if i % 2 else harness.image_pub).publish(msg)
        if i % 20 == 5:
            futures.append(harness.ask_async(request_id=f"burst-{i}"))
    for future in futures:
        answer = wait_future(future).answer
        assert answer.status in (a.STATUS_OK, a.STATUS_PARTIAL), answer.status_message
        key = (answer.header.stamp.sec, answer.header.stamp.nanosec)
        assert sent.get(key) == answer.header.frame_id
        graph = answer.scene_graph
        size = (320, 240) if answer.header.frame_id.startswith("burst_c") else (640, 480)
        assert (graph.image_width, graph.image_height) == size
    assert harness.node.stats_snapshot()["state"] == "active"
