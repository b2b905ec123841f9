#!/usr/bin/env bash
# The test suite. Runs inside a fresh network namespace with only loopback up, so DDS (rclpy
# tests) and the test servers can never reach another interface. Extra args go to pytest.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${VENV:-$ROOT/.venv}
cd "$ROOT"
# shellcheck source=scripts/ros_env.sh
. "$ROOT/scripts/ros_env.sh"
export HF_HUB_OFFLINE=1 ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST PYTHONUNBUFFERED=1
NS=(unshare -n)
[ "$(id -u)" = 0 ] || NS=(unshare -rn)
"${RUFF:-$VENV/bin/ruff}" check .
exec "${NS[@]}" sh -c 'ip link set lo up && exec "$@"' sh "$VENV/bin/python" -m pytest -q -p no:cacheprovider "$@"
