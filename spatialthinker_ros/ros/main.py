"""Entry point of spatialthinker_node (`ros2 run` / `ros2 launch`).

SIGINT/SIGTERM end the node through the lifecycle shutdown transition and exit 0 (`shutdown.py`
says why rclpy's own signal handlers are not used: Ctrl-C under `ros2 launch` arrives twice).
"""

from __future__ import annotations

import rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.signals import SignalHandlerOptions

from .node import SpatialThinkerNode, recommended_executor_threads
from .shutdown import STOP_POLL_S, StopSignals


def main(args: list[str] | None = None) -> None:
    """Spin the node on a MultiThreadedExecutor; with `autostart`, configure and activate it
    first."""
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    node = SpatialThinkerNode()
    stop = StopSignals(node.get_logger())
    executor = MultiThreadedExecutor(num_threads=recommended_executor_threads(node.settings))
    executor.add_node(node)
    try:
        if node.settings.autostart:
            stop.interrupt_startup = True  # a signal abandons a model load still running
            configured = node.trigger_configure() == TransitionCallbackReturn.SUCCESS
            if configured and not stop.requested.is_set():
                node.trigger_activate()
            elif not configured:
                node.get_logger().error("autostart: configure failed; the node stays unconfigured")
            stop.interrupt_startup = False
        while rclpy.ok() and not stop.requested.is_set():
            try:
                executor.spin_once(timeout_sec=STOP_POLL_S)
            except ExternalShutdownException:
                break
            except Exception as exc:  # noqa: BLE001 - one failed callback must not end the node
                if not rclpy.ok():
                    break
                node.get_logger().error(f"callback failed: {type(exc).__name__}: {exc}")
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        stop.interrupt_startup = False
        logger = node.get_logger()
        if rclpy.ok():
            try:  # unconfigured/inactive/active -> finalized; on_shutdown releases everything
                node.trigger_shutdown()
            except Exception as exc:  # noqa: BLE001 - mid-transition: destroy_node releases
                logger.warning(f"lifecycle shutdown skipped: {exc}")
        executor.shutdown()
        node.destroy_node()
        logger.info("shut down cleanly")
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
