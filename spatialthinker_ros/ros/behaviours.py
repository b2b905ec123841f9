"""A py_trees behaviour that asks spatialthinker_node a question (needs `py-trees`:
pip install "spatialthinker_ros[planner]").

    ask = AskSpatialBehaviour("cube left of ball?", "Where is the cube relative to the ball?",
                              ["left", "right"], expected_choices=["left"])
    tree = py_trees.trees.BehaviourTree(py_trees.composites.Sequence("go", True, [ask, ...]))
    tree.setup(node=node)          # or pass client=SpatialThinkerClient(node)

Non-blocking: `initialise` sends the action goal (SpatialThinkerClient.ask_async), `update` is
RUNNING until the answer is in, then SUCCESS when it is what the tree expects (an expected option
letter or choice; with neither given, any answer) and FAILURE otherwise, on errors and on
timeouts. The result goes to the blackboard under `blackboard_key` (None when the node gave no
answer at all; `result.positions_frame_id` names the frame of its positions and sizes);
`feedback_message` says why it failed. With `positions_frame` (e.g. "base_link", the node's
target_frame) an answer whose positions are in another frame fails, so that a tree never acts on
camera-frame positions as if they were the robot's. Interrupted (`terminate` with INVALID,
e.g. a higher-priority branch took over) or shut down (`tree.shutdown()`), it cancels the goal.
The node must be spun while the tree ticks (an executor thread, or `executor.spin_once` between
ticks).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

try:
    import py_trees
except ImportError as exc:  # optional dependency
    raise ImportError(
        "spatialthinker_ros.ros.behaviours needs py_trees: pip install "
        "'spatialthinker_ros[planner]' (or pip install py-trees)") from exc

from ..core.spatial_result import SpatialResult, SpatialThinkerError
from .client import SpatialThinkerClient


class AskSpatialBehaviour(py_trees.behaviour.Behaviour):
    """Ask one question; succeed when the answer is the expected one (see the module doc)."""

    def __init__(self, name: str, question: str, choices: Sequence[str] = (), *,
                 client: SpatialThinkerClient | None = None,
                 expected_options: Sequence[str] = (), expected_choices: Sequence[str] = (),
                 blackboard_key: str = "spatial_result", positions_frame: str = "",
                 **ask_options: Any) -> None:
        """`expected_options`: letters ("A"); `expected_choices`: entries of `choices`
        (case-insensitive). `ask_options`: SpatialThinkerClient.ask_async's (camera, timeout_s,
        retry_deadline_s, max_image_age_s, ...)."""
        super().__init__(name)
        self.question = question
        self.choices = tuple(choices)
        self.client = client
        self.expected_options = {o.strip().strip("()").upper() for o in expected_options}
        self.expected_choices = {c.strip().casefold() for c in expected_choices}
        unknown = self.expected_choices - {c.strip().casefold() for c in self.choices}
        if unknown:
            raise ValueError(f"expected choices {sorted(unknown)} are not among the choices")
        self.positions_frame = positions_frame.strip().lstrip("/")
        self.ask_options = ask_options
        self.blackboard_key = blackboard_key
        self.blackboard = self.attach_blackboard_client(name=name)
        self.blackboard.register_key(key=blackboard_key, access=py_trees.common.Access.WRITE)
        self._future: Any = None

    def setup(self, **kwargs: Any) -> None:
        """Makes the client on `node` (py_trees_ros passes it: tree.setup(node=node)) unless one
        was given."""
        if self.client is None:
            node = kwargs.get("node")
            if node is None:
                raise KeyError(f"{self.name}: pass client=... or call tree.setup(node=<node>)")
            self.client = SpatialThinkerClient(node)

    def initialise(self) -> None:
        if self.client is None:
            raise RuntimeError(f"{self.name}: setup() was not called (no client)")
        self.feedback_message = "asking"
        self.blackboard.set(self.blackboard_key, None, overwrite=True)
        self._future = self.client.ask_async(self.question, self.choices, **self.ask_options)

    def update(self) -> py_trees.common.Status:
        future = self._future
        if future is None or future.cancelled():
            self.feedback_message = "no ask running"
            return py_trees.common.Status.FAILURE
        if not future.done():
            return py_trees.common.Status.RUNNING
        self._future = None
        try:
            result: SpatialResult = future.result()
        except SpatialThinkerError as exc:
            self.blackboard.set(self.blackboard_key, exc.result, overwrite=True)
            self.feedback_message = str(exc)
            return py_trees.common.Status.FAILURE
        self.blackboard.set(self.blackboard_key, result, overwrite=True)
        frame = result.positions_frame_id
        if self.positions_frame and frame and frame != self.positions_frame:
            self.feedback_message = (f"answered {_answer(result)}, positions in {frame!r}, not "
                                     f"{self.positions_frame!r}")
            return py_trees.common.Status.FAILURE
        if self.expects(result):
            self.feedback_message = f"answered {_answer(result)}"
            return py_trees.common.Status.SUCCESS
        self.feedback_message = f"answered {_answer(result)}, not what the tree expects"
        return py_trees.common.Status.FAILURE

    def expects(self, result: SpatialResult) -> bool:
        """Whether `result` is an answer this behaviour succeeds with."""
        if not self.expected_options and not self.expected_choices:
            return True
        return (result.option.upper() in self.expected_options
                or (bool(result.matched_choice)
                    and result.matched_choice.strip().casefold() in self.expected_choices))

    def terminate(self, new_status: py_trees.common.Status) -> None:
        if new_status == py_trees.common.Status.INVALID and self._cancel_running():
            self.feedback_message = "interrupted: goal canceled"
        self._future = None

    def shutdown(self) -> None:
        """The tree shuts down: py_trees does not stop a RUNNING behaviour first, so a goal
        still running is canceled here (the model stops instead of finishing for nobody)."""
        if self._cancel_running():
            self.feedback_message = "tree shut down: goal canceled"
        self._future = None

    def _cancel_running(self) -> bool:
        future = self._future
        if future is None or future.done() or self.client is None:
            return False
        self.client.cancel(future)
        return True


def _answer(result: SpatialResult) -> str:
    option = f"({result.option}) " if result.option else ""
    return f"{option}{result.answer_text or result.matched_choice}".strip() or "(empty)"
