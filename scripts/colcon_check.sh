#!/usr/bin/env bash
# `colcon build` + `colcon test` of this package as a ROS user builds it (ament_cmake), with colcon
# from PyPI against the ROS 2 wheels in VENV, in a workspace outside the source tree whose src/
# links to this repository; then checks that tests ran (>0), passed, and wrote nothing into the
# source tree. The registered tests are the fast ones (COLCON_TESTS, a ctest -R regex); the node
# tests run in scripts/test.sh.
#   scripts/colcon_check.sh [VENV] [WORKSPACE]     (defaults: .venv, build/colcon_ws)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=$(cd "${1:-$ROOT/.venv}" && pwd)
WS=${2:-$ROOT/build/colcon_ws}
TESTS=${COLCON_TESTS:-^(test_interfaces|test_outputs|test_launch)$}
PY=$VENV/bin/python
"$PY" -c "import colcon_core, colcon_ros, colcon_cmake" 2>/dev/null || {
  echo "colcon_check: colcon is not installed in $VENV (pip install -r requirements-ros.txt)" >&2
  exit 2
}
start=$(date +%s)
mkdir -p "$WS/src"
WS=$(cd "$WS" && pwd)
ln -sfn "$ROOT" "$WS/src/spatialthinker_ros"
# colcon stops at a package's folder; these keep any crawl of the repository out of them anyway.
touch "$VENV/COLCON_IGNORE" "$ROOT/build/COLCON_IGNORE"
# Everything git sees in the checkout (ignored files too), except the workspace itself.
snapshot() {
  git -C "$ROOT" status --porcelain --ignored --untracked-files=all \
    | grep -v -F " ${WS#"$ROOT"/}/" | sort || true
}
before=$(snapshot)

cd "$WS"
export AMENT_PREFIX_PATH=$VENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}
# The underlay: the venv's ROS 2 and, where installed, the launch system's composition_interfaces
# (scripts/ros_env.sh with no interface build, so neither the checkout nor build/ros is on a path).
# shellcheck source=scripts/ros_env.sh
ST_ROS_BUILD=$WS/no-build VENV=$VENV . "$ROOT/scripts/ros_env.sh" 2>/dev/null
export PYTHONDONTWRITEBYTECODE=1
# --cmake-clean-cache: a cache configured before ament_cmake_pytest was installed keeps it missing.
"$PY" -m colcon build --cmake-clean-cache \
  --cmake-args -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=ON -DCMAKE_PREFIX_PATH="$VENV" \
  -DPython3_EXECUTABLE="$PY" -DPython3_FIND_VIRTUALENV=ONLY \
  -DCMAKE_INSTALL_RPATH='$ORIGIN;$ORIGIN/../../..'
built=$(date +%s)
echo "colcon_check: colcon build in $(( built - start )) s"

# The installed package, not the source tree (CMakeLists.txt sets that for each test), inside a
# loopback-only network namespace like scripts/test.sh.
export HF_HUB_OFFLINE=1 ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
NS=(unshare -n)
[ "$(id -u)" = 0 ] || NS=(unshare -rn)
"${NS[@]}" sh -c 'ip link set lo up && exec "$@"' sh \
  "$PY" -m colcon test --event-handlers console_direct+ \
  --ctest-args -R "$TESTS"
"$PY" -m colcon test-result --verbose --test-result-base "$WS/build/spatialthinker_ros" \
  | tee "$WS/test-result.txt"
echo "colcon_check: colcon test in $(( $(date +%s) - built )) s"

# "Summary: N tests, E errors, F failures, S skipped": test-result exits non-zero on errors and
# failures; also refuse a run in which nothing ran.
read -r total skipped < <(sed -n 's/^Summary: \([0-9]*\) tests, .* \([0-9]*\) skipped$/\1 \2/p' \
  "$WS/test-result.txt")
if [ -z "${total:-}" ] || [ $(( total - skipped )) -le 0 ]; then
  echo "colcon_check: colcon test ran no test" >&2
  exit 1
fi
after=$(snapshot)
if [ "$before" != "$after" ]; then
  echo "colcon_check: colcon build/test wrote into the source tree:" >&2
  diff <(echo "$before") <(echo "$after") >&2 || true
  exit 1
fi
echo "colcon_check: $(( total - skipped )) of $total tests ran and passed, source tree untouched," \
  "$(( $(date +%s) - start )) s in all"
