"""`replay` throughput with N frames in flight (`--concurrency N`) against a remote server.

A local OpenAI-compatible server that takes a fixed time per request (the scripted test server
in delay mode, answering the fitted test model's output; each request runs on its own thread,
like a server that batches everything in flight): frames/s at N = 1, 4, 16 against the ideal
N / delay, and whether the output (bag and JSONL, without timings) equals N = 1's. This isolates
the client (bag reading, image conversion, resize + PNG encode, HTTP, parse, 3D positions,
messages, debug image, bag writing) from the model. The path measured is
`replay.run_replay`, the code behind `spatialthinker-ros replay`.

    PYTHONPATH=. .venv/bin/python bench/replay_throughput.py          # about 2-3 minutes
    PYTHONPATH=. .venv/bin/python bench/replay_throughput.py --delay 2 --frames 32
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO_ROOT, machine_line, print_table, require_loopback_only

sys.path.insert(0, str(REPO_ROOT / "test"))  # the scripted server lives with the tests


def bag_content(path: Path) -> list[tuple[str, int, bytes]]:
    """(topic, bag ns, CDR) of every message but the answers (their inference_time varies)."""
    from rosbags.rosbag2 import Reader

    with Reader(path) as reader:
        return [
            (c.topic, ns, bytes(raw))
            for c, ns, raw in reader.messages()
            if not c.topic.endswith("/answer")
        ]


def jsonl_content(path: Path) -> list[dict]:
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "timings_s"} for r in records]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=32, help="frames per camera")
    parser.add_argument("--cameras", type=int, default=2)
    parser.add_argument("--delay", type=float, default=0.5, help="seconds per request")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    args = parser.parse_args()
    require_loopback_only()

    from servers.scripted_openai import ScriptedOpenAIServer

    from spatialthinker_ros.core.engine import EngineConfig, SpatialThinkerEngine
    from spatialthinker_ros.replay import ReplayConfig, run_replay
    from spatialthinker_ros.replay_config import camera_topics
    from spatialthinker_ros.sample_bag import sample_camera, write_sample_bag
    from spatialthinker_ros.testing.tiny_model import EXAMPLE_OUTPUT

    print(machine_line())
    frames = args.frames * args.cameras
    with tempfile.TemporaryDirectory(prefix="replay_throughput_") as tmp:
        work = Path(tmp)
        bag = write_sample_bag(work / "in", frames=args.frames, cameras=args.cameras)
        cams = [sample_camera(k) for k in range(args.cameras)]
        cameras = camera_topics(
            [c.image_topic for c in cams],
            [c.depth_topic for c in cams],
            [c.camera_info_topic for c in cams],
        )
        server = ScriptedOpenAIServer().start()
        server.script.delay_s = args.delay
        server.script.chunks = [EXAMPLE_OUTPUT]
        server.script.usage = (500, 190)
        engine = SpatialThinkerEngine(
            EngineConfig(model="scripted", backend="openai", base_url=server.base_url,
                         timeout_s=120)
        )
        engine.load()
        rows, baseline = [], None
        try:
            for n in args.concurrency:
                config = ReplayConfig(
                    in_bag=bag,
                    out_bag=work / f"out{n}",
                    cameras=cameras,
                    questions=("Where is the red cube relative to the blue ball?",),
                    choices=("left", "right"),
                    concurrency=n,
                    jsonl=work / f"r{n}.jsonl",
                    progress=False,
                )
                t0 = time.perf_counter()
                summary = run_replay(config, engine)
                wall = time.perf_counter() - t0
                assert summary.frames_answered == frames, summary.describe()
                content = (bag_content(work / f"out{n}"), jsonl_content(work / f"r{n}.jsonl"))
                baseline = content if baseline is None else baseline
                ideal = min(n, frames) / args.delay
                rate = frames / wall
                rows.append([n, frames, f"{wall:.2f}", f"{rate:.2f}", f"{ideal:.2f}",
                             f"{rate / ideal:.0%}", "yes" if content == baseline else "NO"])
        finally:
            engine.unload()
            server.stop()
    print(
        f"\n### Fixed {args.delay:g} s per request, {args.cameras} cameras x {args.frames} "
        "frames of 640x480 rgb8 + 16UC1 depth\n"
    )
    print_table(["N", "frames", "wall s", "frames/s", "ideal", "of ideal", "= N=1"], rows)


if __name__ == "__main__":
    main()
