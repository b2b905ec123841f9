#!/usr/bin/env python3
"""A task planner's use of spatialthinker_node: wait for it, ask two questions, act on the answers
and on the objects' 3D positions.

    ros2 launch spatialthinker_ros perception.launch.py use_depth:=true image:=... depth:=...
    python3 examples/planner.py [--namespace /robot] [--timeout-s 60]

The plan: "if the cube is left of the ball, pick up whichever of the two is nearer". The model's
answers decide; the 3D positions (camera optical frame: x right, y down, z forward, metres; only
with depth) check the claim and give the target. Exit code 0: a target was chosen; 1: the node
could not answer, or the answer says not to act; 2: no node.
"""

from __future__ import annotations

import argparse
import sys

import rclpy

from spatialthinker_ros.core.spatial_result import SpatialResult, SpatialThinkerError
from spatialthinker_ros.ros.client import SpatialThinkerClient


def describe(result: SpatialResult) -> str:
    option = f"({result.option}) " if result.option else ""
    matched = result.matched_choice
    choice = f" = {matched}" if matched and matched != result.answer_text else ""
    return f"{option}{result.answer_text}{choice} [{result.status.name.lower()}]"


def position_text(result: SpatialResult, name: str) -> str:
    obj = result.find(name)
    if obj is None or obj.position is None:
        return f"{name}: no 3D position"
    x, y, z = obj.position
    return f"{obj.id} at x={x:+.2f} y={y:+.2f} z={z:.2f} m"


def plan(client: SpatialThinkerClient, options: dict) -> int:
    side = client.ask("Where is the cube relative to the ball?", ["left", "right"], **options)
    print(f"cube relative to ball: {describe(side)}")
    nearer = client.ask("Which object is closer to the camera?", ["cube", "ball"], **options)
    print(f"closer to the camera:  {describe(nearer)}")
    cube, ball = side.find("cube"), side.find("ball")
    print(f"  {position_text(side, 'cube')}; {position_text(side, 'ball')}")
    if cube is not None and ball is not None and cube.position and ball.position:
        agrees = (cube.position[0] < ball.position[0]) == (side.matched_choice == "left")
        print(f"  depth {'agrees' if agrees else 'DISAGREES'} with '{side.matched_choice}'")
        by_depth = min((cube, ball), key=lambda o: o.position[2])
        print(f"  nearest by depth: {by_depth.id} ({by_depth.position[2]:.2f} m)")
    if side.matched_choice != "left":
        print("plan: the cube is not left of the ball; nothing to do")
        return 1
    target = nearer.find(nearer.matched_choice) if nearer.matched_choice else None
    if target is None:
        print("plan: no usable answer about which object is closer")
        return 1
    where = f" at {tuple(round(v, 2) for v in target.position)}" if target.position else ""
    print(f"plan: pick up {target.id}{where}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--namespace", default="", help="the node's namespace ('' = root)")
    parser.add_argument("--wait-s", type=float, default=30.0, help="how long to wait for the node")
    parser.add_argument("--timeout-s", type=float, default=60.0, help="bound of each question")
    parser.add_argument("--max-image-age-s", type=float, default=0.0,
                        help="oldest acceptable camera frame (0: the node's default)")
    args = parser.parse_args(argv)
    rclpy.init()
    node = rclpy.create_node("example_planner", namespace=args.namespace or None)
    try:
        client = SpatialThinkerClient(node)  # nobody spins `node`: each ask spins it
        if not client.wait_until_ready(args.wait_s):
            print("spatialthinker_node is not running (no ask service/action)", file=sys.stderr)
            return 2
        return plan(client, {"timeout_s": args.timeout_s,
                             "max_image_age_s": args.max_image_age_s})
    except SpatialThinkerError as exc:  # one typed error: its status says what went wrong
        print(f"ask failed: {exc.status_name}: {exc.message}", file=sys.stderr)
        return 1
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    sys.exit(main())
