"""Start spatialthinker_node (a lifecycle node) with its parameter file and topic remaps.

    ros2 launch spatialthinker_ros perception.launch.py image:=/camera/color/image_raw
    ros2 launch spatialthinker_ros perception.launch.py use_depth:=true \
        depth:=/camera/aligned_depth_to_color/image_raw camera_info:=/camera/color/camera_info

Parameters come from `config_file` (config/perception.yaml by default); the launch arguments
model, device, autostart, use_depth and use_compressed override it when given. With
autostart:=false the node waits unconfigured: `ros2 lifecycle set /spatialthinker_node configure`,
then `activate`.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import LifecycleNode
from launch_ros.substitutions import FindPackageShare

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
    ("namespace", "", "Namespace of the node and of its relative topics"),
    ("node_name", EXECUTABLE, "Name of the node"),
    ("image", "image", "Camera image topic (sensor_msgs/Image)"),
    ("depth", "depth", "Depth image aligned to the camera image (16UC1 mm or 32FC1 m)"),
    ("camera_info", "camera_info", "CameraInfo of the image the depth is aligned to"),
    ("question", "question", "Standing question topic (std_msgs/String)"),
    ("use_sim_time", "false", "Use /clock (bag replay, simulation)"),
    ("log_level", "info", "Logging level: debug, info, warn, error, fatal"),
)
BOOLEAN_OVERRIDES = ("use_depth", "use_compressed")
# Seconds launch waits after its SIGINT before escalating to SIGTERM (launch's default is 5): the
# node's orderly shutdown (cancel the running inference, unload the model, free the GPU) and the
# interpreter's exit with torch loaded take longer than that on a busy machine.
SIGTERM_TIMEOUT_S = "30"
STRING_OVERRIDES = ("model", "device")


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
    image = arg("image")
    node = LifecycleNode(
        package=PACKAGE,
        executable=EXECUTABLE,
        name=arg("node_name"),
        namespace=arg("namespace"),
        output="screen",
        emulate_tty=True,
        parameters=[arg("config_file"), overrides],
        remappings=[
            ("image", image),
            ("image/compressed", image.rstrip("/") + "/compressed"),  # image_transport naming
            ("depth", arg("depth")),
            ("camera_info", arg("camera_info")),
            ("question", arg("question")),
        ],
        arguments=["--ros-args", "--log-level", arg("log_level")],
        sigterm_timeout=SIGTERM_TIMEOUT_S,
    )
    return [node]


def generate_launch_description() -> LaunchDescription:
    declared = [
        DeclareLaunchArgument(name, default_value=default, description=description)
        for name, default, description in ARGUMENTS
    ]
    return LaunchDescription([*declared, OpaqueFunction(function=_launch_node)])
