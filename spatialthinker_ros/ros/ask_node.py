"""`spatialthinker-ros ask QUESTION --node [NAME]` (and `ros2 run spatialthinker_ros ask`): the
`ask` command against the running spatialthinker_node instead of a local model.

The question goes through the planner client's action (`client.SpatialThinkerClient`), so the
observation and the scene graph are printed as soon as the node has them (SCENE_GRAPH_READY
feedback), then the answer, matched choice, status, camera, stamp and latency, in the layout of
the local ask (`ask_layout`). `--json` prints the answer as the planner's JSON
(`core.spatial_result.result_to_json`). Ctrl-C cancels the goal at the node and waits (briefly)
for the node's CANCELED answer; a second Ctrl-C leaves at once.

Outcomes: an answer (OK, PARTIAL) exits 0; no node, a node that is not active, and every answer
without a usable result (refused request, timeout, parse error, ...) print one line
`spatialthinker-ros: error: STATUS: reason` and exit 1; Ctrl-C exits 130; bad arguments exit 2.

Only this module's `ask_node_main` imports rclpy, and only when called: the local ask (and the
rest of the CLI) runs without ROS.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from ..ask_layout import answer_lines, question_lines, scene_lines
from ..core.options import ENGINE_OPTIONS
from ..core.spatial_result import UNAVAILABLE, SpatialResult, SpatialThinkerError, result_to_json
from ..core.status import AnswerStatus
from ..core.text import one_line
from .topics import CAMERA_NAME

DEFAULT_NODE = "/spatialthinker_node"
# How long to look for the node's `ask` service and action before giving up (at most --timeout).
DISCOVERY_S = 15.0
LIFECYCLE_S = 5.0  # for the node's get_state answer
CANCEL_WAIT_S = 5.0  # after Ctrl-C, for the node's CANCELED answer
SPIN_S = 0.1  # the main loop wakes this often (Ctrl-C is seen within it)
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
NODE_ONLY = ("camera",)  # ask options that only the live node takes
LOCAL_ONLY = ("annotate",)  # ... and those that only a local model takes


def add_node_arguments(parser: argparse.ArgumentParser) -> None:
    """`--node [NAME]` and `--camera NAME` of the `ask` subcommand."""
    group = parser.add_argument_group(
        "the live node (ask QUESTION --node [NAME]: no IMAGE, no model options)")
    group.add_argument(
        "--node", nargs="?", const=DEFAULT_NODE, default=None, metavar="NAME",
        help=f"ask the running spatialthinker_node NAME (default {DEFAULT_NODE}; "
        "/ns/spatialthinker_node when launched in a namespace) about its camera's newest frame, "
        "through its ask action; --timeout bounds the whole ask")
    group.add_argument(
        "--camera", default="", metavar="NAME",
        help="--node: which of the node's cameras to ask about (default: its first)")


def wants_node(args: argparse.Namespace) -> bool:
    return getattr(args, "node", None) is not None


def node_name_problem(name: str) -> str | None:
    if not CAMERA_NAME.fullmatch(name.strip("/")) or "//" in name:
        return (f"--node {name!r} is not a node name (letters, digits and _, namespaces "
                "joined by /, e.g. /spatialthinker_node or /robot/spatialthinker_node)")
    return None


def resolve_positionals(args: argparse.Namespace) -> str | None:
    """With --node the only positional is the question. `ask --node "question"` lets argparse
    take the question as NAME: then it is the question, and NAME the default. Sets
    args.question and args.node; returns a usage problem or None."""
    given = [p for p in (args.image, args.question) if p is not None]
    if not given and args.node != DEFAULT_NODE:
        given, args.node = [args.node], DEFAULT_NODE
    if len(given) != 1:
        return ("--node takes one positional argument, the question (the node answers about "
                "its camera's newest frame, not an image file): ask QUESTION --node [NAME]")
    args.question = str(given[0])
    args.image = None
    return node_name_problem(args.node)


def usage_problem(args: argparse.Namespace) -> str | None:
    """Why these `ask --node` arguments cannot work, or None (checked before rclpy starts)."""
    problem = resolve_positionals(args)
    if problem is not None:
        return problem
    local = [f"--{name}" for name in LOCAL_ONLY if getattr(args, name, None)]
    local += [opt.flag for opt in ENGINE_OPTIONS if opt.cli and opt.name != "timeout_s"
              and getattr(args, opt.name, opt.default) != opt.default]
    if local:
        return (f"{', '.join(local)}: a local model's option; the node has its own (its "
                "parameters: ros2 param set)")
    if args.camera and not CAMERA_NAME.fullmatch(args.camera):
        return f"--camera {args.camera!r} is not a camera name"
    return None


def local_problem(args: argparse.Namespace) -> str | None:
    """Why these arguments cannot make a local ask (IMAGE and QUESTION needed), or None."""
    if args.image is None or args.question is None:
        return "ask needs IMAGE and QUESTION (or QUESTION --node [NAME] to ask the live node)"
    given = [f"--{name}" for name in NODE_ONLY if getattr(args, name, None)]
    if given:
        return f"{', '.join(given)} needs --node (it picks one of the node's cameras)"
    return None


def action_name(node: str) -> str:
    """The node's `ask` action: `ask` in the node's namespace."""
    namespace = "/" + node.strip("/").rpartition("/")[0]
    return namespace.rstrip("/") + "/ask"


def full_name(node: str) -> str:
    return "/" + node.strip("/")


class _Printer:
    """Prints an ask as it goes: the question at once, the scene graph when it arrives, then
    the answer (nothing but the JSON on stdout with --json)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.scene_printed = False

    def out(self, lines: Sequence[str]) -> None:
        if not self.args.json:
            print("\n".join(lines), flush=True)

    def on_scene_graph(self, feedback: Any) -> None:
        if not self.scene_printed:
            self.scene_printed = True
            self.out(scene_lines(feedback.observation, feedback.scene_graph))

    def on_text(self, delta: str) -> None:
        print(delta, end="", file=sys.stderr, flush=True)

    def answer(self, result: SpatialResult, latency_s: float) -> None:
        if self.args.stream:
            print(file=sys.stderr)
        if self.args.json:
            print(json.dumps(result_to_json(result), indent=2), flush=True)
            return
        lines = [] if self.scene_printed else scene_lines(result.observation, result.scene_graph)
        lines += answer_lines(result.option, result.answer_text, result.choices,
                              result.matched_choice, result.status, result.status_message,
                              self.args.stop_after)
        h = result.header
        camera = result.camera or "(the node's only camera)"
        lines.append(f"camera:   {camera}, frame {h.frame_id or '-'}, "
                     f"stamp {h.sec}.{h.nanosec:09d}")
        lines.append(f"latency:  {latency_s * 1e3:.1f} ms (inference "
                     f"{result.inference_time_s * 1e3:.1f} ms at the node, "
                     f"{result.generated_tokens} generated tokens)")
        self.out(lines)


def _error(status: str, message: str, code: int = EXIT_FAILED) -> int:
    print(f"spatialthinker-ros: error: {status}: {one_line(message, 600)}", file=sys.stderr)
    return code


class _Interrupts:
    """SIGINT while asking: the first sets `requested` (the ask is canceled at the node), a
    second raises KeyboardInterrupt. The previous handler comes back on exit."""

    def __init__(self) -> None:
        self.requested = threading.Event()
        self._previous: Any = None

    def __enter__(self) -> _Interrupts:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def _on_sigint(self, _signum: int, _frame: Any) -> None:
        if self.requested.is_set():
            raise KeyboardInterrupt
        self.requested.set()


def ask_node_main(args: argparse.Namespace) -> int:
    problem = usage_problem(args)
    if problem is not None:
        print(f"spatialthinker-ros: error: {problem}", file=sys.stderr)
        return EXIT_USAGE
    import rclpy
    from rclpy.signals import SignalHandlerOptions

    context = rclpy.context.Context()
    # No rclpy signal handler: Ctrl-C must cancel the goal, not shut the context down first.
    rclpy.init(args=[], context=context, signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node(f"spatialthinker_ask_{os.getpid()}", context=context,
                             start_parameter_services=False)
    try:
        with _Interrupts() as interrupts:
            return _Session(node, args, interrupts).run()
    except KeyboardInterrupt:
        return _error(AnswerStatus.CANCELED.name, "interrupted", EXIT_INTERRUPTED)
    finally:
        node.destroy_node()
        rclpy.try_shutdown(context=context)


class _Session:
    """One `ask --node` run on its own node and executor (the main thread spins)."""

    def __init__(self, node: Any, args: argparse.Namespace, interrupts: _Interrupts) -> None:
        from rclpy.executors import SingleThreadedExecutor

        from .client import SpatialThinkerClient

        self.node = node
        self.args = args
        self.target = full_name(args.node)
        self.interrupts = interrupts
        self.printer = _Printer(args)
        self.executor = SingleThreadedExecutor(context=node.context)
        self.executor.add_node(node)
        self.client = SpatialThinkerClient(
            node, action_name(self.target), on_scene_graph=self.printer.on_scene_graph,
            on_text=self.printer.on_text if args.stream else None)

    def run(self) -> int:
        timeout_s = float(self.args.timeout_s)
        started = time.monotonic()
        self.printer.out(question_lines(self.args.question, self.args.choices or ()))
        if not self._wait_until_ready(min(timeout_s, DISCOVERY_S)):
            return _error(UNAVAILABLE, self._why_unavailable())
        state = self._lifecycle_state()
        if self.interrupts.requested.is_set():
            return _error(AnswerStatus.CANCELED.name, "interrupted before the question was "
                          "sent", EXIT_INTERRUPTED)
        if state not in (None, "active"):
            return _error(AnswerStatus.BUSY.name, f"{self.target} is {state}, not active (ros2 "
                          f"lifecycle set {self.target} activate)")
        left_s = max(timeout_s - (time.monotonic() - started), 0.1)
        sent = time.monotonic()
        future = self.client.ask_async(
            self.args.question, list(self.args.choices or ()), camera=self.args.camera,
            stop_after=self.args.stop_after, timeout_s=left_s,
            retry_deadline_s=min(left_s, 10.0))
        canceled_at = None
        while not future.done():
            if self.interrupts.requested.is_set() and canceled_at is None:
                canceled_at = time.monotonic()
                self.client.cancel(future)
            if canceled_at is not None and time.monotonic() - canceled_at > CANCEL_WAIT_S:
                return _error(AnswerStatus.CANCELED.name, "interrupted; the node did not "
                              f"confirm the cancel within {CANCEL_WAIT_S:g} s",
                              EXIT_INTERRUPTED)
            self.executor.spin_once(timeout_sec=SPIN_S)
        latency_s = time.monotonic() - sent
        error = future.exception()
        if canceled_at is not None:
            status = error.status_name if isinstance(error, SpatialThinkerError) else "CANCELED"
            return _error(status, "interrupted: the goal was canceled at the node",
                          EXIT_INTERRUPTED)
        if error is not None:
            if isinstance(error, SpatialThinkerError):
                return _error(error.status_name, error.message)
            return _error(UNAVAILABLE, f"client error: {error!r}")
        self.printer.answer(future.result(), latency_s)
        return 0

    def _wait_until_ready(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not self.interrupts.requested.is_set():
            if self.client.wait_until_ready(min(0.5, max(deadline - time.monotonic(), 0.0))):
                return True
        return False

    def _why_unavailable(self) -> str:
        if self.interrupts.requested.is_set():
            return "interrupted while looking for the node"
        names = {f"{ns.rstrip('/')}/{name}" for name, ns in
                 self.node.get_node_names_and_namespaces()}
        if self.target not in names:
            return (f"no node {self.target} (is spatialthinker_node running, in this "
                    f"ROS_DOMAIN_ID? --node NAME picks another; nodes seen: "
                    f"{', '.join(sorted(n for n in names if 'spatialthinker' in n)) or 'none'})")
        return (f"{self.target} runs, but its action {action_name(self.target)} is not "
                "reachable")

    def _lifecycle_state(self) -> str | None:
        """The node's lifecycle state label ("active", "inactive", ...), or None when its
        get_state service does not answer (then the ask itself tells)."""
        from lifecycle_msgs.srv import GetState

        service = self.node.create_client(GetState, f"{self.target}/get_state")
        try:
            if not service.wait_for_service(timeout_sec=LIFECYCLE_S):
                return None
            future = service.call_async(GetState.Request())
            self.executor.spin_until_future_complete(future, timeout_sec=LIFECYCLE_S)
            response = future.result() if future.done() else None
            return None if response is None else response.current_state.label
        finally:
            self.node.destroy_client(service)


def ros2_run_argv(argv: Sequence[str]) -> list[str]:
    """The CLI arguments of `ros2 run spatialthinker_ros ask QUESTION [--node NAME] [options]`:
    always the live node (the default one unless --node names another)."""
    argv = list(argv)
    if not any(a == "--node" or a.startswith("--node=") for a in argv):
        argv.append("--node")
    return ["ask", *argv]
