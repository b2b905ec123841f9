"""What launch/perception.launch.py makes of its arguments, free of rclpy and of the launch
system so it is tested anywhere: the camera list and every camera's topic remaps.

Remap convention (README "Several cameras"): the node reads camera C on the relative topics
`C/image`, `C/image/compressed`, `C/depth`, `C/camera_info`. The launch arguments `image`,
`depth`, `camera_info` are templates for each camera's topic: `{camera}` becomes the camera's
name, a relative name is taken under the camera's name, and an absolute name is used as it is
(one camera only). `remappings` adds any other `from:=to` pair (cameras on unrelated topics).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .topics import CAMERA_INFO, COMPRESSED_IMAGE, DEPTH, IMAGE, camera_topic

CAMERA_PLACEHOLDER = "{camera}"


def parse_camera_list(text: str) -> list[str]:
    """The `cameras` argument: names separated by commas or blanks, or a YAML-style list
    ("[head, wrist]"); "" gives [] (the parameter file decides)."""
    names = [n.strip().strip("'\"") for n in re.split(r"[,\s]+", text.strip().strip("[]"))]
    return [n for n in names if n]


def param_from_params_file(path: str | Path, node_name: str, name: str) -> Any:
    """Parameter `name` as a ROS parameter file gives it to the node `node_name` (its own entry
    before a `/**` one), or None when it gives none."""
    import yaml

    document = yaml.safe_load(Path(path).read_text()) or {}
    found: Any = None
    for key, entry in document.items():
        params = (entry or {}).get("ros__parameters", {}) if isinstance(entry, dict) else {}
        if name not in params:
            continue
        own = str(key).rstrip("/").rsplit("/", 1)[-1] == node_name
        if own or (str(key) in ("/**", "**") and found is None):
            found = params[name]
            if own:
                break
    return found


def cameras_from_params_file(path: str | Path, node_name: str) -> list[str] | None:
    """The `cameras` a ROS parameter file gives the node `node_name`, or None."""
    found = param_from_params_file(path, node_name, "cameras")
    return None if found is None else [str(camera) for camera in found]


def camera_remappings(cameras: Sequence[str], image: str, depth: str,
                      camera_info: str) -> list[tuple[str, str]]:
    """(node's relative name, target) for every camera's input topics (see the module doc).
    The compressed stream follows image_transport's naming: `<image target>/compressed`.
    Raises ValueError with the reason for templates that cannot work."""
    templates = {IMAGE: image, DEPTH: depth, CAMERA_INFO: camera_info}
    remaps: list[tuple[str, str]] = []
    for camera in cameras:
        for base, template in templates.items():
            target = _target(camera, base, template.strip(), several=len(cameras) > 1)
            remaps.append((camera_topic(camera, base), target))
            if base == IMAGE:
                remaps.append((camera_topic(camera, COMPRESSED_IMAGE),
                               target.rstrip("/") + "/compressed"))
    return remaps


def _target(camera: str, base: str, template: str, *, several: bool) -> str:
    if not template:
        raise ValueError(f"the {base} argument is empty")
    if CAMERA_PLACEHOLDER in template:
        if not camera:
            raise ValueError(f"{base}:={template}: {CAMERA_PLACEHOLDER} needs named cameras "
                             "(the cameras argument or parameter)")
        return template.replace(CAMERA_PLACEHOLDER, camera)
    if template.startswith("/"):
        if several:
            raise ValueError(f"{base}:={template} would give every camera the same topic: put "
                             f"{CAMERA_PLACEHOLDER} in it (e.g. /{CAMERA_PLACEHOLDER}/color/"
                             "image_raw), use a relative name, or the remappings argument")
        return template
    return camera_topic(camera, template)


def parse_remappings(text: str) -> list[tuple[str, str]]:
    """The `remappings` argument: `from:=to` pairs separated by blanks or commas."""
    pairs = []
    for item in re.split(r"[,\s]+", text.strip()):
        if not item:
            continue
        source, sep, target = item.partition(":=")
        if not sep or not source or not target:
            raise ValueError(f"remappings: {item!r} is not from:=to")
        pairs.append((source, target))
    return pairs
