"""What SpatialThinkerClient adds over raw rclpy calls, against a live node on the fitted tiny
model (CPU): the same question through the `ask` service, the raw action (goal + result), the
client from a node spun by a background executor, and the client self-spinning a plain node.
Also the action feedback messages per answer.

Needs rclpy and the built interfaces, and a loopback-only network namespace:
    . scripts/ros_env.sh && unshare -rn sh -c 'ip link set lo up && \
        ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST .venv/bin/python bench/client_overhead.py'
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from pathlib import Path

from _common import REPO_ROOT, machine_line, measure, ms, print_table, require_loopback_only

QUESTION = "Where is the cube relative to the ball?"
CHOICES = ["left", "right"]


def wait(future, timeout_s: float = 120.0):
    done = threading.Event()
    future.add_done_callback(lambda _f: done.set())
    if not done.wait(timeout_s):
        raise TimeoutError("no response")
    return future.result()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    require_loopback_only()
    import numpy as np
    import rclpy
    from rclpy.action import ActionClient
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.parameter import Parameter
    from sensor_msgs.msg import Image
    from spatialthinker_ros.action import AskSpatial as AskAction
    from spatialthinker_ros.srv import AskSpatial

    from spatialthinker_ros.core.spatial_result import SpatialThinkerError
    from spatialthinker_ros.ros.client import SpatialThinkerClient
    from spatialthinker_ros.ros.node import SpatialThinkerNode
    from spatialthinker_ros.testing.tiny_model import (
        EXAMPLE_OUTPUT,
        FITTED_MAX_PIXELS,
        cached_tiny_model,
    )

    cache = Path(os.environ.get("SPATIALTHINKER_TEST_MODELS",
                                Path.home() / ".cache" / "spatialthinker_ros" / "test-models"))
    model = cached_tiny_model(cache, fit_text=EXAMPLE_OUTPUT)
    rclpy.init()
    params = {"model": str(model), "device": "cpu", "max_pixels": FITTED_MAX_PIXELS,
              "rate_hz": 0.0, "max_image_age_s": 3600.0}
    overrides = [Parameter(k, value=v) for k, v in params.items()]
    node = SpatialThinkerNode(namespace="/bench", parameter_overrides=overrides)
    caller = rclpy.create_node("bench_caller", namespace="/bench")
    executor = MultiThreadedExecutor(num_threads=6)
    executor.add_node(node)
    executor.add_node(caller)
    threading.Thread(target=executor.spin, daemon=True).start()
    node.trigger_configure()
    node.trigger_activate()
    image = Image(width=640, height=480, encoding="rgb8", step=640 * 3)
    image.header.stamp = caller.get_clock().now().to_msg()
    image.data = np.random.default_rng(0).integers(0, 256, 640 * 480 * 3, np.uint8).tobytes()
    caller.create_publisher(Image, "image", 10).publish(image)
    service = caller.create_client(AskSpatial, "ask")
    action = ActionClient(caller, AskAction, "ask")
    client = SpatialThinkerClient(caller)
    client.wait_until_ready(60.0)
    while client.ask(QUESTION, CHOICES, retry_deadline_s=30.0).status.name != "OK":
        pass
    feedback: list[int] = []

    def raw_service(question: str) -> None:
        wait(service.call_async(AskSpatial.Request(question=question, choices=CHOICES)))

    def raw_action(question: str) -> None:
        goal = AskAction.Goal(question=question, choices=CHOICES)
        handle = wait(action.send_goal_async(goal, feedback_callback=lambda f: feedback.append(1)))
        wait(handle.get_result_async())

    def with_client(ask_client: SpatialThinkerClient):
        def call(question: str) -> None:
            try:
                ask_client.ask(question, CHOICES)
            except SpatialThinkerError:  # INVALID_REQUEST: the no-model path
                pass
        return call

    plain = rclpy.create_node("bench_plain", namespace="/bench")  # in no executor
    plain_client = SpatialThinkerClient(plain)
    plain_client.wait_until_ready(60.0)
    calls = (("ask service (raw rclpy)", raw_service),
             ("ask action (raw rclpy)", raw_action),
             ("client.ask, node spun by an executor", with_client(client)),
             ("client.ask, plain script (self-spin)", with_client(plain_client)))
    rows = []
    per_answer = 0.0
    # "" is refused at admission (INVALID_REQUEST): the round trip without the model.
    for path, question in (("no model", ""), ("tiny model", QUESTION)):
        for name, call in calls:
            feedback.clear()
            stats = measure(lambda c=call, q=question: c(q), args.repeats, warmup=1)
            rows.append((path, name, ms(stats.min), ms(stats.median)))
            if call is raw_action and question:
                per_answer = len(feedback) / (args.repeats + 1)
    print(machine_line())
    print_table(["path", "call", "min ms", "median ms"], rows)
    print(f"\naction feedback messages per answer: {per_answer:.1f}")
    executor.shutdown(timeout_sec=10)
    rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO_ROOT))
    sys.exit(main())
