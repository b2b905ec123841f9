"""The package shell: launch file, parameter file, RViz config, package.xml.

`launch` / `launch_ros` are not installable from PyPI, so the launch description is loaded only
where they exist (a ROS install, CI); everything else is checked statically, and the parameter
file is loaded into a real rclpy node with the node's own parameter declarations.
"""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
LAUNCH_FILE = ROOT / "launch" / "perception.launch.py"
PARAMS_FILE = ROOT / "config" / "perception.yaml"
TWO_CAMERAS_FILE = ROOT / "config" / "two_cameras.yaml"
RVIZ_FILE = ROOT / "config" / "spatialthinker.rviz"
NODE_FILE = ROOT / "spatialthinker_ros" / "ros" / "node.py"
PARAMS_MODULE = ROOT / "spatialthinker_ros" / "ros" / "params.py"
NO_LAUNCH = "launch/launch_ros are not installable from PyPI here"
REQUIRED_ARGUMENTS = {
    "model", "config_file", "namespace", "image", "depth", "camera_info", "question",
    "use_sim_time", "autostart", "log_level", "cameras", "remappings",
}


# ------------------------------------------------------------------ static helpers


def _call_name(call: ast.Call) -> str:
    func = call.func
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")


def _calls(path: Path, name: str) -> list[ast.Call]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and _call_name(n) == name]


def _string_arg(call: ast.Call, index: int) -> str | None:
    if len(call.args) > index and isinstance(call.args[index], ast.Constant):
        value = call.args[index].value
        return value if isinstance(value, str) else None
    return None


def declared_parameters() -> set[str]:
    """Parameter names the node declares (its table: the engine options and its own)."""
    from spatialthinker_ros.ros.params import PARAMETERS

    return {p.name for p in PARAMETERS}


def node_subscribed_topics() -> set[str]:
    """Relative topics the node subscribes (one camera)."""
    from spatialthinker_ros.ros import topics

    return set(topics.SUBSCRIBED)


def params_file() -> dict[str, Any]:
    return yaml.safe_load(PARAMS_FILE.read_text())["/**"]["ros__parameters"]


def commented_parameters() -> set[str]:
    """Parameters documented as a commented-out example line (`# name: value`)."""
    return set(re.findall(r"^\s+#\s*([a-z_]+):\s", PARAMS_FILE.read_text(), re.MULTILINE))


def launch_arguments() -> dict[str, str]:
    """name -> description of the ARGUMENTS table of the launch file (parsed, not run)."""
    tree = ast.parse(LAUNCH_FILE.read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "ARGUMENTS" for t in node.targets
        ):
            return {
                entry.elts[0].value: entry.elts[2].value
                for entry in node.value.elts
                if isinstance(entry, ast.Tuple)
            }
    raise AssertionError("launch file has no ARGUMENTS table")


# ------------------------------------------------------------------ launch file


def test_launch_file_declares_documented_arguments() -> None:
    arguments = launch_arguments()
    assert REQUIRED_ARGUMENTS <= set(arguments)
    assert all(isinstance(d, str) and len(d) > 10 for d in arguments.values())
    source = LAUNCH_FILE.read_text()
    assert "LifecycleNode(" in source and 'EXECUTABLE = "spatialthinker_node"' in source


def test_launch_remaps_every_topic_the_node_subscribes() -> None:
    """The launch file remaps `question` and, through launch_args.camera_remappings, every
    camera topic of every camera."""
    from spatialthinker_ros.ros import topics
    from spatialthinker_ros.ros.launch_args import camera_remappings

    source = LAUNCH_FILE.read_text()
    assert "camera_remappings(cameras," in source and '("question", arg("question"))' in source
    assert {"image", "question"} <= node_subscribed_topics()
    for cameras in (("",), ("head",), ("head", "arm/wrist")):
        remapped = {name for name, _ in camera_remappings(cameras, "image", "depth",
                                                          "camera_info")}
        expected = {topics.camera_topic(c, t) for c in cameras for t in topics.CAMERA_TOPICS}
        assert remapped == expected


def test_camera_remap_templates() -> None:
    from spatialthinker_ros.ros.launch_args import camera_remappings

    # One unnamed camera: today's remaps, unchanged.
    assert camera_remappings([""], "/cam/color/image_raw", "depth", "/cam/info") == [
        ("image", "/cam/color/image_raw"), ("image/compressed", "/cam/color/image_raw/compressed"),
        ("depth", "depth"), ("camera_info", "/cam/info")]
    remaps = dict(camera_remappings(["head", "wrist"], "/{camera}/color/image_raw",
                                    "aligned_depth", "/{camera}/color/camera_info"))
    assert remaps["head/image"] == "/head/color/image_raw"
    assert remaps["wrist/image/compressed"] == "/wrist/color/image_raw/compressed"
    assert remaps["wrist/depth"] == "wrist/aligned_depth"  # relative: under the camera's name
    assert remaps["head/camera_info"] == "/head/color/camera_info"
    # One named camera may take an absolute topic.
    assert dict(camera_remappings(["head"], "/x/image_raw", "depth", "camera_info"))[
        "head/image"] == "/x/image_raw"


@pytest.mark.parametrize(
    ("cameras", "image", "reason"),
    [
        (["head", "wrist"], "/x/image_raw", "same topic"),
        ([""], "/{camera}/image_raw", "needs named cameras"),
        (["head"], " ", "empty"),
    ],
)
def test_camera_remap_templates_that_cannot_work_say_why(cameras, image, reason) -> None:
    from spatialthinker_ros.ros.launch_args import camera_remappings

    with pytest.raises(ValueError, match=reason):
        camera_remappings(cameras, image, "depth", "camera_info")


def test_camera_list_and_remappings_arguments() -> None:
    from spatialthinker_ros.ros.launch_args import parse_camera_list, parse_remappings

    assert parse_camera_list("head,wrist") == ["head", "wrist"]
    assert parse_camera_list(" [head, 'arm/wrist'] ") == ["head", "arm/wrist"]
    assert parse_camera_list("") == []
    assert parse_remappings("a/image:=/x b/image:=/y,c:=d") == [
        ("a/image", "/x"), ("b/image", "/y"), ("c", "d")]
    assert parse_remappings("") == []
    with pytest.raises(ValueError, match="from:=to"):
        parse_remappings("a/image=/x")


def test_launch_reads_the_cameras_of_the_parameter_file(tmp_path) -> None:
    from spatialthinker_ros.ros.launch_args import cameras_from_params_file

    assert cameras_from_params_file(PARAMS_FILE, "spatialthinker_node") == [""]
    assert cameras_from_params_file(TWO_CAMERAS_FILE, "spatialthinker_node") == ["head", "wrist"]
    own = tmp_path / "own.yaml"
    own.write_text(yaml.safe_dump({
        "/**": {"ros__parameters": {"cameras": ["a"]}},
        "/robot/perception": {"ros__parameters": {"cameras": ["b", "c"]}},
        "other_node": {"ros__parameters": {"cameras": ["d"]}},
    }))
    assert cameras_from_params_file(own, "perception") == ["b", "c"]  # its own entry first
    assert cameras_from_params_file(own, "spatialthinker_node") == ["a"]
    none = tmp_path / "none.yaml"
    none.write_text(yaml.safe_dump({"/**": {"ros__parameters": {"rate_hz": 2.0}}}))
    assert cameras_from_params_file(none, "spatialthinker_node") is None


def test_launch_overrides_name_node_parameters() -> None:
    namespace: dict[str, Any] = {}
    tree = ast.parse(LAUNCH_FILE.read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name) and (
            node.targets[0].id in ("BOOLEAN_OVERRIDES", "STRING_OVERRIDES")
        ):
            namespace[node.targets[0].id] = ast.literal_eval(node.value)
    overrides = set(namespace["BOOLEAN_OVERRIDES"]) | set(namespace["STRING_OVERRIDES"])
    assert overrides | {"autostart"} <= declared_parameters()
    assert overrides <= set(launch_arguments())


def _launch_node(**arguments: str):
    """The launch file's node for these arguments (the others at their defaults) and the launch
    context; skips where the launch system is not installed."""
    (node, *_others), context = _launch_entities(**arguments)
    return node, context


def _launch_entities(**arguments: str):
    """Every action the launch file's OpaqueFunction returns for these arguments (the node
    first), and the launch context."""
    if importlib.util.find_spec("launch") is None or importlib.util.find_spec("launch_ros") is None:
        pytest.skip(NO_LAUNCH)
    # Runs where ROS 2 is installed (CI); launch is not on PyPI.
    from launch import LaunchContext
    from launch.actions import DeclareLaunchArgument, OpaqueFunction
    from launch.launch_description_sources import get_launch_description_from_python_launch_file
    from launch.utilities import perform_substitutions

    description = get_launch_description_from_python_launch_file(str(LAUNCH_FILE))
    declared = [e for e in description.entities if isinstance(e, DeclareLaunchArgument)]
    assert REQUIRED_ARGUMENTS <= {a.name for a in declared}
    context = LaunchContext()
    context.launch_configurations["config_file"] = str(PARAMS_FILE)
    for argument in declared:
        if argument.name != "config_file":
            value = perform_substitutions(context, argument.default_value)
            context.launch_configurations[argument.name] = value
    context.launch_configurations.update(arguments)
    (opaque,) = [e for e in description.entities if isinstance(e, OpaqueFunction)]
    return opaque.execute(context), context


def test_launch_description_loads_with_launch_ros() -> None:
    node, context = _launch_node(image="/cam/color/image_raw")  # skips without launch
    from launch.utilities import normalize_to_list_of_substitutions, perform_substitutions
    from launch_ros.actions import LifecycleNode

    assert isinstance(node, LifecycleNode)

    def text(value) -> str:  # a str or substitutions, depending on the launch_ros release
        return perform_substitutions(context, normalize_to_list_of_substitutions(value))

    assert text(node.node_package) == "spatialthinker_ros"
    assert text(node.node_executable) == "spatialthinker_node"
    node._perform_substitutions(context)
    assert ("image", "/cam/color/image_raw") in node.expanded_remapping_rules


def test_launch_description_remaps_several_cameras() -> None:
    node, context = _launch_node(cameras="head,wrist", image="/{camera}/color/image_raw",
                                 remappings="wrist/image:=/usb_cam/image_raw")
    node._perform_substitutions(context)
    rules = node.expanded_remapping_rules
    assert rules[0] == ("wrist/image", "/usb_cam/image_raw")  # first: rcl applies it
    assert ("head/image", "/head/color/image_raw") in rules
    assert ("head/image/compressed", "/head/color/image_raw/compressed") in rules
    assert ("wrist/depth", "wrist/depth") in rules and ("question", "question") in rules
    # The cameras of the parameter file when the argument is empty.
    node, context = _launch_node(config_file=str(TWO_CAMERAS_FILE))
    node._perform_substitutions(context)
    assert {"head/image", "wrist/image"} <= {a for a, _ in node.expanded_remapping_rules}
    with pytest.raises(ValueError, match="same topic"):
        _launch_node(cameras="head,wrist", image="/camera/image_raw")


def _rviz(**arguments: str) -> tuple[Any, list[str]]:
    """The rviz2 node the launch adds for these arguments, and its command line after the
    executable (the executable itself is not looked up: RViz is not installed here)."""
    entities, context = _launch_entities(**arguments)  # skips without the launch system
    # After the skip: the repository's launch/ folder is a namespace package named `launch`.
    from launch.utilities import normalize_to_list_of_substitutions, perform_substitutions
    from launch_ros.actions import Node

    (rviz,) = entities[1:]
    assert isinstance(rviz, Node)

    def text(value) -> str:
        return perform_substitutions(context, normalize_to_list_of_substitutions(value))

    assert (text(rviz.node_package), text(rviz.node_executable)) == ("rviz2", "rviz2")
    argv = []
    for part in rviz.cmd[1:]:  # up to the ROS arguments (filled in when the process starts)
        argv.append(perform_substitutions(context, part))
        if argv[-1] == "--ros-args":
            break
    return rviz, argv


def test_launch_starts_rviz_only_with_rviz_true() -> None:
    entities, _context = _launch_entities()
    assert len(entities) == 1  # the node alone: rviz defaults to false
    assert launch_arguments()["rviz"].startswith("true: also start RViz2")


def test_rviz_true_opens_the_installed_config(ros_interfaces) -> None:
    from ament_index_python.packages import get_package_share_directory

    from spatialthinker_ros.ros.rviz_config import shown_topics

    _rviz_node, argv = _rviz(rviz="true")
    assert argv[0] == "-d", argv
    installed = Path(get_package_share_directory("spatialthinker_ros")) / "config"
    assert Path(argv[1]) == installed / "spatialthinker.rviz" and Path(argv[1]).is_file()
    assert shown_topics(Path(argv[1]).read_text()) == (["/debug_image"], ["/markers"])


def test_rviz_true_with_several_cameras_shows_every_debug_image(ros_interfaces) -> None:
    """Two cameras in a namespace: a config derived from the installed one at launch time."""
    from ament_index_python.packages import get_package_share_directory

    from spatialthinker_ros.ros import topics
    from spatialthinker_ros.ros.rviz_config import shown_topics

    _rviz_node, argv = _rviz(rviz="true", cameras="head,wrist", namespace="robot",
                             image="/{camera}/color/image_raw")
    derived = yaml.safe_load(Path(argv[1]).read_text())
    installed = yaml.safe_load((Path(get_package_share_directory("spatialthinker_ros"))
                                / "config" / "spatialthinker.rviz").read_text())
    expected = [f"/robot/{topics.camera_topic(c, topics.DEBUG_IMAGE)}" for c in ("head", "wrist")]
    assert shown_topics(Path(argv[1]).read_text()) == (expected, ["/robot/markers"])
    names = [d["Name"] for d in derived["Visualization Manager"]["Displays"]]
    assert len(set(names)) == len(names)  # RViz keys its panels by display name
    # Everything else is the installed file's: fixed frame, views, the other displays.
    for key in ("Global Options", "Views"):
        assert derived["Visualization Manager"][key] == installed["Visualization Manager"][key]
    kept = {d["Class"] for d in installed["Visualization Manager"]["Displays"]}
    assert {d["Class"] for d in derived["Visualization Manager"]["Displays"]} == kept
    # The cameras of the parameter file count as well.
    _rviz_node, argv = _rviz(rviz="true", config_file=str(TWO_CAMERAS_FILE))
    assert shown_topics(Path(argv[1]).read_text())[0] == ["/head/debug_image",
                                                          "/wrist/debug_image"]


def test_rviz_topics_follow_the_remappings_of_the_launch() -> None:
    from spatialthinker_ros.ros.rviz_config import derive_config, resolve, shown_topics

    rules = [("head/debug_image", "/viz/head"), ("/robot/markers", "boxes")]
    assert resolve("robot", "head/debug_image", rules) == "/viz/head"
    assert resolve("robot", "markers", rules) == "/robot/boxes"  # a relative target: in the ns
    assert resolve("", "debug_image") == "/debug_image"
    derived = derive_config(RVIZ_FILE.read_text(), "/robot/", ["head", "arm/wrist"], rules)
    assert shown_topics(derived) == (["/viz/head", "/robot/arm/wrist/debug_image"],
                                     ["/robot/boxes"])


def test_rviz_fixed_frame_follows_target_frame(ros_interfaces, tmp_path) -> None:
    """target_frame:=base_link (or the parameter file's): RViz's fixed frame is that frame, the
    markers' frame; without one the installed config (the camera's optical frame) opens."""
    from spatialthinker_ros.ros.rviz_config import config_fixed_frame, shown_topics

    _rviz_node, argv = _rviz(rviz="true", target_frame="base_link")
    text = Path(argv[1]).read_text()
    assert config_fixed_frame(text) == "base_link"
    assert shown_topics(text) == (["/debug_image"], ["/markers"])
    params = yaml.safe_load(PARAMS_FILE.read_text())
    params["/**"]["ros__parameters"]["target_frame"] = "odom"
    path = tmp_path / "odom.yaml"
    path.write_text(yaml.safe_dump(params))
    _rviz_node, argv = _rviz(rviz="true", config_file=str(path))
    assert config_fixed_frame(Path(argv[1]).read_text()) == "odom"
    _rviz_node, argv = _rviz(rviz="true")
    assert config_fixed_frame(Path(argv[1]).read_text()) == "camera_color_optical_frame"


# ------------------------------------------------------------------ parameter file


def test_parameter_file_names_only_declared_parameters() -> None:
    declared = declared_parameters()
    in_file = set(params_file())
    assert in_file <= declared, f"unknown to the node: {in_file - declared}"


def test_parameter_file_documents_every_declared_parameter() -> None:
    declared = declared_parameters()
    documented = set(params_file()) | commented_parameters()
    assert declared <= documented, f"missing from config/perception.yaml: {declared - documented}"


def test_parameter_file_values_are_the_node_defaults_and_valid() -> None:
    if not PARAMS_MODULE.exists():
        pytest.skip("spatialthinker_ros/ros/params.py does not exist yet")
    from spatialthinker_ros.ros import params

    values = params_file()
    assert params.validate_values(values) == []
    defaults = params.default_values()
    differing = {k: (v, defaults[k]) for k, v in values.items() if v != defaults[k]}
    assert differing == {}, "config/perception.yaml should show the defaults"
    text = PARAMS_FILE.read_text()
    for name in values:  # every parameter has a comment line right above it
        assert re.search(rf"#[^\n]*\n\s+{name}:", text), name


@pytest.mark.parametrize("path", [PARAMS_FILE, TWO_CAMERAS_FILE], ids=lambda p: p.name)
def test_parameter_file_loads_into_the_node_declarations(ros_netns, path: Path) -> None:
    """rcl parses the file (--params-file) and the node's declarations accept every value."""
    if not PARAMS_MODULE.exists():
        pytest.skip("spatialthinker_ros/ros/params.py does not exist yet")
    import rclpy

    from spatialthinker_ros.ros import params

    context = rclpy.context.Context()
    rclpy.init(args=["test", "--ros-args", "--params-file", str(path)], context=context)
    try:
        node = rclpy.create_node("spatialthinker_node", context=context)
        values, problems = params.declare_parameters(node)
        node.destroy_node()
    finally:
        rclpy.shutdown(context=context)
    assert problems == []
    in_file = yaml.safe_load(path.read_text())["/**"]["ros__parameters"]
    assert {k: values[k] for k in in_file} == in_file


def test_two_cameras_example_is_valid_and_documented() -> None:
    from spatialthinker_ros.ros import params

    values = yaml.safe_load(TWO_CAMERAS_FILE.read_text())["/**"]["ros__parameters"]
    assert set(values) <= declared_parameters()
    assert params.validate_values(values) == []
    settings = params.NodeSettings.from_values(values)
    assert settings.cameras == ("head", "wrist") and settings.standing_order == ("wrist",)
    text = TWO_CAMERAS_FILE.read_text()
    assert "ros2 launch spatialthinker_ros perception.launch.py" in text
    for name in values:  # every parameter has a comment line above it
        assert re.search(rf"#[^\n]*\n\s+{name}:", text), name


# ------------------------------------------------------------------ RViz config, package.xml


def test_rviz_config_shows_debug_image_and_markers(ros_interfaces) -> None:
    config = yaml.safe_load(RVIZ_FILE.read_text())
    displays = {d["Class"]: d for d in config["Visualization Manager"]["Displays"]}
    assert displays["rviz_default_plugins/Image"]["Topic"]["Value"] == "/debug_image"
    markers = displays["rviz_default_plugins/MarkerArray"]
    assert markers["Topic"]["Value"] == "/markers"
    from spatialthinker_ros.core import outputs as marker_module  # namespaces stay in sync

    assert set(markers["Namespaces"]) == {
        marker_module.NAMESPACE_BOXES, marker_module.NAMESPACE_LABELS,
        marker_module.NAMESPACE_RELATIONS}


def test_package_xml_is_a_valid_format_3_interface_package() -> None:
    catkin_pkg = pytest.importorskip("catkin_pkg.package")
    package = catkin_pkg.parse_package(str(ROOT / "package.xml"))
    package.validate()
    assert package.name == "spatialthinker_ros" and package.package_format == 3
    assert package.get_build_type() == "ament_cmake"
    assert "rosidl_interface_packages" in [g.name for g in package.member_of_groups]
    buildtool = {d.name for d in package.buildtool_depends}
    assert {"ament_cmake", "ament_cmake_python", "rosidl_default_generators"} <= buildtool
    runtime = {d.name for d in package.exec_depends}  # <depend> counts as exec_depend too
    assert {"rclpy", "sensor_msgs", "visualization_msgs", "rosidl_default_runtime",
            "lifecycle_msgs", "diagnostic_msgs"} <= runtime
    setup_py = ast.parse((ROOT / "setup.py").read_text())
    versions = [k.value.value for c in ast.walk(setup_py) if isinstance(c, ast.Call)
                for k in c.keywords if k.arg == "version"]
    assert versions == [package.version]
