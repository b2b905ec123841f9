"""SpinThread: a background spin stopped without any callback handler touching a destroyed handle
(the InvalidHandle at the teardown of test_standing_question_answers_the_newest_frame)."""

from __future__ import annotations

import gc
import threading
import time

import pytest

rclpy = pytest.importorskip("rclpy")


def test_close_with_callbacks_in_flight_leaves_no_failed_handler(ros, capfd) -> None:
    from rclpy.executors import MultiThreadedExecutor

    from spatialthinker_ros.ros.spin_thread import SpinThread

    failures: list[BaseException] = []
    previous = threading.excepthook
    threading.excepthook = lambda args: failures.append(args.exc_value)
    try:
        for i in range(20):
            context = rclpy.context.Context()
            rclpy.init(context=context)
            node = rclpy.create_node(f"st_spin_{i}", context=context)
            ticks = []
            # Callbacks always queued or running in the pool when close() comes.
            node.create_timer(0.001, lambda ticks=ticks: (ticks.append(1), time.sleep(0.002)))
            spin = SpinThread(MultiThreadedExecutor(num_threads=3, context=context)).start()
            spin.executor.add_node(node)
            deadline = time.monotonic() + 30
            while len(ticks) < 5 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert ticks, "the timer never ran"
            spin.close([node], 10.0)
            assert spin.stop(0)  # the thread has ended
            rclpy.shutdown(context=context)
            del spin, node
            gc.collect()  # a failed handler Task reports itself when collected
    finally:
        threading.excepthook = previous
    assert failures == []
    assert "never retrieved" not in capfd.readouterr().err
