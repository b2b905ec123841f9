"""Fault injection in the live node (issue 6.2): real rclpy, the real engine on the tiny model.

Faults are injected at the engine boundary by wrapping the real SpatialThinkerEngine: its
streamed-text callback raises mid-generation, raises a CUDA-out-of-memory error, or hangs until
the node's deadline fires. Every answer must carry INFERENCE_ERROR or TIMEOUT with a message, the
node must keep serving, and /diagnostics must count the failures.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

pytest.importorskip("rclpy")

from rclpy.lifecycle import TransitionCallbackReturn  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from std_msgs.msg import String  # noqa: E402
from test_node import (  # noqa: E402
    QUESTION,
    WAIT_S,
    GatedEngine,
    wait_future,
    wait_until,
)

from spatialthinker_ros.core.engine import EngineConfig, SpatialThinkerEngine  # noqa: E402


class FaultyEngine:
    """The real engine; `fault` chooses what goes wrong inside the next generation:
    - "raise_mid": the streamed-text callback raises after a few chunks;
    - "oom": the first chunk raises the RuntimeError torch raises when CUDA memory runs out;
    - "hang": generation stalls between tokens until the node's should_stop fires (timeout_s).
    """

    def __init__(self, config: EngineConfig) -> None:
        self.inner = SpatialThinkerEngine(config)
        self.config = self.inner.config
        self.fault: str | None = None
        self.chunks_seen = 0

    @property
    def loaded(self) -> bool:
        return self.inner.loaded

    def load(self) -> None:
        self.inner.load()

    def unload(self) -> None:
        self.inner.unload()

    def describe(self) -> dict[str, str]:
        return self.inner.describe()

    def answer(self, image, question, choices=None, *, on_text=None, should_stop=None,
               **callbacks):
        fault = self.fault
        chunks = 0

        def faulty(delta: str) -> None:
            nonlocal chunks
            chunks += 1
            self.chunks_seen += 1
            if on_text is not None:
                on_text(delta)
            if fault == "oom":
                raise RuntimeError(
                    "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 7.79 GiB total "
                    "capacity; 6.90 GiB already allocated)"
                )
            if fault == "raise_mid" and chunks == 5:
                raise RuntimeError("injected failure after 5 chunks")
            if fault == "hang":
                while not should_stop():  # bounded by the node's timeout_s
                    time.sleep(0.01)

        return self.inner.answer(image, question, choices, on_text=faulty, should_stop=should_stop,
                                 **callbacks)


def test_inference_faults_are_answered_and_the_node_keeps_serving(make_harness) -> None:
    harness = make_harness(engine_factory=FaultyEngine)
    engine: FaultyEngine = harness.engine
    a = harness.SpatialAnswer
    harness.send_frame()

    engine.fault = "raise_mid"
    failed = harness.ask(request_id="raise")
    assert failed.status == a.STATUS_INFERENCE_ERROR
    assert "injected failure after 5 chunks" in failed.status_message
    assert failed.raw_output  # the text generated before the failure is kept
    assert failed.header.stamp.sec > 0  # still tied to its source image

    engine.fault = None
    assert harness.ask().status == a.STATUS_OK

    engine.fault = "oom"
    oom = harness.ask(request_id="oom")
    assert oom.status == a.STATUS_INFERENCE_ERROR
    assert "out of memory" in oom.status_message

    engine.fault = None
    assert harness.ask().status == a.STATUS_OK

    assert harness.node.set_parameters([Parameter("timeout_s", value=0.5)])[0].successful
    engine.fault = "hang"
    hung = harness.ask(request_id="hang")
    assert hung.status == a.STATUS_TIMEOUT
    assert "timeout_s" in hung.status_message

    assert harness.node.set_parameters([Parameter("timeout_s", value=60.0)])[0].successful
    engine.fault = None
    served = harness.ask()
    assert served.status == a.STATUS_OK and served.option == "A"

    values = harness.diagnostics(
        lambda v: v["inference_errors"] == "2" and v["timeouts"] == "1" and v["answers_ok"] == "3"
    )
    assert values["_level"] == b"\x01"  # WARN
    assert "last: " in values["_message"]
    # Failed answers are published like any other.
    wait_until(lambda: {"raise", "oom", "hang"} <= {m.request_id for m in
                                                    harness.messages("answer")})
    published = {m.request_id: m.status for m in harness.messages("answer")}
    assert published["raise"] == a.STATUS_INFERENCE_ERROR
    assert published["oom"] == a.STATUS_INFERENCE_ERROR
    assert published["hang"] == a.STATUS_TIMEOUT


def test_action_with_a_failing_inference_is_aborted_with_the_error(make_harness) -> None:
    from action_msgs.msg import GoalStatus

    harness = make_harness(engine_factory=FaultyEngine)
    harness.engine.fault = "oom"
    harness.send_frame()
    assert harness.action_client.wait_for_server(timeout_sec=WAIT_S)
    goal = harness.AskSpatialAction.Goal(question=QUESTION)
    handle = wait_future(harness.action_client.send_goal_async(goal))
    result = wait_future(handle.get_result_async())
    assert result.status == GoalStatus.STATUS_ABORTED
    assert result.result.answer.status == harness.SpatialAnswer.STATUS_INFERENCE_ERROR
    assert "out of memory" in result.result.answer.status_message


def test_bad_camera_frames_are_errors_not_crashes(make_harness) -> None:
    harness = make_harness(max_image_pixels=4_000_000)
    a = harness.SpatialAnswer
    harness.send_frame(step=100)  # rows shorter than width * 3
    bad_step = harness.ask()
    assert bad_step.status == a.STATUS_INFERENCE_ERROR
    assert "could not be converted" in bad_step.status_message

    harness.send_frame(encoding="yuv_unknown")
    assert harness.ask().status == a.STATUS_INFERENCE_ERROR

    # Claims 100k x 100k pixels with 12 bytes of data: rejected by size, nothing allocated.
    harness.send_frame(width=100_000, height=100_000, data=bytes(12))
    huge = harness.ask()
    assert huge.status == a.STATUS_INFERENCE_ERROR

    harness.send_frame()
    assert harness.ask().status == a.STATUS_OK
    values = harness.diagnostics(lambda v: v["image_conversion_errors"] == "3")
    assert values["inference_errors"] == "3"


def test_stopped_camera_stream_gives_stale_answers_not_old_ones(make_harness) -> None:
    harness = make_harness(rate_hz=10.0, max_image_age_s=0.5)
    a = harness.SpatialAnswer
    streaming = threading.Event()
    streaming.set()
    last_header: list[Any] = []

    def camera() -> None:
        while streaming.is_set():
            last_header.append(harness.publish_image(frame_id="cam_live"))
            time.sleep(0.05)

    thread = threading.Thread(target=camera, daemon=True)
    thread.start()
    harness.question_pub.publish(String(data=QUESTION + " (A) left (B) right"))

    def standing(status: int) -> list[Any]:
        return [m for m in harness.messages("answer")
                if m.request_id.startswith("standing-") and m.status == status]

    try:
        wait_until(lambda: standing(a.STATUS_OK), what="a standing answer on the live stream")
    finally:
        streaming.clear()
        thread.join(WAIT_S)

    def all_standing() -> list[Any]:
        return [m for m in harness.messages("answer") if m.request_id.startswith("standing-")]

    n_before_stop = len(all_standing())

    def since_stop() -> list[Any]:
        return all_standing()[n_before_stop:]

    # After the stream stops: perhaps an answer about the last frame while it was still fresh,
    # then only STALE_IMAGE answers, all about that last frame, never an answer about it.
    first = wait_until(lambda: next((m for m in since_stop()
                                     if m.status == a.STATUS_STALE_IMAGE), None),
                       what="a STALE_IMAGE answer")
    wait_until(lambda: sum(m.status == a.STATUS_STALE_IMAGE for m in since_stop()) >= 5,
               what="five STALE_IMAGE answers")
    answers = since_stop()
    stale = answers[answers.index(first):]
    assert all(m.status == a.STATUS_STALE_IMAGE for m in stale)
    assert all(m.header.stamp == first.header.stamp for m in stale)
    assert all("old" in m.status_message for m in stale)
    assert first.header.stamp in [h.stamp for h in last_header[-5:]]  # the stream's last frames
    # The stream comes back: answers resume on the new frames.
    fresh = harness.send_frame(frame_id="cam_back")
    back = wait_until(lambda: [m for m in standing(a.STATUS_OK) if m.header.stamp == fresh.stamp],
                      what="a standing answer on the resumed stream")
    assert back[0].header.frame_id == "cam_back"
    harness.question_pub.publish(String(data=""))


def test_deactivate_and_cleanup_during_inference_cancel_cleanly(make_harness) -> None:
    engines_made: list[GatedEngine] = []

    def factory(config: EngineConfig) -> GatedEngine:
        # The first engine holds generation at <observe>; later ones run freely.
        engine = GatedEngine(config, hold_after="<observe>" if not engines_made else None)
        engines_made.append(engine)
        return engine

    harness = make_harness(engine_factory=factory)
    a = harness.SpatialAnswer
    harness.send_frame()
    running = harness.ask_async(request_id="running")
    assert engines_made[0].entered.wait(WAIT_S)
    queued = harness.ask_async(request_id="queued")
    wait_until(lambda: harness.node.worker.stats.queue_depth == 1, what="a queued request")

    assert harness.node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
    stopped = wait_future(running).answer
    assert stopped.status == a.STATUS_CANCELED and "generating" in stopped.status_message
    dropped = wait_future(queued).answer
    assert dropped.status == a.STATUS_CANCELED
    assert not engines_made[0].release.is_set()  # nothing let it finish: it was canceled
    assert harness.node.worker.running is None

    assert harness.node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
    assert not engines_made[0].loaded

    harness.start()  # configure + activate again: a fresh engine, serving normally
    harness.send_frame()
    assert harness.ask().status == a.STATUS_OK
    assert len(engines_made) == 2


def test_shutdown_during_inference_finishes_cleanly(make_harness) -> None:
    harness = make_harness(engine_factory=lambda c: GatedEngine(c, hold_after="<observe>"))
    harness.send_frame()
    running = harness.ask_async()
    assert harness.engine.entered.wait(WAIT_S)
    assert harness.node.trigger_shutdown() == TransitionCallbackReturn.SUCCESS
    assert wait_future(running).answer.status == harness.SpatialAnswer.STATUS_CANCELED
    assert not harness.engine.loaded
    assert harness.node.state == "finalized"
