"""An executor spun on a background thread that is stopped and joined before the nodes it spins
are destroyed.

`executor.shutdown()` does not wait for a thread inside `executor.spin()`: that thread may still
be building or using its wait set when `destroy_node()` runs, and then raises
`InvalidHandle: ... destruction was requested` (or leaves the wait set unsafe). Stop the loop
(`stop()`: set a flag, wake the executor, join), then shut the executor down and destroy."""

from __future__ import annotations

import threading
from collections.abc import Callable

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
        """stop(), then shut the executor down and destroy `nodes`, in that order."""
        self.stop(timeout_s)
        self.executor.shutdown(timeout_sec=timeout_s)
        for node in nodes:
            node.destroy_node()
