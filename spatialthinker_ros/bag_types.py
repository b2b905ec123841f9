"""Our .msg definitions registered in a rosbags typestore, and message construction (no rclpy).

The schemas come from the package's own msg/ files, so bags written here carry exactly the types
the node publishes.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from rosbags.typesys.store import Typestore

from .core.text import safe_fields

PACKAGE = "spatialthinker_ros"
MESSAGES = ("SceneObject", "SceneRelation", "SceneGraph", "SpatialAnswer")


def interface_dir() -> Path:
    """Where SceneGraph.msg lives: the source tree's msg/, the pip-installed share folder, or the
    ament share folder of a ROS install (srv/ and action/ are its siblings in all three)."""
    candidates = [
        Path(__file__).resolve().parent.parent / "msg",
        Path(sys.prefix) / "share" / PACKAGE / "msg",
    ]
    try:
        from ament_index_python.packages import get_package_share_directory

        candidates.append(Path(get_package_share_directory(PACKAGE)) / "msg")
    except Exception:  # noqa: BLE001 - no ament index: not a ROS install
        pass
    for candidate in candidates:
        if (candidate / "SceneGraph.msg").is_file():
            return candidate
    raise FileNotFoundError(
        "cannot find the spatialthinker_ros .msg files; looked in "
        + ", ".join(str(c) for c in candidates)
    )


def msg_definition(name: str) -> str:
    return (interface_dir() / f"{name}.msg").read_text(encoding="utf-8")


def make_typestore() -> Typestore:
    """ROS 2 Kilted's standard types plus ours."""
    store = get_typestore(Stores.ROS2_KILTED)
    types = {}
    for name in MESSAGES:
        types.update(get_types_from_msg(msg_definition(name), f"{PACKAGE}/msg/{name}"))
    store.register(types)
    return store


class BagMessages:
    """The `core.outputs.MessageFactory` of replay: rosbags messages of one typestore, every
    field not given zero/empty, strings made safe."""

    def __init__(self, store: Typestore) -> None:
        self.store = store

    def __call__(self, msgtype: str, **fields: Any):
        return new_message(self.store, msgtype, **safe_fields(fields))


_PRIMITIVE_DEFAULTS = {"string": "", "bool": False, "float32": 0.0, "float64": 0.0}


def new_message(store: Typestore, msgtype: str, **fields: Any):
    """A message of `msgtype` with every field zero/empty except those given."""
    _, fielddefs = store.fielddefs[msgtype]
    values = {}
    for name, (kind, detail) in fielddefs:
        if name in fields:
            values[name] = fields[name]
        else:
            values[name] = _default(store, kind.name, detail)
    return store.types[msgtype](**values)


def _default(store: Typestore, kind: str, detail):
    if kind == "NAME":
        return new_message(store, detail)
    if kind == "BASE":
        return _PRIMITIVE_DEFAULTS.get(detail[0], 0)
    # ARRAY (fixed size) or SEQUENCE
    (inner_kind, inner), size = detail
    if kind == "ARRAY":
        if inner_kind.name == "BASE" and inner[0] != "string":
            return np.zeros(size, dtype=_numpy_dtype(inner[0]))
        return [_default(store, inner_kind.name, inner) for _ in range(size)]
    if inner_kind.name == "BASE" and inner[0] != "string":
        return np.zeros(0, dtype=_numpy_dtype(inner[0]))
    return []


def _numpy_dtype(ros_type: str):
    return {
        "bool": np.bool_,
        "byte": np.uint8,
        "char": np.uint8,
        "float32": np.float32,
        "float64": np.float64,
    }.get(ros_type, np.dtype(ros_type) if ros_type[:3] in ("int", "uin") else np.uint8)
