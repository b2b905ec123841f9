"""Inference worker: one job at a time, bounded queue, busy policies, cancel and deadlines."""

from __future__ import annotations

import threading
import time

import pytest

from spatialthinker_ros.ros.worker import (
    BusyPolicy,
    FeedbackChannel,
    FeedbackEvent,
    InferenceWorker,
    Job,
    Stage,
    StageTracker,
    StopReason,
    stage_of_text,
)

WAIT = 10.0  # generous bound on waits that end as soon as the event happens


class Gate:
    """A handler that blocks every job until released, recording what it ran."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.started = threading.Event()
        self.ran: list[str] = []

    def __call__(self, job: Job[str, str]) -> str:
        self.ran.append(job.payload)
        self.started.set()
        while not self.release.wait(0.01):
            if job.should_stop():
                return f"stopped:{job.stop_reason.value}"
        return f"done:{job.payload}"


@pytest.fixture()
def gate_worker():
    gate = Gate()
    worker: InferenceWorker[str, str] = InferenceWorker(gate, max_queue=2)
    worker.start()
    yield gate, worker
    gate.release.set()
    assert worker.stop(WAIT)


def test_jobs_run_in_order_and_return_results(gate_worker) -> None:
    gate, worker = gate_worker
    gate.release.set()
    jobs = [worker.submit(p, timeout_s=WAIT, policy=BusyPolicy.QUEUE) for p in "abc"]
    results = [j.future.result(WAIT) for j in jobs if j is not None]
    assert results[0] == "done:a"
    assert gate.ran[: len(results)] == list("abc")[: len(results)]


def test_queue_policy_queues_up_to_max_queue_then_rejects(gate_worker) -> None:
    gate, worker = gate_worker
    first = worker.submit("a", timeout_s=WAIT, policy=BusyPolicy.QUEUE)
    assert gate.started.wait(WAIT)
    queued = [worker.submit(p, timeout_s=WAIT, policy=BusyPolicy.QUEUE) for p in "bc"]
    assert all(j is not None for j in queued)
    assert worker.stats.queue_depth == 2
    assert worker.submit("d", timeout_s=WAIT, policy=BusyPolicy.QUEUE) is None
    assert worker.stats.rejected == 1
    gate.release.set()
    assert [j.future.result(WAIT) for j in [first, *queued]] == ["done:a", "done:b", "done:c"]
    assert worker.stats.completed == 3


def test_reject_policy_answers_busy_while_a_job_runs(gate_worker) -> None:
    gate, worker = gate_worker
    first = worker.submit("a", timeout_s=WAIT, policy=BusyPolicy.REJECT)
    assert first is not None and gate.started.wait(WAIT)
    assert worker.submit("b", timeout_s=WAIT, policy=BusyPolicy.REJECT) is None
    gate.release.set()
    assert first.future.result(WAIT) == "done:a"
    assert worker.wait_idle(WAIT)
    assert worker.submit("c", timeout_s=WAIT, policy=BusyPolicy.REJECT) is not None


def test_max_queue_zero_behaves_like_reject(gate_worker) -> None:
    gate, worker = gate_worker
    worker.max_queue = 0
    assert worker.submit("a", timeout_s=WAIT, policy=BusyPolicy.QUEUE) is not None
    assert gate.started.wait(WAIT)
    assert worker.submit("b", timeout_s=WAIT, policy=BusyPolicy.QUEUE) is None


def test_cancel_running_job_stops_it(gate_worker) -> None:
    gate, worker = gate_worker
    job = worker.submit("a", timeout_s=WAIT, policy=BusyPolicy.QUEUE)
    assert gate.started.wait(WAIT)
    job.cancel()
    assert job.future.result(WAIT) == "stopped:canceled"
    assert job.stop_reason is StopReason.CANCELED


def test_cancel_queued_job_never_runs(gate_worker) -> None:
    gate, worker = gate_worker
    worker.submit("a", timeout_s=WAIT, policy=BusyPolicy.QUEUE)
    assert gate.started.wait(WAIT)
    queued = worker.submit("b", timeout_s=WAIT, policy=BusyPolicy.QUEUE)
    queued.cancel()
    assert queued.future.cancelled()
    gate.release.set()
    assert worker.wait_idle(WAIT)
    assert gate.ran == ["a"]


def test_cancel_all_clears_queue_and_stops_running(gate_worker) -> None:
    gate, worker = gate_worker
    running = worker.submit("a", timeout_s=WAIT, policy=BusyPolicy.QUEUE)
    assert gate.started.wait(WAIT)
    queued = [worker.submit(p, timeout_s=WAIT, policy=BusyPolicy.QUEUE) for p in "bc"]
    assert worker.cancel_all() == 3
    assert running.future.result(WAIT) == "stopped:canceled"
    assert all(j.future.cancelled() for j in queued)
    assert worker.wait_idle(WAIT)
    assert gate.ran == ["a"]
    assert worker.stats.canceled_in_queue == 2


def test_deadline_counts_from_start_and_reports_timeout(gate_worker) -> None:
    gate, worker = gate_worker
    job = worker.submit("slow", timeout_s=0.05, policy=BusyPolicy.QUEUE)
    assert job.future.result(WAIT) == "stopped:timeout"
    assert job.stop_reason is StopReason.TIMEOUT
    assert not job.canceled


def test_a_job_still_queued_at_its_deadline_never_runs(gate_worker) -> None:
    """The deadline counts from the request's arrival: time in the queue counts."""
    gate, worker = gate_worker
    running = worker.submit("a", timeout_s=WAIT, policy=BusyPolicy.QUEUE)
    assert gate.started.wait(WAIT)
    queued = worker.submit("b", timeout_s=0.05, policy=BusyPolicy.QUEUE)
    threading.Event().wait(0.1)
    gate.release.set()
    assert running.future.result(WAIT) == "done:a"
    assert worker.wait_idle(WAIT)
    assert queued.future.cancelled() and gate.ran == ["a"]
    assert queued.stop_reason is StopReason.TIMEOUT and not queued.canceled


def test_expire_stops_only_a_queued_job(gate_worker) -> None:
    gate, worker = gate_worker
    running = worker.submit("a", timeout_s=WAIT, policy=BusyPolicy.QUEUE)
    assert gate.started.wait(WAIT)
    queued = worker.submit("b", timeout_s=WAIT, policy=BusyPolicy.QUEUE)
    assert not running.expire() and queued.expire()
    gate.release.set()
    assert running.future.result(WAIT) == "done:a"
    assert worker.wait_idle(WAIT) and gate.ran == ["a"]
    assert queued.stop_reason is StopReason.TIMEOUT


def test_arrival_time_sets_the_deadline() -> None:
    job: Job[str, str] = Job("x", timeout_s=1.0, arrived_at=time.monotonic() - 2.0)
    assert job.should_stop() and job.stop_reason is StopReason.TIMEOUT
    assert not job.start()  # past its deadline before it started: never runs


def test_handler_exception_reaches_the_future_and_worker_survives() -> None:
    def handler(job: Job[str, str]) -> str:
        if job.payload == "boom":
            raise RuntimeError("CUDA out of memory")
        return job.payload

    worker: InferenceWorker[str, str] = InferenceWorker(handler, max_queue=4)
    worker.start()
    try:
        bad = worker.submit("boom", timeout_s=WAIT, policy=BusyPolicy.QUEUE)
        with pytest.raises(RuntimeError, match="out of memory"):
            bad.future.result(WAIT)
        good = worker.submit("ok", timeout_s=WAIT, policy=BusyPolicy.QUEUE)
        assert good.future.result(WAIT) == "ok"
        assert worker.stats.failed == 1 and worker.stats.completed == 1
    finally:
        assert worker.stop(WAIT)


def test_stopped_worker_rejects_and_can_restart() -> None:
    worker: InferenceWorker[str, str] = InferenceWorker(lambda job: job.payload, max_queue=1)
    assert worker.submit("a", timeout_s=WAIT, policy=BusyPolicy.QUEUE) is None  # not started
    worker.start()
    assert worker.submit("a", timeout_s=WAIT, policy=BusyPolicy.QUEUE).future.result(WAIT) == "a"
    assert worker.stop(WAIT)
    assert worker.submit("b", timeout_s=WAIT, policy=BusyPolicy.QUEUE) is None
    worker.start()
    assert worker.submit("c", timeout_s=WAIT, policy=BusyPolicy.QUEUE).future.result(WAIT) == "c"
    assert worker.stop(WAIT)


def test_many_concurrent_submitters_each_get_a_job_or_none() -> None:
    done = threading.Event()

    def handler(job: Job[int, int]) -> int:
        done.wait(WAIT)
        return job.payload

    worker: InferenceWorker[int, int] = InferenceWorker(handler, max_queue=4)
    worker.start()
    outcomes: list[Job[int, int] | None] = [None] * 50
    barrier = threading.Barrier(50)

    def submit(i: int) -> None:
        barrier.wait()
        outcomes[i] = worker.submit(i, timeout_s=WAIT, policy=BusyPolicy.QUEUE)

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    accepted = [j for j in outcomes if j is not None]
    assert len(accepted) == 5  # one running (or about to) + four queued
    assert worker.stats.rejected == 45
    done.set()
    assert sorted(j.future.result(WAIT) for j in accepted) == sorted(j.payload for j in accepted)
    assert worker.stop(WAIT)


def test_job_rejects_non_positive_timeout() -> None:
    with pytest.raises(ValueError):
        Job("x", timeout_s=0)


def test_stage_of_text_follows_the_output_sections() -> None:
    assert stage_of_text("") is Stage.OBSERVING
    assert stage_of_text("<observe>a</observe><scene>{") is Stage.OBSERVING
    assert stage_of_text("<scene>{}</scene>") is Stage.SCENE_GRAPH_READY
    assert stage_of_text("<scene>{}</scene><think>hm") is Stage.THINKING
    assert stage_of_text("<think>x</think><answer> (A) left </answer>") is Stage.ANSWERED


def test_stage_tracker_sees_tags_split_across_deltas_and_never_goes_back() -> None:
    text = "<observe>a</observe><scene>{}</sc" + "ene><think>hm</think><answer>(A)</answer>"
    for size in (1, 2, 3, 7, len(text)):
        tracker = StageTracker()
        stages = [tracker.feed(text[i : i + size]) for i in range(0, len(text), size)]
        assert stages == sorted(stages)
        assert stages[-1] is Stage.ANSWERED
        assert Stage.SCENE_GRAPH_READY in stages or size == len(text)


def test_feedback_keeps_stage_changes_and_joins_text_deltas() -> None:
    channel = FeedbackChannel()
    channel.push(FeedbackEvent(Stage.QUEUED, ""))
    for delta in ("<obs", "erve>", "a"):
        channel.push(FeedbackEvent(Stage.OBSERVING, delta), coalesce=True)
    channel.push(FeedbackEvent(Stage.SCENE_GRAPH_READY, "...</scene>", scene_graph="g"))
    channel.push(FeedbackEvent(Stage.THINKING, "<think>"), coalesce=True)
    events = channel.drain(0)
    assert [e.stage for e in events] == [
        Stage.QUEUED,
        Stage.OBSERVING,
        Stage.SCENE_GRAPH_READY,
        Stage.THINKING,
    ]
    assert events[1].text == "<observe>a"
    assert events[2].scene_graph == "g"


def test_feedback_drain_wakes_on_close_and_ignores_later_pushes() -> None:
    channel = FeedbackChannel()
    threading.Timer(0.05, channel.close).start()
    assert channel.drain(WAIT) == []
    assert channel.closed
    channel.push(FeedbackEvent(Stage.OBSERVING, "x"))
    assert channel.drain(0) == []


def test_job_future_completion_closes_its_feedback_channel() -> None:
    job: Job[str, str] = Job("x", timeout_s=1.0)
    assert job.start()
    job.future.set_result("r")
    assert job.feedback.closed
