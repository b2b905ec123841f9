# shellcheck shell=bash
# Source me: puts the install tree of scripts/build_interfaces.sh on the paths, so
# `spatialthinker_ros.msg/srv/action` import and `ros2`-style tools find the package.
#   . scripts/ros_env.sh  (VENV, ST_ROS_BUILD, ST_ROS_CLI and ST_ROS_VENDOR override the defaults)
# The repository root goes on PYTHONPATH *before* the install tree: the source code wins over the
# install tree's copy of it, and spatialthinker_ros.ros merges the generated msg/srv/action of the
# install tree into the package (pkgutil.extend_path).
_st_root=$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")/.." && pwd)
_st_venv=${VENV:-$_st_root/.venv}
_st_install=${ST_ROS_BUILD:-$_st_root/build/ros}/install
_st_site=
for _st_dir in "$_st_install"/lib/python3*/site-packages; do
  [ -d "$_st_dir" ] && _st_site=$_st_dir && break
done
if [ -z "$_st_site" ]; then
  echo "ros_env.sh: no install tree at $_st_install (run scripts/build_interfaces.sh)" >&2
else
  export PYTHONPATH="$_st_root:$_st_site${PYTHONPATH:+:$PYTHONPATH}"
  export LD_LIBRARY_PATH="$_st_install/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export AMENT_PREFIX_PATH="$_st_install:$_st_venv${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
fi
# The launch system's composition_interfaces from scripts/install_ros_cli.sh, where installed.
_st_cli=${ST_ROS_CLI:-$_st_root/build/ros-cli}
for _st_dir in "$_st_cli"/lib/python3*/site-packages; do
  if [ -d "$_st_dir" ]; then
    export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$_st_dir"
    export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$_st_cli/lib"
    export AMENT_PREFIX_PATH="${AMENT_PREFIX_PATH:+$AMENT_PREFIX_PATH:}$_st_cli"
  fi
done
# vision_msgs and tf2 from scripts/build_vendor.sh, where built (ST_ROS_VENDOR overrides).
_st_vendor=${ST_ROS_VENDOR:-$_st_root/build/ros-vendor}
for _st_dir in "$_st_vendor"/lib/python3*/site-packages; do
  if [ -d "$_st_dir" ]; then
    export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$_st_dir"
    export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$_st_vendor/lib"
    export AMENT_PREFIX_PATH="${AMENT_PREFIX_PATH:+$AMENT_PREFIX_PATH:}$_st_vendor"
  fi
done
unset _st_root _st_venv _st_install _st_site _st_dir _st_cli _st_vendor
