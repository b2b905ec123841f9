"""Start spatialthinker_node (a lifecycle node) with its parameter file and topic remaps.

    ros2 launch spatialthinker_ros perception.launch.py image:=/camera/color/image_raw
    ros2 launch spatialthinker_ros perception.launch.py use_depth:=true \
        depth:=/camera/aligned_depth_to_color/image_raw camera_info:=/camera/color/camera_info
    ros2 launch spatialthinker_ros perception.launch.py cameras:=head,wrist \
        image:=/{camera}/color/image_raw

Several cameras (`cameras`, or the `cameras` parameter of config_file): the `image`, `depth` and
`camera_info` arguments are then templates for each camera's topics ({camera} becomes its name,
a relative name is taken under it); `remappings` adds any other `from:=to` pairs, e.g.
remappings:="wrist/image:=/usb_cam/image_raw" (spatialthinker_ros/ros/launch_args.py).

Parameters come from `config_file` (config/perception.yaml by default); the launch arguments
model, device, autostart, use_depth, use_compressed and target_frame override it when given. With
autostart:=false the node waits unconfigured: `ros2 lifecycle set /spatialthinker_node configure`,
then `activate`. rviz:=true also starts RViz2 with the installed config/spatialthinker.rviz (one
debug image display per camera, topics in the node's namespace, the fixed frame the node's
target_frame when it has one: spatialthinker_ros/ros/rviz_config.py).
"""

from pathlib import Path

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import LifecycleNode, Node
from launch_ros.substitutions import FindPackageShare

from spatialthinker_ros.ros.launch_args import (
    camera_remappings,
    cameras_from_params_file,
    param_from_params_file,
    parse_camera_list,
    parse_remappings,
)
from spatialthinker_ros.ros.rviz_config import RVIZ_FILE, rviz_config_file

PACKAGE = "spatialthinker_ros"
EXECUTABLE = "spatialthinker_node"

# (name, default, description). An empty default for an override means "keep the file's value".
ARGUMENTS = (
    ("config_file", PathJoinSubstitution([FindPackageShare(PACKAGE), "config", "perception.yaml"]),
     "Parameter file of the node (every parameter, documented)"),
    ("model", "", "Hugging Face id or local directory of the model; empty: the config_file's"),
    ("device", "", "auto, cpu, cuda or cuda:N; empty: the config_file's"),
    ("autostart", "true", "Configure and activate on start (false: drive the lifecycle yourself)"),
    ("use_depth", "", "true: subscribe depth + camera_info for 3D positions; empty: the file's"),
    ("use_compressed", "", "true: also subscribe <image>/compressed; empty: the file's"),
    ("target_frame", "", "Frame of the objects' positions and sizes (tf2, e.g. base_link; RViz's "
     "fixed frame with rviz:=true); empty: the file's (default: the camera's optical frame)"),
    ("namespace", "", "Namespace of the node and of its relative topics"),
    ("node_name", EXECUTABLE, "Name of the node"),
    ("cameras", "", "Camera names, comma-separated (head,wrist): camera C reads C/image etc.; "
     "empty: the config_file's cameras (default one camera on image)"),
    ("image", "image", "Camera image topic (sensor_msgs/Image); with several cameras a template: "
     "{camera} becomes each camera's name, relative names are taken under it"),
    ("depth", "depth", "Depth image aligned to the camera image (16UC1 mm or 32FC1 m); a template "
     "like image"),
    ("camera_info", "camera_info", "CameraInfo of the image the depth is aligned to; a template "
     "like image"),
    ("remappings", "", "Further remaps, from:=to separated by blanks, e.g. "
     "wrist/image:=/usb_cam/image_raw (they take precedence)"),
    ("question", "question", "Standing question topic (std_msgs/String)"),
    ("use_sim_time", "false", "Use /clock (bag replay, simulation)"),
    ("log_level", "info", "Logging level: debug, info, warn, error, fatal"),
    ("rviz", "false", "true: also start RViz2 with the installed config/spatialthinker.rviz "
     "(every camera's debug image and the markers)"),
)
BOOLEAN_OVERRIDES = ("use_depth", "use_compressed")
# Seconds launch waits after its SIGINT before escalating to SIGTERM (launch's default is 5): the
# node's orderly shutdown (cancel the running inference, unload the model, free the GPU) and the
# interpreter's exit with torch loaded take longer than that on a busy machine.
SIGTERM_TIMEOUT_S = "30"
STRING_OVERRIDES = ("model", "device", "target_frame")


def _is_true(text: str) -> bool:
    value = text.strip().lower()
    if value not in ("true", "false", "1", "0", "yes", "no"):
        raise ValueError(f"expected true or false, got {text!r}")
    return value in ("true", "1", "yes")


def _launch_node(context, *_args, **_kwargs):
    def arg(name: str) -> str:
        return LaunchConfiguration(name).perform(context)

    overrides = {
        "use_sim_time": _is_true(arg("use_sim_time")),
        "autostart": _is_true(arg("autostart")),
    }
    overrides.update({name: arg(name) for name in STRING_OVERRIDES if arg(name).strip()})
    overrides.update({name: _is_true(arg(name)) for name in BOOLEAN_OVERRIDES if arg(name).strip()})
    cameras = parse_camera_list(arg("cameras"))
    if cameras:
        overrides["cameras"] = cameras
    else:
        cameras = cameras_from_params_file(arg("config_file"), arg("node_name")) or [""]
    # rcl applies the first rule that matches: the explicit remappings first.
    remappings = [
        *parse_remappings(arg("remappings")),
        *camera_remappings(cameras, arg("image"), arg("depth"), arg("camera_info")),
        ("question", arg("question")),
    ]
    node = LifecycleNode(
        package=PACKAGE,
        executable=EXECUTABLE,
        name=arg("node_name"),
        namespace=arg("namespace"),
        output="screen",
        emulate_tty=True,
        parameters=[arg("config_file"), overrides],
        remappings=remappings,
        arguments=["--ros-args", "--log-level", arg("log_level")],
        sigterm_timeout=SIGTERM_TIMEOUT_S,
    )
    if not _is_true(arg("rviz")):
        return [node]
    shipped = PathJoinSubstitution([FindPackageShare(PACKAGE), "config", RVIZ_FILE])
    target_frame = overrides.get("target_frame") or str(
        param_from_params_file(arg("config_file"), arg("node_name"), "target_frame") or "")
    config = rviz_config_file(Path(shipped.perform(context)), arg("namespace"), cameras,
                              parse_remappings(arg("remappings")), target_frame)
    rviz = Node(package="rviz2", executable="rviz2", name="rviz2", output="screen",
                arguments=["-d", str(config)],
                parameters=[{"use_sim_time": overrides["use_sim_time"]}])
    return [node, rviz]


def generate_launch_description() -> LaunchDescription:
    declared = [
        DeclareLaunchArgument(name, default_value=default, description=description)
        for name, default, description in ARGUMENTS
    ]
    return LaunchDescription([*declared, OpaqueFunction(function=_launch_node)])
