"""`spatialthinker-ros ask` arguments that pick the local model or the live node (`--node`),
checked without ROS: the local ask never imports rclpy, and wrong combinations are one-line
usage errors (exit 2) before anything starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from spatialthinker_ros.cli import build_parser
from spatialthinker_ros.ros.ask_node import (
    DEFAULT_NODE,
    action_name,
    ros2_run_argv,
    usage_problem,
)

ROOT = Path(__file__).resolve().parents[1]


def parse(*argv: str):
    return build_parser().parse_args(["ask", *argv])


@pytest.mark.parametrize(("argv", "node", "question"), [
    (["Is the door open?", "--node"], DEFAULT_NODE, "Is the door open?"),
    (["--node", "Is the door open?"], DEFAULT_NODE, "Is the door open?"),  # argparse's NAME
    (["--node", "/robot/spatialthinker_node", "q"], "/robot/spatialthinker_node", "q"),
    (["q", "--node", "robot/perception"], "robot/perception", "q"),
])
def test_node_takes_the_question_as_its_only_positional(argv, node, question) -> None:
    args = parse(*argv)
    assert usage_problem(args) is None
    assert (args.node, args.question, args.image) == (node, question, None)


def test_ros2_run_ask_always_asks_the_node() -> None:
    args = build_parser().parse_args(ros2_run_argv(["Is the door open?", "--choices", "yes", "no"]))
    assert usage_problem(args) is None
    assert (args.node, args.question, args.choices) == (DEFAULT_NODE, "Is the door open?",
                                                        ["yes", "no"])
    args = build_parser().parse_args(ros2_run_argv(["q", "--node", "/robot/spatialthinker_node"]))
    assert usage_problem(args) is None and args.node == "/robot/spatialthinker_node"


def test_the_action_is_ask_in_the_nodes_namespace() -> None:
    assert action_name("/spatialthinker_node") == "/ask"
    assert action_name("/robot/arm/spatialthinker_node") == "/robot/arm/ask"
    assert action_name("robot/perception") == "/robot/ask"


@pytest.mark.parametrize(("argv", "reason"), [
    (["frame.png", "q", "--node"], "one positional argument, the question"),
    (["--node", "/spatialthinker_node"], "one positional argument, the question"),
    (["q", "--node", "--model", "org/other"], "--model: a local model's option"),
    (["q", "--node", "--annotate", "out.png"], "--annotate: a local model's option"),
    (["q", "--node", "/robot//node"], "is not a node name"),
    (["q", "--node", "--camera", "bad name"], "is not a camera name"),
])
def test_wrong_node_arguments_say_why(argv, reason) -> None:
    problem = usage_problem(parse(*argv))
    assert problem is not None and reason in problem


def run_cli(*argv: str) -> subprocess.CompletedProcess:
    """The CLI in a child whose `import rclpy` fails: the local ask must not need it."""
    code = ("import sys; sys.modules['rclpy'] = None\n"
            "from spatialthinker_ros.cli import main\n"
            "sys.exit(main(sys.argv[1:]))")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True,
                          env=env, timeout=300, check=False)


def test_usage_errors_are_one_line_exit_2_before_ros_starts(tmp_path) -> None:
    for argv, reason in ((["ask", "q", "--node", "--model", "x/y"], "--model"),
                         (["ask", str(tmp_path / "f.png"), "q", "--camera", "head"],
                          "--camera needs --node"),
                         (["ask", "q"], "ask needs IMAGE and QUESTION")):
        done = run_cli(*argv)
        assert done.returncode == 2, done.stderr
        assert done.stderr.count("\n") == 1 and reason in done.stderr, done.stderr


def test_the_local_ask_runs_without_rclpy(fitted_model_dir, tmp_path) -> None:
    import numpy as np
    from PIL import Image

    image = tmp_path / "frame.png"
    Image.fromarray(np.zeros((480, 640, 3), dtype=np.uint8)).save(image)
    done = run_cli("ask", str(image), "Where is the cube?", "--choices", "left", "right",
                   "--model", str(fitted_model_dir))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    # The layout the live node's ask shares (ask_layout): observation and graph, then answer.
    assert lines[2].startswith("observation: A red cube") and lines[3].startswith("scene graph")
    assert lines.index("answer:   (A) left") > lines.index("  cube.1 --left of--> ball.1")


def test_the_shared_layout_prints_positions_and_no_terminal_controls() -> None:
    from spatialthinker_ros.ask_layout import answer_lines, scene_lines
    from spatialthinker_ros.core.scene import Box, Relation, SceneGraph, SceneObject
    from spatialthinker_ros.core.status import AnswerStatus

    graph = SceneGraph(objects=(SceneObject("mug.1", "mug\x1b[2J", Box(1, 2, 30, 40),
                                            (0.1, -0.25, 1.5)),
                                SceneObject("lap.1", "laptop")),
                       relations=(Relation("mug.1", "left of", "lap.1"),),
                       image_width=64, image_height=48)
    lines = scene_lines("a mug\nnext to\ta laptop", graph)
    assert lines[0] == "observation: a mug next to a laptop"
    assert lines[1] == "scene graph (64 x 48 px):"
    assert lines[2].endswith("[1, 2, 30, 40] at (0.10, -0.25, 1.50) m") and "\x1b" not in lines[2]
    assert lines[3].endswith("no box") and lines[4] == "  mug.1 --left of--> lap.1"
    assert answer_lines("B", "right", ["left", "right"], "right", AnswerStatus.PARTIAL, "why",
                        "") == ["answer:   (B) right", "matched:  right", "status:   partial (why)"]
