#!/usr/bin/env bash
# The ROS tests against ROS 2 Jazzy (the ros-jazzy-* wheels: rclpy 7.x, Fast DDS 2.x, NumPy 1.x),
# besides Kilted in scripts/test.sh. A second venv gets the Jazzy wheels and borrows everything
# else (torch, transformers, the test tools) from the main venv through a .pth file naming a
# folder of links to those distributions (no second multi-GB torch install); our interfaces are
# built against Jazzy into their own build folder; then pytest runs JAZZY_TESTS in a loopback-only
# network namespace. The launch/ros2 CLI tests skip there (the vendored CLI is Kilted's).
#   scripts/jazzy_check.sh [VENV]        (the main venv; default .venv; JAZZY_DIR: build/jazzy)
# Installing needs PyPI: `scripts/jazzy_check.sh --setup` (scripts/setup.sh runs it) installs and
# builds only; without it the venv must exist and nothing is fetched.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SETUP=
if [ "${1:-}" = "--setup" ]; then SETUP=1; shift; fi
VENV=$(cd "${1:-$ROOT/.venv}" && pwd)
JAZZY=${JAZZY_DIR:-$ROOT/build/jazzy}
JVENV=$JAZZY/venv
# The node tests (the load, fault and remote-backend ones run on Kilted only, to keep CI short).
read -ra TESTS <<<"${JAZZY_TESTS:-test/ros/test_interfaces.py test/ros/test_outputs.py \
test/ros/test_launch.py test/ros/test_cmake.py test/ros/test_node.py}"
start=$(date +%s)

if [ -n "$SETUP" ]; then
  mkdir -p "$JAZZY"
  [ -x "$JVENV/bin/python" ] || "$VENV/bin/python" -m venv "$JVENV"  # same Python as the main venv
  touch "$JVENV/COLCON_IGNORE"
  "$JVENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    -r "$ROOT/requirements-ros-jazzy.txt"
  # Links to the main venv's distributions that spatialthinker_ros[test] needs, except the ROS
  # wheels (Kilted's) and NumPy (Jazzy's compiled modules need 1.x, installed above).
  "$VENV/bin/python" - "$JAZZY/borrowed" <<'PYEOF'
import importlib.metadata as md
import re
import shutil
import sys
from pathlib import Path

from packaging.requirements import Requirement

target = Path(sys.argv[1])
shutil.rmtree(target, ignore_errors=True)
target.mkdir(parents=True)
skip = re.compile(r"^(ros-.*|numpy|spatialthinker-ros)$")
seen: set[str] = set()
todo = [Requirement(r) for r in md.requires("spatialthinker_ros") or []]
extras = {"test", "remote"}
while todo:
    req = todo.pop()
    name = re.sub(r"[-_.]+", "-", req.name).lower()
    if name in seen or skip.match(name):
        continue
    if req.marker and not any(req.marker.evaluate({"extra": e}) for e in extras | {""}):
        continue
    seen.add(name)
    try:
        dist = md.distribution(req.name)
    except md.PackageNotFoundError:
        continue  # an optional dependency not installed in the main venv
    for extra in req.extras:
        extras.add(extra)
    todo += [Requirement(r) for r in dist.requires or []]
    site = Path(dist.locate_file(""))
    tops = {Path(f).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
    for top in tops:
        if (site / top).exists() and not (target / top).exists():
            (target / top).symlink_to(site / top)
print(f"jazzy_check: {len(seen)} distributions borrowed from {sys.prefix}")
PYEOF
  site=$("$JVENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  echo "$JAZZY/borrowed" > "$site/spatialthinker_borrowed.pth"
  bash "$ROOT/scripts/build_interfaces.sh" "$JVENV" "$JAZZY/ros"
  echo "jazzy_check: set up in $(( $(date +%s) - start )) s"
  exit 0
fi

[ -x "$JVENV/bin/python" ] || { echo "jazzy_check: no $JVENV (scripts/jazzy_check.sh --setup)" >&2; exit 2; }
"$JVENV/bin/python" -c "import rclpy, torch, transformers, pytest"
# scripts/test.sh with the Jazzy venv and build; ST_ROS_CLI, ST_ROS_VENDOR: not the Kilted
# composition_interfaces, vision_msgs and tf2 (built against the Kilted wheels).
MAIN_RUFF=$VENV/bin/ruff
VENV=$JVENV ST_ROS_BUILD=$JAZZY/ros SPATIALTHINKER_ROS_BUILD=$JAZZY/ros ST_ROS_CLI=$JAZZY/no-ros-cli \
  ST_ROS_VENDOR=$JAZZY/no-ros-vendor \
  RUFF=$MAIN_RUFF SPATIALTHINKER_REQUIRE_ROS2_CLI= \
  bash "$ROOT/scripts/test.sh" "${TESTS[@]}"
echo "jazzy_check: ${TESTS[*]} in $(( $(date +%s) - start )) s"
