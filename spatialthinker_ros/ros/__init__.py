"""The rclpy shell around the core: lifecycle node, message conversions, RViz markers.

The generated interfaces (`spatialthinker_ros.msg/.srv/.action`) are installed by rosidl into the
install tree's copy of this package. When the package is imported from a source checkout instead
(PYTHONPATH=<repo>, install tree after it), merge every `spatialthinker_ros` directory on sys.path
into the package so the generated modules resolve; the source modules keep precedence. In an
install tree this is a no-op.
"""

import pkgutil as _pkgutil

import spatialthinker_ros as _package

_package.__path__ = _pkgutil.extend_path(_package.__path__, _package.__name__)
