#!/usr/bin/env bash
# Build the ROS 2 packages the node can use but PyPI lacks, from ../shared/vendor where present:
# vision_msgs (the detections mirrors) and geometry2's tf2, tf2_msgs, tf2_py, tf2_ros_py
# (target_frame). Each goes into one PREFIX with plain cmake against the ROS 2 wheels in VENV
# (the recipes of the vendor folders' READMEs); scripts/ros_env.sh puts PREFIX on the paths
# (ST_ROS_VENDOR). Idempotent: a package whose source is older than its stamp is skipped. Does
# nothing for what is absent: a robot gets them with ROS 2 (rosdep, package.xml), and the node
# runs without them (no detections topics, target_frame refused with one line).
#   scripts/build_vendor.sh [VENV] [PREFIX]
# SPATIALTHINKER_SHARED overrides the shared folder (default: the repository's ../shared); PREFIX
# defaults to <repo>/build/ros-vendor. Run after scripts/build_interfaces.sh (it fixes the wheels'
# cmake include paths).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=$(cd "${1:-$ROOT/.venv}" && pwd)
PREFIX=${2:-$ROOT/build/ros-vendor}
VENDOR=${SPATIALTHINKER_SHARED:-$ROOT/../shared}/vendor
PY=$VENV/bin/python
mkdir -p "$PREFIX"
PREFIX=$(cd "$PREFIX" && pwd)
WORK=$PREFIX/.build
PYVER=$("$PY" -c 'import sys; print(f"python{sys.version_info.major}.{sys.version_info.minor}")')
SITE=$PREFIX/lib/$PYVER/site-packages
GENERATOR=()
command -v ninja >/dev/null && GENERATOR=(-G Ninja)
JOBS=${JOBS:-$(nproc 2>/dev/null || echo 2)}
export AMENT_PREFIX_PATH=$PREFIX:$VENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}

current() {  # current NAME SRC: built, and no file of SRC is newer than the stamp
  local stamp=$PREFIX/.stamp-$1
  [ -f "$stamp" ] && [ -z "$(find "$2" -newer "$stamp" -print -quit)" ]
}

cmake_package() {  # cmake_package NAME SRC
  local name=$1 src=$2 start
  if current "$name" "$src"; then
    echo "build_vendor: $name is current"
    return
  fi
  start=$(date +%s)
  # CMake refuses include directories inside the source tree: build from a copy.
  rm -rf "$WORK/$name"
  mkdir -p "$WORK/$name"
  cp -a "$src" "$WORK/$name/src"
  cmake -S "$WORK/$name/src" -B "$WORK/$name/cmake" "${GENERATOR[@]}" \
    -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_PREFIX_PATH="$PREFIX;$VENV" \
    -DCMAKE_INSTALL_PREFIX="$PREFIX" \
    -DPython3_EXECUTABLE="$PY" \
    -DPython3_FIND_VIRTUALENV=ONLY \
    -DBUILD_TESTING=OFF \
    -DCMAKE_INSTALL_RPATH="\$ORIGIN;\$ORIGIN/../../..;\$ORIGIN/../../../..;$PREFIX/lib;$VENV/lib" \
    --log-level=WARNING >/dev/null
  cmake --build "$WORK/$name/cmake" --parallel "$JOBS" >/dev/null
  cmake --install "$WORK/$name/cmake" >/dev/null
  rm -rf "$WORK/$name"
  touch "$PREFIX/.stamp-$name"
  echo "build_vendor: $name installed in $(( $(date +%s) - start )) s"
}

python_package() {  # python_package NAME SRC: pure Python (setup.py), no dependencies pulled
  local name=$1 src=$2
  if current "$name" "$src"; then
    echo "build_vendor: $name is current"
    return
  fi
  rm -rf "$WORK/$name"
  mkdir -p "$WORK/$name" "$SITE"
  cp -a "$src" "$WORK/$name/src"  # pip writes build files next to setup.py
  "$PY" -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation \
    --upgrade --target "$SITE" "$WORK/$name/src" >/dev/null
  # ament's index: ros2 tooling and get_package_share_directory find the package.
  mkdir -p "$PREFIX/share/ament_index/resource_index/packages" "$PREFIX/share/$name"
  touch "$PREFIX/share/ament_index/resource_index/packages/$name"
  cp "$src/package.xml" "$PREFIX/share/$name/"
  rm -rf "$WORK/$name"
  touch "$PREFIX/.stamp-$name"
  echo "build_vendor: $name installed"
}

built=0
if [ -f "$VENDOR/vision_msgs/vision_msgs/package.xml" ]; then
  cmake_package vision_msgs "$VENDOR/vision_msgs/vision_msgs"
  built=1
else
  echo "build_vendor: no $VENDOR/vision_msgs: skipped (no detections topics)"
fi
G2=$VENDOR/geometry2
if [ -f "$G2/tf2/package.xml" ]; then
  # tf2's CMakeLists finds ament_cmake_ros, which needs gmock/gtest even with testing off.
  missing=()
  for share in ament_cmake_ros ament_cmake_gmock ament_cmake_gtest; do
    [ -d "$VENV/share/$share" ] || missing+=("$share")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "build_vendor: $VENV lacks ${missing[*]} (pip install -r requirements-ros.txt)" >&2
    exit 2
  fi
  cmake_package tf2 "$G2/tf2"  # order matters: each finds the one before in PREFIX
  cmake_package tf2_msgs "$G2/tf2_msgs"
  cmake_package tf2_py "$G2/tf2_py"
  python_package tf2_ros_py "$G2/tf2_ros_py"
  built=1
else
  echo "build_vendor: no $G2: skipped (target_frame needs tf2)"
fi
[ "$built" = 1 ] && touch "$PREFIX/.installed"
exit 0
