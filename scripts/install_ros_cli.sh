#!/usr/bin/env bash
# Install the ROS 2 launch system and the `ros2` command line for the tests, where no ROS 2
# install provides them: from ../shared/vendor/ros2-launch-cli (wheels built from upstream, see its
# README) into VENV, and composition_interfaces (built with cmake) into PREFIX. Idempotent; does
# nothing (exit 0) where the vendor folder is absent: a machine with ROS 2 has its own.
#   scripts/install_ros_cli.sh [VENV] [PREFIX]
# SPATIALTHINKER_SHARED overrides the shared folder (default: the repository's ../shared); PREFIX
# defaults to <repo>/build/ros-cli. scripts/ros_env.sh puts PREFIX on the paths (ST_ROS_CLI).
# Run after scripts/build_interfaces.sh (it fixes the wheels' cmake include paths).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=$(cd "${1:-$ROOT/.venv}" && pwd)
PREFIX=${2:-$ROOT/build/ros-cli}
VENDOR=${SPATIALTHINKER_SHARED:-$ROOT/../shared}/vendor/ros2-launch-cli
if [ ! -f "$VENDOR/install.sh" ]; then
  echo "install_ros_cli: no $VENDOR: skipped (the launch/ros2 CLI tests will skip)"
  exit 0
fi
STAMP=$PREFIX/.installed
if [ -f "$STAMP" ] && [ -z "$(find "$VENDOR" -newer "$STAMP" -print -quit)" ] \
  && "$VENV/bin/python" -c "import launch_ros, ros2cli" 2>/dev/null; then
  echo "install_ros_cli: $PREFIX is current"
  exit 0
fi
start=$(date +%s)
rm -rf "$PREFIX"
mkdir -p "$PREFIX"
bash "$VENDOR/install.sh" "$VENV" "$PREFIX"
touch "$STAMP"
echo "install_ros_cli: done in $(( $(date +%s) - start )) s"
