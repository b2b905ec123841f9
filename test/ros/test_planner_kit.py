"""The planner kit against the live node (real rclpy, loopback-only namespace, fitted tiny model):
the py_trees behaviour ticked in a real tree, the LLM tool-call runner, and both examples run
as scripts in their own processes."""

from __future__ import annotations

import importlib
import inspect
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("rclpy")
try:
    import py_trees
except ImportError:  # optional (the planner extra): only the behaviour tests need it
    py_trees = None

import test_client  # noqa: E402
from test_client import DEPTH_M, publish_depth  # noqa: E402
from test_node import CHOICES, QUESTION, WAIT_S, GatedEngine, Harness, wait_until  # noqa: E402

from spatialthinker_ros import bag_types  # noqa: E402
from spatialthinker_ros.core.spatial_result import SpatialResult  # noqa: E402
from spatialthinker_ros.core.status import AnswerStatus  # noqa: E402
from spatialthinker_ros.tool_schema import run_tool_call, tool_schema  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
needs_py_trees = pytest.mark.skipif(py_trees is None, reason="py-trees is not installed "
                                    "(pip install 'spatialthinker_ros[planner]')")
# test_client's fixtures (a node with depth, a client on the harness's node); ros and
# make_harness come from conftest.py.
served, client = test_client.served, test_client.client


@pytest.fixture()
def trees() -> Iterator[None]:
    """py_trees with an empty blackboard (it keeps one per process)."""
    if py_trees is None:
        pytest.skip("py-trees is not installed (pip install 'spatialthinker_ros[planner]')")
    py_trees.blackboard.Blackboard.clear()
    yield
    py_trees.blackboard.Blackboard.clear()


def behaviour(*args, **kwargs):
    from spatialthinker_ros.ros.behaviours import AskSpatialBehaviour

    return AskSpatialBehaviour(*args, **kwargs)


def tick_until_done(tree, timeout_s: float = WAIT_S):
    """Tick every 20 ms (the harness's executor delivers the answer meanwhile)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        tree.tick()
        if tree.root.status != py_trees.common.Status.RUNNING:
            return tree.root.status
        time.sleep(0.02)
    pytest.fail(f"the tree still ran after {timeout_s:.0f} s")


def ask_tree(harness: Harness, key: str, **options) -> tuple:
    ask = behaviour("ask", QUESTION, CHOICES, blackboard_key=key, **options)
    done = py_trees.behaviours.Success("act")
    root = py_trees.composites.Sequence("plan", memory=True, children=[ask, done])
    tree = py_trees.trees.BehaviourTree(root)
    tree.setup(node=harness.client, timeout=WAIT_S)  # the behaviour makes its client on it
    return tree, ask, done


# ---------------------------------------------------------------------------------- py_trees


def test_tree_succeeds_when_the_answer_is_the_expected_one(served: Harness, trees) -> None:
    Status = py_trees.common.Status
    served.send_frame()
    tree, ask, done = ask_tree(served, "side", expected_choices=["left"])
    tree.tick()
    assert ask.status == Status.RUNNING  # initialise sent the goal; nothing blocked
    assert tick_until_done(tree) == Status.SUCCESS
    assert done.status == Status.SUCCESS
    result = py_trees.blackboard.Blackboard.get("/side")
    assert isinstance(result, SpatialResult) and result.matched_choice == "left"
    assert "(A) left" in ask.feedback_message


def test_tree_fails_on_another_answer_and_on_errors(served: Harness, trees) -> None:
    Status = py_trees.common.Status
    served.send_frame()
    tree, ask, done = ask_tree(served, "side", expected_options=["B"])
    assert tick_until_done(tree) == Status.FAILURE
    assert done.status == Status.INVALID  # the sequence stopped at the ask
    assert "not what the tree expects" in ask.feedback_message
    assert py_trees.blackboard.Blackboard.get("/side").option == "A"

    bad = behaviour("bad ask", "   ", blackboard_key="bad")
    bad_tree = py_trees.trees.BehaviourTree(bad)
    bad_tree.setup(node=served.client, timeout=WAIT_S)
    assert tick_until_done(bad_tree) == Status.FAILURE
    assert "INVALID_REQUEST" in bad.feedback_message
    assert py_trees.blackboard.Blackboard.get("/bad").status is AnswerStatus.INVALID_REQUEST
    with pytest.raises(ValueError, match="not among the choices"):
        behaviour("typo", QUESTION, CHOICES, expected_choices=["lefft"])


def test_tree_fails_on_positions_in_another_frame_than_it_needs(served: Harness, trees) -> None:
    Status = py_trees.common.Status
    stamp = served.now()
    publish_depth(served, stamp, "cam_bt")
    served.send_frame(stamp=stamp, frame_id="cam_bt")
    tree, ask, _ = ask_tree(served, "side", positions_frame="base_link")
    assert tick_until_done(tree) == Status.FAILURE
    assert "positions in 'cam_bt', not 'base_link'" in ask.feedback_message
    result = py_trees.blackboard.Blackboard.get("/side")
    assert result.positions_frame_id == "cam_bt" and result.scene_graph.objects[0].position
    tree, ask, _ = ask_tree(served, "same", positions_frame="cam_bt")
    assert tick_until_done(tree) == Status.SUCCESS


def test_a_higher_priority_branch_taking_over_cancels_the_goal(make_harness, trees) -> None:
    Status = py_trees.common.Status
    harness = make_harness(engine_factory=lambda c: GatedEngine(c, hold_after="<observe>"))
    harness.send_frame()
    # The guard fails twice, then succeeds: on the third tick the selector stops the ask.
    guard = py_trees.behaviours.StatusQueue("obstacle!", [Status.FAILURE, Status.FAILURE],
                                            Status.SUCCESS)
    ask = behaviour("ask", QUESTION, CHOICES, request_id="interrupted")
    root = py_trees.composites.Selector("react", memory=False, children=[guard, ask])
    tree = py_trees.trees.BehaviourTree(root)
    tree.setup(node=harness.client, timeout=WAIT_S)
    tree.tick()
    assert harness.engine.entered.wait(WAIT_S)
    tree.tick()
    assert ask.status == Status.RUNNING
    tree.tick()
    assert guard.status == Status.SUCCESS and root.status == Status.SUCCESS
    assert ask.status == Status.INVALID and "canceled" in ask.feedback_message
    canceled = wait_until(lambda: [m for m in harness.messages("answer")
                                   if m.request_id == "interrupted"], what="the canceled answer")
    assert canceled[0].status == AnswerStatus.CANCELED
    assert not harness.engine.release.is_set()  # generation stopped because of the cancel


def test_shutting_the_tree_down_while_the_ask_runs_cancels_the_goal(make_harness, trees) -> None:
    """py_trees' BehaviourTree.shutdown() only calls each behaviour's shutdown(), without
    stopping a RUNNING one first. Before, the goal kept the model busy until timeout_s."""
    harness = make_harness(engine_factory=lambda c: GatedEngine(c, hold_after="<observe>"),
                           timeout_s=300.0)
    harness.send_frame()
    ask = behaviour("ask", QUESTION, CHOICES, request_id="abandoned")
    tree = py_trees.trees.BehaviourTree(ask)
    tree.setup(node=harness.client, timeout=WAIT_S)
    tree.tick()
    assert harness.engine.entered.wait(WAIT_S)
    assert ask.status == py_trees.common.Status.RUNNING
    tree.shutdown()
    canceled = wait_until(lambda: [m for m in harness.messages("answer")
                                   if m.request_id == "abandoned"], timeout=30.0,
                          what="the canceled answer")
    assert canceled[0].status == AnswerStatus.CANCELED
    assert not harness.engine.release.is_set()


# ---------------------------------------------------------------------------------- LLM tools


def test_tool_call_runs_on_the_live_node(served: Harness, client) -> None:
    served.send_frame(frame_id="cam_tool")
    out = run_tool_call(client, json.dumps({"question": QUESTION, "choices": CHOICES}))
    assert out["status"] == "OK" and out["answer"] == "left" and out["option"] == "A"
    assert (out["matched_choice"], out["matched_index"]) == ("left", 0)
    assert [o["id"] for o in out["scene_graph"]["objects"]] == ["cube.1", "ball.1"]
    assert out["frame_id"] == "cam_tool" and "raw_output" not in out
    json.dumps(out)
    # Refused by the node (one typed error, not retried) and by the client (broken Unicode).
    refused = run_tool_call(client, {"question": "   "})
    assert refused["status"] == "INVALID_REQUEST" and refused["retryable"] is False
    assert "empty" in refused["error"] and set(refused) == {"error", "status", "retryable"}
    broken = run_tool_call(client, '{"question": "where \\ud800?"}')
    assert broken["status"] == "INVALID_REQUEST" and "Unicode" in broken["error"]
    # The caller's own ask options go to the client with the LLM's arguments.
    served.send_frame()
    mine = run_tool_call(client, {"question": QUESTION}, request_id="from-caller")
    assert mine["status"] == "OK" and mine["request_id"] == "from-caller"


def test_every_tool_argument_is_a_client_ask_argument() -> None:
    """A new AskSpatial.srv field reaches the schema by itself; the client must take it too."""
    from spatialthinker_ros.ros.client import SpatialThinkerClient

    properties = set(tool_schema()["function"]["parameters"]["properties"])
    for method in (SpatialThinkerClient.ask, SpatialThinkerClient.ask_async):
        assert properties <= set(inspect.signature(method).parameters), method.__name__


def test_schema_is_read_from_a_ros_install_too(ros_interfaces: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The ament install (rosidl installs share/<pkg>/{msg,srv,action}) holds what the schema
    is generated from, so `tool-schema` gives the same answer there as in the source tree."""
    from ament_index_python.packages import get_package_share_directory

    share = Path(get_package_share_directory("spatialthinker_ros"))
    assert (share / "srv" / "AskSpatial.srv").is_file()
    source = tool_schema()
    monkeypatch.setattr(bag_types, "interface_dir", lambda: share / "msg")
    assert tool_schema() == source


def test_behaviours_without_py_trees_say_how_to_install_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "py_trees", None)  # as if not installed
    monkeypatch.delitem(sys.modules, "spatialthinker_ros.ros.behaviours", raising=False)
    with pytest.raises(ImportError, match=r"pip install 'spatialthinker_ros\[planner\]'"):
        importlib.import_module("spatialthinker_ros.ros.behaviours")


# ---------------------------------------------------------------------------------- examples


def run_example(name: str, namespace: str, ros_interfaces: Path, wait_s: float = WAIT_S,
                args: list[str] | None = None) -> subprocess.CompletedProcess:
    """examples/<name> in its own process, with the interfaces the tests built."""
    env = dict(os.environ)
    site = next((ros_interfaces / "lib").glob("python3*/site-packages"), None)
    if site is not None:  # a source checkout (scripts/ros_env.sh does the same)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(site), env.get("PYTHONPATH", "")])
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            [str(ros_interfaces / "lib"), env.get("LD_LIBRARY_PATH", "")])
        env["AMENT_PREFIX_PATH"] = os.pathsep.join(
            [str(ros_interfaces), env.get("AMENT_PREFIX_PATH", "")])
    if args is None:
        args = ["--namespace", namespace, "--wait-s", str(wait_s), "--max-image-age-s", "3600",
                "--timeout-s", str(WAIT_S)]
    return subprocess.run(
        [sys.executable, str(ROOT / "examples" / name), *args],
        capture_output=True, text=True, env=env, timeout=4 * WAIT_S, check=False)


def test_planner_example_acts_on_answers_and_positions(served: Harness,
                                                        ros_interfaces: Path) -> None:
    stamp = served.now()
    publish_depth(served, stamp, "cam_example")
    served.send_frame(stamp=stamp, frame_id="cam_example")
    done = run_example("planner.py", served.ns, ros_interfaces)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "cube relative to ball: (A) left [ok]" in done.stdout
    assert "closer to the camera:  (A) left = cube [ok]" in done.stdout  # the fixed answer
    assert f"z={DEPTH_M:.2f} m" in done.stdout and "depth agrees with 'left'" in done.stdout
    assert "plan: pick up cube.1 at" in done.stdout


@needs_py_trees
def test_bt_example_ticks_its_tree_to_success(served: Harness, ros_interfaces: Path) -> None:
    served.send_frame(frame_id="cam_bt")
    done = run_example("bt_tree.py", served.ns, ros_interfaces)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "moving to cube.1" in done.stdout
    assert "approach the cube" in done.stdout


@pytest.mark.parametrize("name", ["planner.py", pytest.param("bt_tree.py", marks=needs_py_trees)])
def test_examples_exit_2_without_a_node(ros, ros_interfaces: Path, name: str) -> None:
    done = run_example(name, "/no_node_here", ros_interfaces, wait_s=1.0)
    assert done.returncode == 2 and "not running" in done.stderr


@pytest.mark.parametrize("name, sentence_end", [
    ("planner.py", "and on the objects' 3D positions."),
    pytest.param("bt_tree.py", 'pip install "spatialthinker_ros[planner]").', marks=needs_py_trees),
])
def test_example_help_describes_it_in_whole_sentences(ros_interfaces: Path, name: str,
                                                      sentence_end: str) -> None:
    """--help: the docstring's first paragraph, not its first line cut mid-sentence; every
    option explained."""
    done = run_example(name, "", ros_interfaces, args=["--help"])
    assert done.returncode == 0, done.stderr
    assert sentence_end in " ".join(done.stdout.split())
    for explained in ("the node's namespace", "how long to wait for the node", "bound of",
                      "oldest acceptable camera frame"):
        assert explained in done.stdout, explained
