#!/usr/bin/env python3
"""A py_trees behaviour tree that asks spatialthinker_node before it acts (needs py-trees:
pip install "spatialthinker_ros[planner]").

    python3 examples/bt_tree.py [--namespace /robot]

    [-] approach the cube (sequence)
        --> cube left of ball?   AskSpatialBehaviour: SUCCESS when the answer is "left"
        --> approach the cube    reads the answer from the blackboard and "moves"

The tree is ticked every 0.1 s; between ticks the node is spun (`spin_once`), which delivers the
ask's feedback and answer: the behaviour never blocks a tick. Exit code 0 when the tree
succeeded, 1 when it failed, 2 when there is no node.
"""

from __future__ import annotations

import argparse
import sys
import time

import py_trees
import rclpy
from rclpy.executors import SingleThreadedExecutor

from spatialthinker_ros.core.spatial_result import SpatialResult
from spatialthinker_ros.ros.behaviours import AskSpatialBehaviour
from spatialthinker_ros.ros.client import SpatialThinkerClient

RESULT_KEY = "cube_side"


class Approach(py_trees.behaviour.Behaviour):
    """Stands in for a motion behaviour: reads where the cube is and reports the goal."""

    def __init__(self, name: str, label: str) -> None:
        super().__init__(name)
        self.label = label
        self.blackboard = self.attach_blackboard_client(name=name)
        self.blackboard.register_key(key=RESULT_KEY, access=py_trees.common.Access.READ)

    def update(self) -> py_trees.common.Status:
        result: SpatialResult = self.blackboard.get(RESULT_KEY)
        target = result.find(self.label)
        if target is None or (target.position is None and target.box is None):
            self.feedback_message = f"no {self.label} located in the scene graph"
            return py_trees.common.Status.FAILURE
        goal = target.position or target.box.center  # metres with depth, else pixels
        self.feedback_message = f"moving to {target.id} at {tuple(round(v, 2) for v in goal)}"
        print(self.feedback_message)
        return py_trees.common.Status.SUCCESS


def build_tree(client: SpatialThinkerClient, **ask_options) -> py_trees.trees.BehaviourTree:
    ask = AskSpatialBehaviour("cube left of ball?", "Where is the cube relative to the ball?",
                              ["left", "right"], client=client, expected_choices=["left"],
                              blackboard_key=RESULT_KEY, **ask_options)
    root = py_trees.composites.Sequence("approach the cube", memory=True,
                                        children=[ask, Approach("approach the cube", "cube")])
    return py_trees.trees.BehaviourTree(root)


def run(tree: py_trees.trees.BehaviourTree, executor, timeout_s: float) -> py_trees.common.Status:
    tree.setup(timeout=15.0)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        tree.tick()
        if tree.root.status != py_trees.common.Status.RUNNING:
            break
        executor.spin_once(timeout_sec=0.1)
    else:
        tree.root.stop(py_trees.common.Status.INVALID)  # cancels the running ask
    print(py_trees.display.unicode_tree(tree.root, show_status=True))
    return tree.root.status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--namespace", default="", help="the node's namespace ('' = root)")
    parser.add_argument("--wait-s", type=float, default=30.0, help="how long to wait for the node")
    parser.add_argument("--timeout-s", type=float, default=60.0, help="bound of the question")
    parser.add_argument("--max-image-age-s", type=float, default=0.0,
                        help="oldest acceptable camera frame (0: the node's default)")
    args = parser.parse_args(argv)
    rclpy.init()
    node = rclpy.create_node("example_bt", namespace=args.namespace or None)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        client = SpatialThinkerClient(node)
        if not client.wait_until_ready(args.wait_s):
            print("spatialthinker_node is not running (no ask service/action)", file=sys.stderr)
            return 2
        tree = build_tree(client, timeout_s=args.timeout_s,
                          max_image_age_s=args.max_image_age_s)
        status = run(tree, executor, args.timeout_s + 5.0)
        return 0 if status == py_trees.common.Status.SUCCESS else 1
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    sys.exit(main())
