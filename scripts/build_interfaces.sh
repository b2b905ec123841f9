#!/usr/bin/env bash
# Build this ROS package (msg/srv/action + Python code) with plain cmake against the ROS 2 wheels
# from PyPI in a venv, without a ROS install or colcon. Idempotent: a second run only re-installs.
#   scripts/build_interfaces.sh [VENV] [BUILD_DIR]
# VENV defaults to <repo>/.venv, BUILD_DIR to <repo>/build/ros; the install tree is
# BUILD_DIR/install. Then `. scripts/ros_env.sh` puts it on PYTHONPATH and friends.
# On a machine with ROS 2 installed, use colcon instead (colcon build --packages-select ...).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=$(cd "${1:-$ROOT/.venv}" && pwd)
BUILD=${2:-$ROOT/build/ros}
mkdir -p "$BUILD"
BUILD=$(cd "$BUILD" && pwd)
INSTALL=$BUILD/install
PY=$VENV/bin/python

command -v cmake >/dev/null || { echo "build_interfaces: cmake not found (apt install cmake g++)" >&2; exit 2; }
[ -x "$PY" ] || { echo "build_interfaces: no python at $PY" >&2; exit 2; }
[ -d "$VENV/share/rosidl_default_generators" ] || {
  echo "build_interfaces: $VENV lacks the ROS 2 wheels (pip install -r requirements-ros.txt)" >&2
  exit 2
}

# The wheels' exported cmake files hard-code the wheel build machine's Python and NumPy include
# directories (/opt/python/cp3XX-cp3XX/...): point them at this interpreter's.
"$PY" - "$VENV/share" <<'PYEOF'
import pathlib, re, sys, sysconfig
import numpy
share = pathlib.Path(sys.argv[1])
numpy_inc = re.compile(r"/opt/python/[^/;\"]+/lib/python3\.\d+t?/site-packages/numpy/_core/include")
python_inc = re.compile(r"/opt/python/[^/;\"]+/include/python3\.\d+t?")
for path in share.rglob("*.cmake"):
    text = path.read_text(encoding="utf-8", errors="surrogateescape")
    if "/opt/python/" not in text:
        continue
    fixed = numpy_inc.sub(numpy.get_include(), text)
    fixed = python_inc.sub(sysconfig.get_paths()["include"], fixed)
    if fixed != text:
        path.write_text(fixed, encoding="utf-8", errors="surrogateescape")
        print(f"build_interfaces: fixed include paths in {path.relative_to(share)}")
PYEOF

# CMake refuses to export include directories that lie inside the source tree, and the venv
# usually lies inside the repository: configure from a staging directory of symlinks instead.
SRC=$BUILD/src
mkdir -p "$SRC"
for entry in package.xml CMakeLists.txt msg srv action spatialthinker_ros scripts launch config test; do
  ln -sfn "$ROOT/$entry" "$SRC/$entry"
done

export AMENT_PREFIX_PATH=$VENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}
GENERATOR=()
command -v ninja >/dev/null && [ ! -f "$BUILD/cmake/Makefile" ] && GENERATOR=(-G Ninja)
JOBS=${JOBS:-$(nproc 2>/dev/null || echo 2)}

# RPATH: the generated Python extensions (lib/pythonX.Y/site-packages/spatialthinker_ros/) and
# libraries (lib/) find the libraries they link without LD_LIBRARY_PATH. rosidl's typesupport
# dispatch still dlopen()s libspatialthinker_ros__rosidl_typesupport_*.so by bare name, so a
# process needs $INSTALL/lib on LD_LIBRARY_PATH at start (scripts/ros_env.sh) or those libraries
# loaded beforehand (test/ros/conftest.py).
start=$(date +%s)
cmake -S "$SRC" -B "$BUILD/cmake" "${GENERATOR[@]}" \
  -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$VENV" \
  -DCMAKE_INSTALL_PREFIX="$INSTALL" \
  -DPython3_EXECUTABLE="$PY" \
  -DPython3_FIND_VIRTUALENV=ONLY \
  -DBUILD_TESTING=OFF \
  -DCMAKE_INSTALL_RPATH='$ORIGIN;$ORIGIN/../../..' \
  --log-level=WARNING
cmake --build "$BUILD/cmake" --parallel "$JOBS"
cmake --install "$BUILD/cmake" >/dev/null
touch "$INSTALL/.build_stamp"  # test/ros/conftest.py compares it with the interface sources
echo "build_interfaces: installed into $INSTALL in $(( $(date +%s) - start )) s"
