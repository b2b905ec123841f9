"""Entry point of spatialthinker_node (`ros2 run` / `ros2 launch`)."""

from __future__ import annotations

import rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import TransitionCallbackReturn

from .node import SpatialThinkerNode, recommended_executor_threads


def main(args: list[str] | None = None) -> None:
    """Spin the node on a MultiThreadedExecutor; with `autostart`, configure and activate it
    first."""
    rclpy.init(args=args)
    node = SpatialThinkerNode()
    executor = MultiThreadedExecutor(num_threads=recommended_executor_threads(node.settings))
    executor.add_node(node)
    try:
        if node.settings.autostart:
            if node.trigger_configure() == TransitionCallbackReturn.SUCCESS:
                node.trigger_activate()
            else:
                node.get_logger().error("autostart: configure failed; the node stays unconfigured")
        while rclpy.ok():
            try:
                executor.spin_once(timeout_sec=1.0)
            except (KeyboardInterrupt, ExternalShutdownException):
                break
            except Exception as exc:  # noqa: BLE001 - one failed callback must not end the node
                if not rclpy.ok():
                    break  # shutting down (SIGINT/SIGTERM)
                node.get_logger().error(f"callback failed: {type(exc).__name__}: {exc}")
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
