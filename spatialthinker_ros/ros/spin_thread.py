"""An executor spun on a background thread, stopped in an order that never uses a destroyed
handle.

Two rclpy behaviours made `executor.shutdown(); node.destroy_node()` with a thread inside
`executor.spin()` end in `InvalidHandle: cannot use Destroyable because destruction was
requested` (seen at the teardown of test_standing_question_answers_the_newest_frame):
- `executor.shutdown()` does not wait for the spinning thread, which may still be using its wait
  set (the nodes' handles) when `destroy_node()` runs;
- `MultiThreadedExecutor.shutdown()` destroys its wake guard condition before it joins its
  thread pool, and every callback handler still queued or running there triggers that guard
  (rclpy/executors.py `_make_handler`). The handler's Task fails, and the spinning thread raises
  that failure on its next `spin_once`.
`close()` stops the loop (flag, wake, join), lets the pool finish, then shuts the executor down
and destroys the nodes."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from rclpy.executors import Executor, ExternalShutdownException

# How often the loop looks at its stop flag when nothing wakes the executor.
POLL_S = 0.2


class SpinThread:
    def __init__(self, executor: Executor, name: str = "spin",
                 on_error: Callable[[BaseException], None] | None = None) -> None:
        """`on_error`: called with an exception rclpy raises from the spin (which then ends);
        without it the exception ends the thread as an unhandled one."""
        self.executor = executor
        self._on_error = on_error
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> SpinThread:
        self._thread.start()
        return self

    def _run(self) -> None:
        context = self.executor.context
        while not self._stop.is_set() and context.ok():
            try:
                self.executor.spin_once(timeout_sec=POLL_S)
            except ExternalShutdownException:
                return
            except Exception as exc:
                if self._stop.is_set() or not context.ok():
                    return  # stopping anyway
                if self._on_error is None:
                    raise
                self._on_error(exc)
                return

    def stop(self, timeout_s: float | None = None) -> bool:
        """End the loop and wait for it; True when the thread has ended. Callbacks the executor
        already handed to its threads may still run: `executor.shutdown()` waits for them."""
        self._stop.set()
        try:
            self.executor.wake()
        except Exception:  # noqa: BLE001 - an executor already shut down has nothing to wake
            pass
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def close(self, nodes, timeout_s: float | None = None) -> None:
        """stop(), the executor's thread pool finished, the executor shut down, `nodes`
        destroyed: in that order."""
        self.stop(timeout_s)
        # MultiThreadedExecutor's pool (a private attribute in Humble to Rolling): joined before
        # shutdown() destroys the guard condition its queued handlers trigger.
        pool = getattr(self.executor, "_executor", None)
        if isinstance(pool, ThreadPoolExecutor):
            pool.shutdown(wait=True)
        self.executor.shutdown(timeout_sec=timeout_s)
        for node in nodes:
            node.destroy_node()
