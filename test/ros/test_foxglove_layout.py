"""config/spatialthinker.foxglove.json, the Foxglove layout of the README's Operator section.

Checked as far as possible without the Foxglove app: the layout file format (configById, the
mosaic `layout` tree, globalVariables, userNodes, playbackConfig), each panel's settings against
the Foxglove SDK's own typed panel models (foxglove.layouts: an unknown or misspelt setting
fails), and every topic and type it names against what a live node (real rclpy, the fitted tiny
model) publishes and subscribes, so a renamed topic or a changed type fails here.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAYOUT_FILE = ROOT / "config" / "spatialthinker.foxglove.json"
TOP_LEVEL = {"configById", "globalVariables", "userNodes", "playbackConfig", "layout"}
# A message path ("/answer.scene_graph.objects[0]") starts with its topic.
TOPIC = re.compile(r"^/[A-Za-z0-9_/]*[A-Za-z0-9_]")


def layout() -> dict[str, Any]:
    return json.loads(LAYOUT_FILE.read_text())


def mosaic_leaves(node: Any) -> list[str]:
    """The panel ids of a layout's mosaic tree; fails on a malformed node."""
    if isinstance(node, str):
        return [node]
    assert isinstance(node, dict) and set(node) == {"first", "second", "direction",
                                                    "splitPercentage"}, node
    assert node["direction"] in ("row", "column") and 0 < node["splitPercentage"] < 100, node
    return mosaic_leaves(node["first"]) + mosaic_leaves(node["second"])


def panels_by_type() -> dict[str, dict[str, Any]]:
    return {panel_id.split("!", 1)[0]: config
            for panel_id, config in layout()["configById"].items()}


def named_topics(value: Any) -> set[str]:
    """Every topic the layout names: strings and keys that start with '/'."""
    found: set[str] = set()
    if isinstance(value, dict):
        for key, item in value.items():
            found |= named_topics(key) | named_topics(item)
    elif isinstance(value, list):
        for item in value:
            found |= named_topics(item)
    elif isinstance(value, str) and value.startswith("/"):
        match = TOPIC.match(value)
        assert match, f"not a topic: {value!r}"
        found.add(match.group(0))
    return found


def test_layout_file_has_the_layout_format() -> None:
    data = layout()
    assert set(data) == TOP_LEVEL
    assert data["globalVariables"] == {} and data["userNodes"] == {}
    assert data["playbackConfig"]["speed"] > 0
    leaves = mosaic_leaves(data["layout"])
    assert sorted(leaves) == sorted(data["configById"])  # every panel placed, exactly once
    for panel_id in leaves:
        assert re.fullmatch(r"[A-Za-z0-9]+![a-z0-9]+", panel_id), panel_id


def test_panels_are_the_foxglove_sdks_panel_models() -> None:
    """The three panels, each with settings of the SDK's models for that panel type."""
    fl = pytest.importorskip("foxglove.layouts", reason="pip install foxglove-sdk (test extra)")

    def keys(model: Any) -> set[str]:
        return set(model._to_dict())

    panels = panels_by_type()
    assert set(panels) == {fl.ImagePanel()._to_dict()["panelType"],
                           fl.RawMessagesPanel()._to_dict()["panelType"],
                           fl.PublishPanel()._to_dict()["panelType"]}
    image = panels["Image"]
    assert set(image) <= keys(fl.ImageConfig())
    assert set(image["imageMode"]) <= keys(fl.ImageModeConfig())
    for settings in image["topics"].values():
        assert set(settings) <= keys(fl.BaseRendererRosMarkerTopicSettings())
    raw = panels["RawMessages"]
    assert set(raw) <= keys(fl.RawMessagesConfig()) and raw["expansion"] == "all"
    publish = panels["Publish"]
    assert set(publish) <= keys(fl.PublishConfig())
    assert isinstance(json.loads(publish["value"])["data"], str)  # a std_msgs/String to edit


def test_panels_show_the_debug_image_markers_answer_and_publish_the_question() -> None:
    from spatialthinker_ros.ros import topics

    panels = panels_by_type()
    assert panels["Image"]["imageMode"]["imageTopic"] == f"/{topics.DEBUG_IMAGE}"
    assert set(panels["Image"]["topics"]) == {f"/{topics.MARKERS}"}
    assert panels["RawMessages"]["topicPath"] == f"/{topics.ANSWER}"
    assert panels["Publish"]["topicName"] == f"/{topics.QUESTION}"


def test_every_topic_and_type_is_the_live_nodes(make_harness) -> None:
    """Topics as a node in the root namespace has them (here under the harness's namespace),
    with the types it publishes and subscribes (use_depth: camera_info, the image panel's
    calibration for drawing the 3D markers)."""
    harness = make_harness(use_depth=True)
    node, ns = harness.node.get_name(), harness.node.get_namespace()
    graph = harness.client
    named = named_topics(layout()["configById"])
    assert named, "the layout names no topic"

    def offered() -> dict[str, set[str]]:
        found: dict[str, set[str]] = {}
        # The node and its camera intake helper node (the camera subscriptions).
        for name in (node, harness.node.intake.node.get_name()):
            for topic, types in (graph.get_publisher_names_and_types_by_node(name, ns)
                                 + graph.get_subscriber_names_and_types_by_node(name, ns)):
                found.setdefault(topic.removeprefix(ns), set()).update(types)
        return found

    deadline = time.monotonic() + 20.0  # the graph of a node just started fills in
    while not named <= set(offered()) and time.monotonic() < deadline:
        time.sleep(0.1)
    missing = sorted(named - set(offered()))
    assert not missing, f"topics the node neither publishes nor subscribes: {missing}"
    publish = panels_by_type()["Publish"]
    assert publish["datatype"] in offered()[publish["topicName"]]
