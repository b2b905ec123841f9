#!/usr/bin/env bash
# Fresh machine -> ready: a venv with the package, its test tools, ROS 2 (rclpy from PyPI) and
# our generated interfaces. Idempotent. VENV overrides the venv path (default .venv).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${VENV:-$ROOT/.venv}
# torch + torchvision that work together here (see ../shared/notes/ENVIRONMENT.md); override
# TORCH_SPEC on other machines (a CUDA build from pytorch.org, a Jetson wheel, ...).
if [ "$(uname -m)" = "aarch64" ]; then
  TORCH_SPEC=${TORCH_SPEC:-"torch==2.9.1 torchvision==0.24.1"}
else
  TORCH_SPEC=${TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}
fi

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
echo "[setup] torch: $TORCH_SPEC"
# shellcheck disable=SC2086
"${PIP[@]}" $TORCH_SPEC
echo "[setup] spatialthinker_ros[test] (editable)"
"${PIP[@]}" -e "$ROOT[test]"
echo "[setup] ROS 2 wheels"
"${PIP[@]}" -r "$ROOT/requirements-ros.txt"
echo "[setup] building msg/srv/action"
bash "$ROOT/scripts/build_interfaces.sh" "$VENV"
echo "[setup] ROS 2 launch system + ros2 CLI (from ../shared/vendor where present)"
bash "$ROOT/scripts/install_ros_cli.sh" "$VENV"
echo "[setup] vision_msgs + tf2 (from ../shared/vendor where present)"
bash "$ROOT/scripts/build_vendor.sh" "$VENV"
# A venv (and build/) inside a checkout that lies in a colcon workspace is never crawled.
touch "$VENV/COLCON_IGNORE"
echo "[setup] done: $VENV"
