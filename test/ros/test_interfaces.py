"""The generated msg/srv/action: they import, carry the documented constants, and their CDR bytes
and RIHS01 type hashes equal those of `rosbags` reading the same definition files, which the bag
replay uses to write SceneGraph/SpatialAnswer topics (so bags it writes play in ROS 2)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("spatialthinker_ros.msg", reason=os.environ.get(
    "SPATIALTHINKER_ROS_INTERFACES_UNAVAILABLE", "generated interfaces not importable"))

from builtin_interfaces.msg import Duration, Time  # noqa: E402
from geometry_msgs.msg import Point  # noqa: E402
from rclpy.serialization import deserialize_message, serialize_message  # noqa: E402
from rosbags.typesys import Stores, get_types_from_msg, get_typestore  # noqa: E402
from rosbags.typesys.msg import normalize_msgtype  # noqa: E402
from spatialthinker_ros.action import AskSpatial as AskSpatialAction  # noqa: E402
from spatialthinker_ros.msg import (  # noqa: E402
    SceneGraph,
    SceneObject,
    SceneRelation,
    SpatialAnswer,
)
from spatialthinker_ros.srv import AskSpatial  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "spatialthinker_ros"
OWN_MESSAGES = ("SceneObject", "SceneRelation", "SceneGraph", "SpatialAnswer")


# ------------------------------------------------------------------ rosbags side


def _qualify(text: str) -> str:
    """Package-qualify our own message names: rosbags resolves a bare name in an srv/action part
    to the srv/action namespace, ROS to the package's msg."""
    pattern = re.compile(rf"^({'|'.join(OWN_MESSAGES)})(\[\])?(\s)", re.MULTILINE)
    return pattern.sub(rf"{PACKAGE}/\1\2\3", text)


def _definition_parts() -> dict[str, str]:
    """rosbags type name -> message definition text, for every msg and srv/action part."""
    parts = {f"{PACKAGE}/msg/{p.stem}": p.read_text() for p in sorted((ROOT / "msg").glob("*.msg"))}
    for path in sorted((ROOT / "srv").glob("*.srv")):
        request, response = path.read_text().split("\n---\n")
        parts[f"{PACKAGE}/srv/{path.stem}_Request"] = request
        parts[f"{PACKAGE}/srv/{path.stem}_Response"] = response
    for path in sorted((ROOT / "action").glob("*.action")):
        goal, result, feedback = path.read_text().split("\n---\n")
        for suffix, text in (("Goal", goal), ("Result", result), ("Feedback", feedback)):
            parts[f"{PACKAGE}/action/{path.stem}_{suffix}"] = text
    return parts


@pytest.fixture(scope="module")
def typestore():
    store = get_typestore(Stores.ROS2_KILTED)  # the distribution of the rclpy wheels here
    types: dict[str, Any] = {}
    for name, text in _definition_parts().items():
        types.update(get_types_from_msg(_qualify(text), normalize_msgtype(name)))
    store.register(types)
    return store


def rosbags_name(msg: Any) -> str:
    """rosbags' name of an rclpy message type (it files srv parts under <pkg>/srv/msg/)."""
    package, kind, _ = type(msg).__module__.split(".", 2)
    return normalize_msgtype(f"{package}/{kind}/{type(msg).__name__}")


def to_rosbags(msg: Any, store: Any) -> Any:
    """An rclpy message -> the equal rosbags message, field by field (our types hold strings,
    numbers, nested messages and sequences of strings or messages)."""
    values = {}
    for field, field_type in msg.get_fields_and_field_types().items():
        value = getattr(msg, field)
        inner = field_type.removeprefix("sequence<").removesuffix(">")
        if "/" in inner:
            value = ([to_rosbags(v, store) for v in value] if field_type.startswith("sequence<")
                     else to_rosbags(value, store))
        elif field_type.startswith("sequence<"):
            value = list(value)
        values[field] = value
    return store.types[rosbags_name(msg)](**values)


# ------------------------------------------------------------------ filled messages


def filled_graph() -> SceneGraph:
    header = Header(stamp=Time(sec=1_732_500_000, nanosec=123_456_789), frame_id="camera_optical")
    cup = SceneObject(id="cup.1", label="cup", has_box=True, x_min=10.5, y_min=20.25,
                      x_max=110.0, y_max=220.75, has_position=True,
                      position=Point(x=-0.25, y=0.125, z=1.5))
    laptop = SceneObject(id="laptop.1", label="laptop", has_box=True, x_min=300.0, y_min=50.0,
                         x_max=639.0, y_max=400.0)
    ghost = SceneObject(id="ghost.1", label="ghost")  # no box, no position
    return SceneGraph(
        header=header, image_width=640, image_height=480,
        observation="A desk with a cup left of an open laptop. Ünïcödé ✓.",
        objects=[cup, laptop, ghost],
        relations=[SceneRelation(subject_id="cup.1", predicate="left of", object_id="laptop.1")],
    )


def filled_answer() -> SpatialAnswer:
    graph = filled_graph()
    return SpatialAnswer(
        header=graph.header, request_id="req-42", question="Where is the cup?",
        choices=["left of the laptop", "right of the laptop"], option="A",
        answer_text="left of the laptop", matched_choice="left of the laptop",
        reasoning="The cup's box ends before the laptop's begins.", scene_graph=graph,
        status=SpatialAnswer.STATUS_PARTIAL, status_message="thought section repaired",
        raw_output="<observe>...</observe><answer> (A) left of the laptop </answer>",
        inference_time=Duration(sec=2, nanosec=500_000_000), generated_tokens=321,
    )


def filled_messages() -> dict[str, Any]:
    answer = filled_answer()
    return {
        "SceneObject": answer.scene_graph.objects[0],
        "SceneRelation": answer.scene_graph.relations[0],
        "SceneGraph": answer.scene_graph,
        "SpatialAnswer": answer,
        "SpatialAnswer(empty)": SpatialAnswer(),
        "AskSpatial.Request": AskSpatial.Request(question="Is the cup left of the laptop?",
                                                 choices=["yes", "no"], max_image_age_s=0.5,
                                                 request_id="r1"),
        "AskSpatial.Response": AskSpatial.Response(answer=answer),
        "AskSpatialAction.Goal": AskSpatialAction.Goal(question="q", choices=["a"],
                                                       max_image_age_s=-1.0),
        "AskSpatialAction.Result": AskSpatialAction.Result(answer=answer),
        "AskSpatialAction.Feedback": AskSpatialAction.Feedback(
            stage=AskSpatialAction.Feedback.STAGE_SCENE_GRAPH_READY,
            text_delta="</scene>",
            scene_graph=answer.scene_graph),
    }


# ------------------------------------------------------------------ tests


def test_generated_types_import_with_the_node_code() -> None:
    import spatialthinker_ros
    from spatialthinker_ros.ros import conversions

    assert conversions.message_class("spatialthinker_ros/msg/SpatialAnswer") is SpatialAnswer
    # One package holds both: the generated modules and the Python code.
    assert hasattr(spatialthinker_ros, "__path__")
    assert Path(SpatialAnswer.__module__.replace(".", "/")).parts[:2] == (PACKAGE, "msg")
    assert AskSpatial.Request().max_image_age_s == 0.0
    assert list(AskSpatialAction.Goal().choices) == []


def test_status_and_stage_constants() -> None:
    statuses = {name: getattr(SpatialAnswer, name) for name in dir(SpatialAnswer)
                if name.startswith("STATUS_")}
    assert statuses == {
        "STATUS_OK": 0, "STATUS_PARTIAL": 1, "STATUS_PARSE_ERROR": 2, "STATUS_NO_IMAGE": 3,
        "STATUS_STALE_IMAGE": 4, "STATUS_BUSY": 5, "STATUS_INFERENCE_ERROR": 6,
        "STATUS_TIMEOUT": 7, "STATUS_CANCELED": 8, "STATUS_INVALID_REQUEST": 9,
    }
    feedback = AskSpatialAction.Feedback
    stages = [feedback.STAGE_QUEUED, feedback.STAGE_OBSERVING, feedback.STAGE_SCENE_GRAPH_READY,
              feedback.STAGE_THINKING, feedback.STAGE_ANSWERED]
    assert stages == [0, 1, 2, 3, 4]


def test_constants_agree_with_rosbags(typestore) -> None:
    rb_answer = typestore.types[f"{PACKAGE}/msg/SpatialAnswer"]
    rb_feedback = typestore.types[f"{PACKAGE}/action/AskSpatial_Feedback"]
    for name in (n for n in dir(SpatialAnswer) if n.startswith("STATUS_")):
        assert getattr(rb_answer, name) == getattr(SpatialAnswer, name), name
    for name in (n for n in dir(AskSpatialAction.Feedback) if n.startswith("STAGE_")):
        assert getattr(rb_feedback, name) == getattr(AskSpatialAction.Feedback, name), name


@pytest.mark.parametrize("name", list(filled_messages()))
def test_cdr_bytes_equal_rosbags_both_ways(name: str, typestore) -> None:
    msg = filled_messages()[name]
    typename = rosbags_name(msg)
    rclpy_bytes = serialize_message(msg)
    rb_msg = to_rosbags(msg, typestore)
    rosbags_bytes = bytes(typestore.serialize_cdr(rb_msg, typename))
    assert len(rclpy_bytes) == len(rosbags_bytes)
    # Fast CDR leaves alignment padding uninitialised (seen as 0x55 bytes), rosbags zeroes it:
    # the streams may differ only where rosbags wrote a padding zero.
    pairs = zip(rclpy_bytes, rosbags_bytes, strict=True)
    differing = [i for i, (a, b) in enumerate(pairs) if a != b]
    assert all(rosbags_bytes[i] == 0 for i in differing), differing
    assert deserialize_message(rosbags_bytes, type(msg)) == msg
    assert typestore.deserialize_cdr(rclpy_bytes, typename) == rb_msg


def test_serialization_keeps_every_field() -> None:
    answer = filled_answer()
    back = deserialize_message(serialize_message(answer), SpatialAnswer)
    assert back.scene_graph.objects[0].position.z == 1.5
    assert back.scene_graph.objects[2].has_box is False
    assert back.scene_graph.observation.endswith("Ünïcödé ✓.")
    assert list(back.choices) == ["left of the laptop", "right of the laptop"]
    assert back.inference_time.nanosec == 500_000_000
    assert back.header.stamp.nanosec == 123_456_789
    assert back != SpatialAnswer()


def _installed_type_hashes() -> dict[str, str]:
    import spatialthinker_ros.msg as generated

    hashes: dict[str, str] = {}
    # <prefix>/lib/pythonX.Y/site-packages/spatialthinker_ros/msg -> <prefix>/share/...
    prefix = Path(generated.__file__).resolve().parents[5]
    for path in sorted((prefix / "share" / PACKAGE / "msg").glob("*.json")):
        for entry in json.loads(path.read_text())["type_hashes"]:
            hashes[entry["type_name"]] = entry["hash_string"]
    return hashes


def test_type_hashes_equal_rosbags(typestore) -> None:
    hashes = _installed_type_hashes()
    if not hashes:
        pytest.skip("no type description JSON installed (ROS 2 distributions before Iron)")
    for name in OWN_MESSAGES:
        typename = f"{PACKAGE}/msg/{name}"
        assert typestore.hash_rihs01(typename) == hashes[typename], name


def test_answer_crosses_dds_on_loopback(ros_netns) -> None:
    """A real publisher and subscription (Fast DDS, loopback only) carry a full SpatialAnswer."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    context = rclpy.context.Context()
    rclpy.init(context=context)
    try:
        node = rclpy.create_node("interfaces_test", namespace="/st_interfaces", context=context)
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        received: list[SpatialAnswer] = []
        got = threading.Event()

        def on_answer(msg: SpatialAnswer) -> None:
            received.append(msg)
            got.set()

        node.create_subscription(SpatialAnswer, "answer", on_answer, qos)
        publisher = node.create_publisher(SpatialAnswer, "answer", qos)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        sent = filled_answer()
        for _ in range(200):  # publish until matched and delivered (bounded, no timing asserts)
            publisher.publish(sent)
            executor.spin_once(timeout_sec=0.05)
            if got.is_set():
                break
        executor.shutdown()
        node.destroy_node()
    finally:
        rclpy.shutdown(context=context)
    assert received, "the subscription never received the answer"
    assert received[0] == sent


def test_install_tree_holds_code_messages_and_entry_points(ros_interfaces: Path) -> None:
    """The installed `spatialthinker_ros` is one package: our modules and the generated ones,
    importable with nothing from the source tree on the path."""
    if not (ros_interfaces / "share" / PACKAGE).is_dir():
        pytest.skip("interfaces come from the environment, not from build/ros")
    executable = ros_interfaces / "lib" / PACKAGE / "spatialthinker_node"
    assert executable.is_file() and os.access(executable, os.X_OK)
    share = ros_interfaces / "share" / PACKAGE
    assert (share / "launch" / "perception.launch.py").is_file()
    assert (share / "config" / "perception.yaml").is_file()
    site = next((ros_interfaces / "lib").glob("python3*/site-packages"))
    installed = site / PACKAGE
    assert (installed / "__init__.py").read_text() == (ROOT / PACKAGE / "__init__.py").read_text()
    assert (installed / "ros" / "conversions.py").is_file()
    assert (installed / "msg" / "_spatial_answer.py").is_file()

    script = (
        "import spatialthinker_ros, spatialthinker_ros.ros.conversions as c\n"
        "from spatialthinker_ros.msg import SpatialAnswer\n"
        "from rclpy.serialization import serialize_message\n"
        "assert len(spatialthinker_ros.__path__) == 1, spatialthinker_ros.__path__\n"
        "print(spatialthinker_ros.__path__[0], c.message_class('std_msgs/msg/Header').__name__,"
        " len(serialize_message(SpatialAnswer())))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSAFEPATH")}
    env["PYTHONPATH"] = str(site)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        p for p in (str(ros_interfaces / "lib"), os.environ.get("LD_LIBRARY_PATH", "")) if p)
    env.pop("_ROS_WHEELS_BOOTSTRAP_COMPLETE", None)  # let the wheels set their library path
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=ros_interfaces,
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    location, header, size = done.stdout.split()
    assert Path(location) == installed and header == "Header" and int(size) > 4
