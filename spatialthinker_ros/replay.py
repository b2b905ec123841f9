"""`spatialthinker-ros replay`: the perception pipeline over a rosbag2 (MCAP or sqlite3), no ROS.

Reads one or more cameras' images (Image or CompressedImage, plus optional aligned depth and
CameraInfo matched by stamp), answers one or more questions on each selected frame, and writes
an output bag with the images used, SceneGraph and SpatialAnswer messages, annotated images and
markers, each stamped with the source image's header; optionally a JSONL of results and the
annotated frames. The reading side (`replay_frames`) yields frames to answer, `ordered_map`
keeps `concurrency` of them in flight, and the writing side (`replay_answers`) writes the
outcomes in input order.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import threading
import time
from pathlib import Path

from tqdm import tqdm

from .arguments import (
    add_stop_after_argument,
    concurrency_problem,
    engine_config_from_args,
    fail,
)
from .bag_io import OutputError, OutputPaths, ReplayError, ReplayOutputs, sigint_deferred
from .bag_types import make_typestore
from .core.concurrency import ordered_map
from .core.engine import SpatialThinkerEngine
from .replay_answers import FrameAnswerer, OutcomeWriter
from .replay_config import ReplayConfig, ReplaySummary, camera_topics
from .replay_frames import FrameReader, ReplayInput, prepare_replay

__all__ = ["ReplayConfig", "ReplayError", "ReplaySummary", "prepare_replay", "run_replay"]


def run_replay(
    config: ReplayConfig, engine: SpatialThinkerEngine, prepared: ReplayInput | None = None
) -> ReplaySummary:
    """Replay `config.in_bag` through a loaded engine; the output bag is always closed.
    `prepared` (from `prepare_replay`) is used and closed; without it the checks run here.
    Ctrl-C ends the run early (`summary.interrupted`), requests in flight stopped."""
    t0 = time.perf_counter()
    summary = ReplaySummary(answered_by_camera={c.name: 0 for c in config.cameras})
    prepared = prepared or prepare_replay(config)
    bag = prepared.bag
    store = make_typestore()
    stop = threading.Event()  # set by ordered_map when the run ends early: requests give up
    try:
        paths = OutputPaths(config.out_bag, config.jsonl, config.save_frames)
        counts = [bag.topics[c.image].count for c in config.cameras]
        bar = tqdm(
            total=sum(counts) if min(counts) >= 0 else None,
            unit="img",
            disable=not (config.progress and sys.stderr.isatty()),
            desc="replay",
        )
        reader = FrameReader(config, store, summary, on_image=bar.update)
        answer = FrameAnswerer(config, engine, store, stop)
        outputs = None
        try:
            # Ctrl-C while the outputs open is taken once they can be closed readable.
            with sigint_deferred(raise_after=False) as opening:
                outputs = ReplayOutputs(paths, config.storage or bag.storage, store)
            with outputs:
                if opening.requested:
                    raise KeyboardInterrupt
                writer = OutcomeWriter(outputs, summary)
                frames = reader.work(prepared)
                outcomes = ordered_map(answer, frames, config.concurrency, stop=stop)
                # On the way out (Ctrl-C, a failed output): stop and wait for the requests in
                # flight, then stop reading, then close the outputs.
                with contextlib.closing(frames), contextlib.closing(outcomes):
                    for outcome in outcomes:
                        writer.write(outcome)
        except KeyboardInterrupt:
            summary.interrupted = True
        except OutputError as exc:
            summary.output_error = str(exc)
        finally:
            bar.close()
            summary.bag_cut = outputs is not None and outputs.bag.close_failed
    finally:
        bag.close()
    summary.elapsed_s = time.perf_counter() - t0
    return summary


# --- the command line --------------------------------------------------------------------------
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
    # Cameras: --image-topic repeats; --depth-topic / --camera-info-topic once per camera.
    parser.add_argument(
        "--image-topic",
        required=True,
        action="append",
        dest="image_topics",
        metavar="[NAME=]TOPIC",
        help="sensor_msgs/Image or CompressedImage; repeat for several cameras (NAME: the "
        "camera's name in the outputs; default: the topic's namespace)",
    )
    parser.add_argument(
        "--depth-topic",
        action="append",
        default=[],
        dest="depth_topics",
        metavar="TOPIC",
        help="aligned depth (16UC1 mm or 32FC1 m); once per camera, in --image-topic's order "
        '("" for a camera without)',
    )
    parser.add_argument(
        "--camera-info-topic",
        action="append",
        default=[],
        dest="camera_info_topics",
        metavar="TOPIC",
        help="once per camera, as --depth-topic",
    )
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
        "--every", type=_at_least(1, int), default=1, metavar="N",
        help="answer every Nth image of each camera",
    )
    pace.add_argument(
        "--rate",
        type=_at_least(0, float, " (0: off)"),
        default=0.0,
        metavar="HZ",
        help="at most HZ per bag second and camera",
    )
    parser.add_argument(
        "--max-frames", type=_at_least(0, int, " (0: all)"), default=0, metavar="N",
        help="per camera",
    )
    parser.add_argument(
        "--concurrency",
        type=_at_least(1, int),
        default=1,
        metavar="N",
        help="frames in flight (--backend openai only: the server batches them); results are "
        "written in bag order, the same as with 1",
    )
    parser.add_argument("--out", type=Path, required=True, help="output bag directory")
    parser.add_argument(
        "--storage", choices=["mcap", "sqlite3"], default="", help="default: input's"
    )
    parser.add_argument("--jsonl", type=Path, help="write one JSON result per frame")
    parser.add_argument("--save-frames", type=Path, metavar="DIR", help="annotated frames as PNG")
    parser.add_argument("--prefix", default="/spatialthinker", help="output topic prefix")
    parser.add_argument(
        "--target-frame",
        default="",
        metavar="FRAME",
        help="positions and sizes in this tf2 frame (e.g. base_link), from the bag's /tf and "
        "/tf_static at each image's stamp (needs tf2_py); default: each camera's own frame",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_stop_after_argument(parser)


def replay_main(args: argparse.Namespace) -> int:
    try:  # preflight: cameras, input, topics, output paths; then the backend; then the model
        config = ReplayConfig(
            in_bag=args.in_bag,
            out_bag=args.out,
            cameras=camera_topics(args.image_topics, args.depth_topics, args.camera_info_topics),
            questions=tuple(args.questions),
            choices=tuple(args.choices),
            every=args.every,
            rate_hz=args.rate,
            max_frames=args.max_frames,
            concurrency=args.concurrency,
            storage=args.storage,
            prefix=args.prefix.rstrip("/"),
            jsonl=args.jsonl,
            save_frames=args.save_frames,
            progress=not args.quiet,
            stop_after=args.stop_after,
            target_frame=args.target_frame,
        )
        prepared = prepare_replay(config)
    except ReplayError as exc:
        return fail(exc)
    try:
        engine = SpatialThinkerEngine(engine_config_from_args(args))
        for question in config.questions:  # the engine's own rule, before the model loads
            engine.check_question(question, config.choices)
        problem = concurrency_problem(config.concurrency, engine.backend)
        if problem is None:
            engine.load()
    except BaseException:
        prepared.bag.close()
        raise
    if problem is not None:
        prepared.bag.close()
        return fail(problem)
    try:
        summary = run_replay(config, engine, prepared)
    except ReplayError as exc:
        return fail(exc)
    finally:
        engine.unload()
    print(f"{summary.describe()}\noutput bag: {args.out}")
    if summary.output_error:
        fail(summary.output_error)
        return 1
    if summary.interrupted:
        return 130
    # As eval: 1 when frames went unanswered (input cut short, inference failed).
    return 1 if summary.stopped_early or summary.inference_errors else 0
