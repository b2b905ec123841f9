#!/usr/bin/env bash
# rosdep, offline: every key of package.xml must resolve for each LTS distribution and its Ubuntu
# (humble/jammy, jazzy/noble, kilted/noble), against the rosdistro snapshot in ../shared/rosdistro
# (rosdep rules + distribution files; its README has the recipe). Exits non-zero when one does
# not ("Cannot locate rosdep definition for [key]"). Usage: rosdep_check.sh [SOURCE_DIR]
# (default: this checkout; only its top-level package.xml is read, so that nothing else in the tree,
# such as the ROS wheels' package.xml files in .venv, counts as source and hides a key).
# ROSDEP overrides the rosdep executable (default: the venv's); ROSDEP_TARGETS the distro:os list.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${VENV:-$ROOT/.venv}
PACKAGE_XML=$(cd "${1:-$ROOT}" && pwd)/package.xml
SHARED=${SPATIALTHINKER_SHARED:-$ROOT/../shared}
D=$(cd "$SHARED/rosdistro" 2>/dev/null && pwd) || {
  echo "[rosdep] no rosdistro snapshot at $SHARED/rosdistro" >&2; exit 1; }
ROSDEP=${ROSDEP:-$VENV/bin/rosdep}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/sources.list.d" "$WORK/src/package"
SRC=$WORK/src
cp "$PACKAGE_XML" "$SRC/package/package.xml"
printf 'yaml file://%s/rosdep/base.yaml\nyaml file://%s/rosdep/python.yaml\n' "$D" "$D" \
  > "$WORK/sources.list.d/20-default.list"
export ROSDEP_SOURCE_PATH=$WORK/sources.list.d ROSDISTRO_INDEX_URL=file://$D/index.yaml
export ROS_HOME=$WORK/ros-home
# rosdep treats every package on AMENT_PREFIX_PATH / ROS_PACKAGE_PATH as installed (the wheels'
# venv here): unset, so each key is resolved from the rules alone, as on a fresh robot.
unset AMENT_PREFIX_PATH ROS_PACKAGE_PATH ROS_DISTRO ROS_VERSION ROS_PYTHON_VERSION CMAKE_PREFIX_PATH
"$ROSDEP" update --include-eol-distros >"$WORK/update.log" 2>&1 || {
  cat "$WORK/update.log" >&2; exit 1; }
status=0
for target in ${ROSDEP_TARGETS:-humble:ubuntu:jammy jazzy:ubuntu:noble kilted:ubuntu:noble}; do
  distro=${target%%:*} os=${target#*:}
  echo "[rosdep] $distro on $os"
  # --simulate prints the install commands (apt-get for the system keys) and exits non-zero
  # when a key does not resolve.
  if ! (cd "$SRC" && ROS_DISTRO=$distro "$ROSDEP" install --simulate --from-paths . --ignore-src \
      -y --rosdistro "$distro" --os "$os") >"$WORK/$distro.log" 2>&1; then
    sed 's/^/  /' "$WORK/$distro.log" >&2
    echo "[rosdep] FAILED: $distro/$os" >&2
    status=1
  else
    echo "  every key resolved: $(grep -c 'apt-get install' "$WORK/$distro.log" || true) apt packages"
  fi
done
exit $status
