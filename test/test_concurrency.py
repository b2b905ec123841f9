"""core.concurrency.ordered_map: input order, at most N in flight, lazy input, clean stops."""

from __future__ import annotations

import random
import threading
import time

import pytest

from spatialthinker_ros.core.concurrency import ordered_map


class Tracker:
    """Counts calls in flight (the most seen at once) and items taken from the input."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running = 0
        self.most = 0
        self.pulled = 0
        self.threads: set[str] = set()

    def items(self, n: int):
        for i in range(n):
            self.pulled += 1
            yield i

    def call(self, i: int, delay_s: float = 0.0) -> int:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
            self.threads.add(threading.current_thread().name)
        time.sleep(delay_s)
        with self.lock:
            self.running -= 1
        return i * i


@pytest.mark.parametrize("concurrency", [1, 2, 4, 16])
def test_results_come_in_input_order_whatever_the_finishing_order(concurrency):
    rng = random.Random(concurrency)
    delays = [rng.uniform(0.0, 0.03) for _ in range(40)]
    tracker = Tracker()
    out = list(ordered_map(lambda i: tracker.call(i, delays[i]), tracker.items(40), concurrency))
    assert out == [i * i for i in range(40)]
    assert tracker.most <= concurrency


def test_keeps_n_calls_in_flight_and_pulls_the_input_lazily():
    tracker = Tracker()
    release = threading.Event()

    def call(i: int) -> int:
        if i == 0:
            release.wait(30)  # the head blocks: the others must still run, N at a time
        return tracker.call(i, 0.01)

    results = ordered_map(call, tracker.items(100), 4)
    first_three_done = threading.Thread(target=lambda: (time.sleep(0.3), release.set()))
    first_three_done.start()
    assert next(results) == 0
    first_three_done.join()
    # While item 0 blocked, only items 1-3 could run: 4 in flight at most, 5 pulled at most
    # (4 submitted + 1 refill once the head was taken).
    assert tracker.pulled <= 5
    assert list(results) == [i * i for i in range(1, 100)]
    assert tracker.pulled == 100


def test_one_runs_in_the_calling_thread():
    tracker = Tracker()
    assert list(ordered_map(tracker.call, tracker.items(5), 1)) == [0, 1, 4, 9, 16]
    assert tracker.threads == {threading.current_thread().name}


def test_an_error_is_raised_at_its_place_and_stops_the_rest():
    tracker = Tracker()
    stop = threading.Event()

    def call(i: int) -> int:
        if i == 5:
            raise ValueError("item 5 is bad")
        return tracker.call(i, 0.01)

    got = []
    with pytest.raises(ValueError, match="item 5 is bad"):
        for value in ordered_map(call, tracker.items(1000), 3, stop=stop):
            got.append(value)
    assert got == [i * i for i in range(5)]
    assert stop.is_set()
    assert tracker.pulled < 20  # nothing beyond the window was started
    assert tracker.running == 0  # every started call finished before the raise


def test_closing_early_sets_stop_and_leaves_no_thread_running():
    stop = threading.Event()
    finished = []

    def call(i: int) -> int:
        stop.wait(30)  # a long request that gives up when told to stop
        finished.append(i)
        return i

    before = {t.name for t in threading.enumerate()}
    results = ordered_map(call, range(50), 8, stop=stop)
    started = threading.Thread(target=lambda: next(results))
    started.start()
    time.sleep(0.2)
    stop.set()  # let the head finish so next() returns
    started.join(30)
    results.close()
    assert stop.is_set()
    assert len(finished) <= 9  # the 8 in flight (+ the refill), never the other 41
    leftover = {t.name for t in threading.enumerate()} - before
    assert not any(name.startswith("ordered_map") for name in leftover)


def test_a_normal_end_does_not_set_stop():
    stop = threading.Event()
    assert list(ordered_map(lambda i: i, range(10), 4, stop=stop)) == list(range(10))
    assert not stop.is_set()


def test_concurrency_below_one_is_refused():
    with pytest.raises(ValueError):
        list(ordered_map(lambda i: i, range(3), 0))
