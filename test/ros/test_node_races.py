"""Races around the one-answer rule in the live node: real rclpy in a loopback-only namespace,
the real engine on the fitted tiny model (held between tokens by GatedEngine where a test needs
an inference in flight).

Every request gets exactly one answer, promptly, whatever happens meanwhile: a `not_before`
request still waiting for its frame when the node deactivates or shuts down, or when its action
goal is canceled; a cancel racing the end of a generation; bad input echoed back.
"""

from __future__ import annotations

import time

import pytest

pytest.importorskip("rclpy")

from action_msgs.msg import GoalStatus  # noqa: E402
from builtin_interfaces.msg import Time  # noqa: E402
from rclpy.action import CancelResponse  # noqa: E402
from rclpy.lifecycle import TransitionCallbackReturn  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from test_node import CHOICES, QUESTION, WAIT_S, GatedEngine, wait_future, wait_until  # noqa: E402

# timeout_s of these nodes: long, so that an answer arriving only when it runs out fails the test.
LONG_TIMEOUT_S = 45.0
# How soon an answer must follow the event that ends the request (a loaded 2-core machine).
PROMPT_S = 8.0


def far_future(harness) -> Time:
    """A not_before no camera frame will reach during the test."""
    now = harness.client.get_clock().now().to_msg()
    return Time(sec=now.sec + 3600, nanosec=0)


def ask_not_before(harness, request_id: str):
    request = harness.AskSpatial.Request(question=QUESTION, choices=CHOICES,
                                         request_id=request_id, not_before=far_future(harness))
    return harness.ask_client.call_async(request)


def waiting_callers(harness, n: int) -> None:
    wait_until(lambda: harness.node.requests.callers == n, what=f"{n} caller(s) in the node")


@pytest.mark.parametrize("transition", ["deactivate", "shutdown"])
def test_a_request_waiting_for_a_not_before_frame_is_answered_when_the_node_stops(
        make_harness, transition: str) -> None:
    """Before: the waiter ignored the transition. Deactivation waited WAIT_SLACK_S (10 s) for it,
    the caller got STALE_IMAGE only when timeout_s ran out, and main()'s shutdown hung as long."""
    harness = make_harness(timeout_s=LONG_TIMEOUT_S)
    harness.send_frame()
    future = ask_not_before(harness, "waiting")
    waiting_callers(harness, 1)

    started = time.monotonic()
    trigger = getattr(harness.node, f"trigger_{transition}")
    assert trigger() == TransitionCallbackReturn.SUCCESS
    assert time.monotonic() - started < PROMPT_S
    answer = wait_future(future, PROMPT_S, what="the answer of the waiting request").answer
    assert answer.status == harness.SpatialAnswer.STATUS_CANCELED
    assert answer.request_id == "waiting" and "not_before" in answer.status_message
    assert harness.node.requests.callers == 0


def test_canceling_a_goal_waiting_for_a_not_before_frame_ends_it_at_once(make_harness) -> None:
    """Before: the cancel was accepted but the goal kept waiting until timeout_s."""
    harness = make_harness(timeout_s=LONG_TIMEOUT_S)
    harness.send_frame()
    assert harness.action_client.wait_for_server(timeout_sec=WAIT_S)
    goal = harness.AskSpatialAction.Goal(question=QUESTION, request_id="goal",
                                         not_before=far_future(harness))
    handle = wait_future(harness.action_client.send_goal_async(goal))
    assert handle.accepted
    waiting_callers(harness, 1)

    wait_future(handle.cancel_goal_async(), what="the cancel response")
    result = wait_future(handle.get_result_async(), PROMPT_S, what="the canceled goal's result")
    assert result.status == GoalStatus.STATUS_CANCELED
    assert result.result.answer.status == harness.SpatialAnswer.STATUS_CANCELED
    # The node serves the next request normally.
    assert harness.ask().status == harness.SpatialAnswer.STATUS_OK


def test_a_cancel_that_stops_generation_always_ends_the_goal_canceled(make_harness) -> None:
    """rclpy moves a goal to CANCELING only after the cancel callback returns. Before, the
    callback stopped the generation itself, so the answer (CANCELED) could be ready while the
    goal was still EXECUTING: the goal was ABORTED and the client's cancel came back refused.
    A cancel callback slowed down after it ran (as a busy executor thread may be) shows it."""
    harness = make_harness(engine_factory=lambda c: GatedEngine(c, hold_after="<observe>"),
                           timeout_s=LONG_TIMEOUT_S)
    server = harness.node.requests._action
    original = server._cancel_callback

    def slow_cancel(goal_handle) -> CancelResponse:
        response = original(goal_handle)
        time.sleep(1.0)
        return response

    server.register_cancel_callback(slow_cancel)
    harness.send_frame()
    assert harness.action_client.wait_for_server(timeout_sec=WAIT_S)
    goal = harness.AskSpatialAction.Goal(question=QUESTION, request_id="racing")
    handle = wait_future(harness.action_client.send_goal_async(goal))
    assert harness.engine.entered.wait(WAIT_S)

    cancel = wait_future(handle.cancel_goal_async(), what="the cancel response")
    assert len(cancel.goals_canceling) == 1
    result = wait_future(handle.get_result_async(), what="the canceled goal's result")
    assert result.status == GoalStatus.STATUS_CANCELED
    assert result.result.answer.status == harness.SpatialAnswer.STATUS_CANCELED
    assert not harness.engine.release.is_set()  # generation stopped because of the cancel


def test_bad_input_is_answered_with_one_bounded_line(make_harness) -> None:
    """Before: an unknown stop_after was echoed whole in status_message (newlines, any
    length, secrets included)."""
    harness = make_harness()
    harness.send_frame()
    bad = "scene_graph\nplus a second line password=hunter2 " + "x" * 5000
    answer = harness.ask(stop_after=bad)
    assert answer.status == harness.SpatialAnswer.STATUS_INVALID_REQUEST
    message = answer.status_message
    assert message.startswith("stop_after must be one of")
    assert "\n" not in message and len(message) <= 300
    assert "hunter2" not in message
    assert harness.ask().status == harness.SpatialAnswer.STATUS_OK


def test_timeout_s_bounds_a_request_from_its_arrival_queue_included(make_harness) -> None:
    """Four requests at once while the model is held: each gets TIMEOUT within timeout_s (+ a
    bound) of being sent. Before, timeout_s counted from when the worker started a job, so the
    k-th queued request was answered after k x timeout_s (the fourth after 20 s here)."""
    timeout_s = 5.0
    harness = make_harness(engine_factory=lambda c: GatedEngine(c, hold_after="<observe>"),
                           timeout_s=timeout_s, max_queue=4, busy_policy="queue")
    harness.send_frame()
    answered_at: dict[str, float] = {}
    futures = {}
    sent = time.monotonic()
    for i in range(4):
        rid = f"r{i}"
        futures[rid] = harness.ask_async(request_id=rid)
        futures[rid].add_done_callback(
            lambda _f, rid=rid: answered_at.setdefault(rid, time.monotonic()))
    answers = {rid: wait_future(f, timeout_s + WAIT_S, what=f"answer {rid}").answer
               for rid, f in futures.items()}

    assert all(a.status == harness.SpatialAnswer.STATUS_TIMEOUT for a in answers.values()), {
        rid: (a.status, a.status_message) for rid, a in answers.items()}
    late = {rid: round(t - sent, 1) for rid, t in answered_at.items()
            if t - sent > timeout_s + PROMPT_S}
    assert not late, f"answered later than timeout_s + {PROMPT_S} s after sending: {late}"
    # Those still queued at their deadline never reach the model (all but the first, unless the
    # executor delivered them far apart).
    queued = [a for a in answers.values() if "waited in the queue" in a.status_message]
    assert queued, [a.status_message for a in answers.values()]
    assert harness.engine.calls == 4 - len(queued)
    harness.engine.release.set()
    assert harness.node.set_parameters([Parameter("timeout_s", value=LONG_TIMEOUT_S)])[0].successful
    assert harness.ask().status == harness.SpatialAnswer.STATUS_OK  # the node serves on
