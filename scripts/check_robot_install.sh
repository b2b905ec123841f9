#!/usr/bin/env bash
# What the README's robot install resolves to, per ROS 2 distribution's Python: a pip dry run of
# requirements-robot.txt for Python 3.10 (Humble) and 3.12 (Jazzy, Kilted), wheels only (a robot
# should not compile transformers' dependencies), in the way the README installs it: pip of a venv
# made with --system-site-packages (PEP 668 refuses the system pip on Ubuntu 24.04).
# Needs PyPI, so scripts/setup.sh runs it (the tests run without network); test/test_robot_install.py
# checks the reports it writes.
#   scripts/check_robot_install.sh [OUT_DIR]      (default build/robot-install)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${1:-$ROOT/build/robot-install}
PYTHON=${ROBOT_PYTHON:-python3}  # the system Python, as on the robot
rm -rf "$OUT"
mkdir -p "$OUT"
start=$(date +%s)
# The README's venv (the tests check that the README says the same).
"$PYTHON" -m venv --system-site-packages "$OUT/venv"
touch "$OUT/venv/COLCON_IGNORE"
pids=()
for version in 3.10 3.12; do
  "$OUT/venv/bin/python" -m pip install --dry-run --quiet --disable-pip-version-check \
    --ignore-installed --python-version "$version" --only-binary=:all: --target "$OUT/target-$version" \
    --report "$OUT/report-$version.json" -r "$ROOT/requirements-robot.txt" \
    >"$OUT/pip-$version.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
if [ "$status" != 0 ]; then
  tail -n 20 "$OUT"/pip-*.log >&2
  echo "check_robot_install: requirements-robot.txt does not resolve (logs in $OUT)" >&2
  exit 1
fi
rm -rf "$OUT/venv" "$OUT"/target-*
echo "check_robot_install: resolved for Python 3.10 and 3.12 in $(( $(date +%s) - start )) s"
