"""spatialthinker_ros: SpatialThinker-3B spatial reasoning for ROS 2.

The generated interfaces (msg/srv/action) live in the ament install tree of this same package;
extending __path__ lets `spatialthinker_ros.msg` resolve there when running from the source tree.
"""

__path__ = __import__("pkgutil").extend_path(__path__, __name__)
