"""The RViz2 config that `perception.launch.py rviz:=true` opens (no rclpy, no launch system).

The shipped config/spatialthinker.rviz shows one camera's debug image and the markers of a node in
the root namespace. For anything else (several cameras, a namespace, remapped outputs) the launch
derives a config from the installed one at launch time: the debug-image display repeated once
per camera (`C/debug_image`), every topic resolved in the node's namespace and through the
launch's `remappings`, and the fixed frame set to the node's target_frame when it has one
(markers are in that frame then; the shipped one is the camera's optical frame). Everything
else of the shipped file (views, the other displays) is kept, so an edit there carries over.
"""

from __future__ import annotations

import copy
import hashlib
import tempfile
from collections.abc import Sequence
from pathlib import Path

import yaml

from .topics import DEBUG_IMAGE, MARKERS, camera_topic

RVIZ_FILE = "spatialthinker.rviz"
IMAGE_DISPLAY = "rviz_default_plugins/Image"
MARKERS_DISPLAY = "rviz_default_plugins/MarkerArray"


def resolve(namespace: str, name: str, remappings: Sequence[tuple[str, str]] = ()) -> str:
    """The absolute topic a node in `namespace` uses for its relative topic `name`, after the
    first remap rule whose source is that name (relative or absolute), as rcl applies them."""
    ns = "/" + namespace.strip("/") if namespace.strip("/") else ""
    absolute = f"{ns}/{name}"
    for source, target in remappings:
        if source in (name, absolute):
            return target if target.startswith("/") else f"{ns}/{target}"
    return absolute


def debug_image_topics(namespace: str, cameras: Sequence[str],
                       remappings: Sequence[tuple[str, str]] = ()) -> list[str]:
    return [resolve(namespace, camera_topic(c, DEBUG_IMAGE), remappings) for c in cameras]


def derive_config(shipped: str, namespace: str, cameras: Sequence[str],
                  remappings: Sequence[tuple[str, str]] = (), fixed_frame: str = "") -> str:
    """The shipped config's text made to show every camera of a node in `namespace`, in
    `fixed_frame` when given (the node's target_frame)."""
    config = yaml.safe_load(shipped)
    if fixed_frame:
        config["Visualization Manager"]["Global Options"]["Fixed Frame"] = fixed_frame
    displays = config["Visualization Manager"]["Displays"]
    (image,) = [d for d in displays if d["Class"] == IMAGE_DISPLAY]
    copies = []
    for camera, topic in zip(cameras, debug_image_topics(namespace, cameras, remappings),
                             strict=True):
        display = copy.deepcopy(image)
        display["Name"] = f"{image['Name']} ({camera})" if camera else image["Name"]
        display["Topic"]["Value"] = topic
        copies.append(display)
    at = displays.index(image)
    displays[at:at + 1] = copies
    for display in displays:
        if display["Class"] == MARKERS_DISPLAY:
            display["Topic"]["Value"] = resolve(namespace, MARKERS, remappings)
    header = (f"# Derived by perception.launch.py from the installed {RVIZ_FILE} for cameras "
              f"{list(cameras)} in namespace '{namespace or '/'}'"
              f"{f', fixed frame {fixed_frame}' if fixed_frame else ''}.\n")
    return header + yaml.safe_dump(config, sort_keys=False)


def shown_topics(config_text: str) -> tuple[list[str], list[str]]:
    """(debug image topics, marker topics) an RViz config's displays subscribe."""
    displays = yaml.safe_load(config_text)["Visualization Manager"]["Displays"]
    return ([d["Topic"]["Value"] for d in displays if d["Class"] == IMAGE_DISPLAY],
            [d["Topic"]["Value"] for d in displays if d["Class"] == MARKERS_DISPLAY])


def config_fixed_frame(config_text: str) -> str:
    """An RViz config's fixed frame."""
    return str(yaml.safe_load(config_text)["Visualization Manager"]["Global Options"]
               ["Fixed Frame"])


def rviz_config_file(shipped: Path, namespace: str, cameras: Sequence[str],
                     remappings: Sequence[tuple[str, str]] = (), fixed_frame: str = "") -> Path:
    """`shipped` itself when it shows the node as launched (for the default: one camera, root
    namespace, outputs not remapped, no target_frame); else a derived config in a fresh
    temporary folder."""
    text = shipped.read_text()
    derived = derive_config(text, namespace, cameras, remappings, fixed_frame)
    if (shown_topics(text) == shown_topics(derived)
            and config_fixed_frame(text) == config_fixed_frame(derived)):
        return shipped
    digest = hashlib.sha256(derived.encode()).hexdigest()[:12]
    path = Path(tempfile.mkdtemp(prefix="spatialthinker_rviz_")) / f"{digest}_{RVIZ_FILE}"
    path.write_text(derived)
    return path
