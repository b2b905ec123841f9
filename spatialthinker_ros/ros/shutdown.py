"""SIGINT/SIGTERM as a request to stop, for the node's main().

Under `ros2 launch`, Ctrl-C reaches the node twice: the terminal sends SIGINT to the whole process
group, and launch sends its own SIGINT to each process it started (always when it runs
non-interactively, e.g. from a script or a service), then SIGTERM after a timeout. With rclpy's
default signal handling every SIGINT also raises KeyboardInterrupt in the main thread, so the second
one lands in the middle of the cleanup (unloading the model, destroying the node) and the process
dies of SIGINT: launch reports `process has died [... exit code -2]`. main() therefore initialises
rclpy without its signal handlers and installs these: the first signal asks the main loop to stop
(and interrupts a model load still running at start), later ones only log while the orderly
shutdown finishes.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# Python runs signal handlers in the main thread between its waits: the main loop spins in slices
# this long, so a stop request is seen within it.
STOP_POLL_S = 0.2


class StopSignals:
    """Installs handlers for SIGINT and SIGTERM (main thread only); `requested` is set by the first.

    While `interrupt_startup` is true, the first signal also raises KeyboardInterrupt, so a long
    model load at start is abandoned instead of waited for.
    """

    def __init__(self, logger: Any) -> None:
        self._logger = logger
        self.requested = threading.Event()
        self.interrupt_startup = False
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.requested.is_set():
            self._logger.info(f"{name} received again: still shutting down")
            return
        self.requested.set()
        self._logger.info(f"{name} received: shutting down")
        if self.interrupt_startup:
            raise KeyboardInterrupt
