"""ROS test setup: our generated interfaces importable in-process, and the network guard.

At import (before the test modules are collected, since they import generated messages):
- in a source checkout, the interfaces built by scripts/build_interfaces.sh into build/ros
  (SPATIALTHINKER_ROS_BUILD overrides) are (re)built when missing or older than msg/srv/action,
  CMakeLists.txt or package.xml, then their install tree joins sys.path: the repository's source
  modules keep precedence and spatialthinker_ros.ros merges the generated msg/srv/action in;
- otherwise, and always under `colcon test` (SPATIALTHINKER_ROS_INTERFACES=installed), the
  environment's spatialthinker_ros is used as is: nothing is built into the source tree.
When neither works, `INTERFACES_UNAVAILABLE` says why, and the `ros_interfaces` fixture and the
test modules skip with that reason (passed to them in $SPATIALTHINKER_ROS_INTERFACES_UNAVAILABLE).
"""

from __future__ import annotations

import ctypes
import fcntl
import importlib
import os
import pkgutil
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILD_DIR = Path(os.environ.get("SPATIALTHINKER_ROS_BUILD", ROOT / "build" / "ros")).resolve()
INSTALL = BUILD_DIR / "install"
BUILD_SCRIPT = ROOT / "scripts" / "build_interfaces.sh"
# Touched last by every successful build: its age tells whether the install tree is current.
BUILD_MARKER = INSTALL / ".build_stamp"
# Set by CMakeLists.txt for `colcon test`: test the installed package, build nothing.
INSTALLED_ENV = "SPATIALTHINKER_ROS_INTERFACES"
NETNS_COMMAND = (
    "unshare -n sh -c 'ip link set lo up; export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST; "
    "exec <pytest ...>'"
)


def interface_sources() -> list[Path]:
    files = [ROOT / "CMakeLists.txt", ROOT / "package.xml"]
    for folder, suffix in (("msg", ".msg"), ("srv", ".srv"), ("action", ".action")):
        files += sorted((ROOT / folder).glob(f"*{suffix}"))
    return files


def _install_site() -> Path:
    return INSTALL / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / (
        "site-packages"
    )


def _install_is_current() -> bool:
    if not BUILD_MARKER.exists() or not (_install_site() / "spatialthinker_ros" / "msg").is_dir():
        return False
    newest_source = max(p.stat().st_mtime for p in interface_sources() if p.exists())
    return BUILD_MARKER.stat().st_mtime >= newest_source


def _why_not_buildable() -> str | None:
    if not BUILD_SCRIPT.exists() or not (ROOT / "msg").is_dir():
        return "not a source checkout (no scripts/build_interfaces.sh)"
    if shutil.which("cmake") is None:
        return "cmake is not installed, so msg/srv/action cannot be built (apt install cmake g++)"
    if not (Path(sys.prefix) / "share" / "rosidl_default_generators").is_dir():
        return (f"the interpreter's environment {sys.prefix} lacks the ROS 2 wheels "
                "(pip install -r requirements-ros.txt)")
    return None


def _build() -> str | None:
    """Run the build script (one process at a time); the reason on failure."""
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    with open(BUILD_DIR / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a parallel pytest waits, then finds it current
        if _install_is_current():
            return None
        done = subprocess.run(
            ["bash", str(BUILD_SCRIPT), sys.prefix, str(BUILD_DIR)],
            capture_output=True, text=True, check=False,
        )
    if done.returncode != 0:
        tail = (done.stdout + done.stderr).strip().splitlines()[-15:]
        return "scripts/build_interfaces.sh failed:\n" + "\n".join(tail)
    return None


def _activate_install() -> None:
    """Put the install tree on sys.path and make its libraries loadable in this process."""
    site = str(_install_site())
    if site not in sys.path:
        sys.path.append(site)
    # rosidl's typesupport dispatch dlopen()s libspatialthinker_ros__rosidl_typesupport_*.so by
    # bare name, which only searches the LD_LIBRARY_PATH this process started with (ros_env.sh
    # sets it for child processes). Loading them by full path first makes the name resolve.
    for library in sorted((INSTALL / "lib").glob("libspatialthinker_ros__*.so")):
        ctypes.CDLL(str(library), mode=ctypes.RTLD_GLOBAL)
    prefixes = os.environ.get("AMENT_PREFIX_PATH", "")
    if str(INSTALL) not in prefixes.split(os.pathsep):
        os.environ["AMENT_PREFIX_PATH"] = os.pathsep.join(p for p in (str(INSTALL), prefixes) if p)
    import spatialthinker_ros

    spatialthinker_ros.__path__ = pkgutil.extend_path(
        spatialthinker_ros.__path__, spatialthinker_ros.__name__
    )


def _generated_importable() -> bool:
    try:
        importlib.import_module("spatialthinker_ros.ros")
        importlib.import_module("spatialthinker_ros.msg")
    except ImportError:
        return False
    return True


def _prepare_interfaces() -> str | None:
    """None when spatialthinker_ros.msg/srv/action import; else the reason they cannot."""
    if os.environ.get(INSTALLED_ENV) == "installed":  # colcon test: never build in the sources
        return None if _generated_importable() else (
            f"{INSTALLED_ENV}=installed but spatialthinker_ros.msg does not import (source the "
            "workspace's install/setup.bash)")
    if _install_is_current():
        _activate_install()
        return None if _generated_importable() else f"{INSTALL} does not import"
    if _why_not_buildable() is not None and _generated_importable():
        return None  # a ROS environment (colcon) provides the package
    reason = _why_not_buildable() or _build()
    if reason is not None:
        return reason
    _activate_install()
    return None if _generated_importable() else f"{INSTALL} does not import after the build"


INTERFACES_UNAVAILABLE: str | None = _prepare_interfaces()
# Test modules import generated messages at module level, before any fixture runs: they call
# pytest.importorskip("spatialthinker_ros.msg", reason=os.environ[UNAVAILABLE_ENV]).
UNAVAILABLE_ENV = "SPATIALTHINKER_ROS_INTERFACES_UNAVAILABLE"
os.environ[UNAVAILABLE_ENV] = f"ROS interfaces unavailable: {INTERFACES_UNAVAILABLE}"


def pytest_report_header(config: pytest.Config) -> str:
    if INTERFACES_UNAVAILABLE is None:
        return f"spatialthinker_ros interfaces: {INSTALL if BUILD_MARKER.exists() else 'env'}"
    return f"spatialthinker_ros interfaces unavailable: {INTERFACES_UNAVAILABLE}"


@pytest.fixture(scope="session")
def ros_interfaces() -> Path:
    """The install tree holding the generated interfaces (skips with the reason when absent)."""
    if INTERFACES_UNAVAILABLE is not None:
        pytest.skip(f"ROS interfaces unavailable: {INTERFACES_UNAVAILABLE}")
    return INSTALL


def network_interfaces() -> list[str]:
    """Interfaces of this process's network namespace. (Not /sys/class/net: sysfs shows the
    namespace it was mounted in, which `unshare -n` does not change.)"""
    return sorted(name for _, name in socket.if_nameindex())


def loopback_only_reason() -> str | None:
    """None inside a network namespace with only `lo`; else why rclpy must not start here."""
    try:
        names = network_interfaces()
    except OSError as exc:
        return f"cannot list network interfaces ({exc})"
    if names != ["lo"]:
        return (f"network interfaces {names} besides lo: DDS discovery could leave this machine. "
                f"Run the ROS tests as {NETNS_COMMAND} (or scripts/test.sh)")
    return None


@pytest.fixture
def ros_netns() -> None:
    """Guard for tests that create an rclpy context: only in a loopback-only namespace."""
    reason = loopback_only_reason()
    if reason is not None:
        pytest.skip(reason)
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")


@pytest.fixture(scope="module")
def ros(ros_interfaces) -> None:
    """Built interfaces and the loopback-only namespace guard, for module-scoped nodes."""
    reason = loopback_only_reason()
    if reason is not None:
        pytest.skip(reason)
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")


@pytest.fixture()
def make_harness(ros, fitted_model_dir):
    """make(engine_factory=None, start=True, model_dir=None, **params): a live node (real rclpy,
    the fitted tiny model unless `model_dir`) with a client node (test_node.Harness); closed
    after the test."""
    from test_node import Harness

    made = []

    def make(engine_factory=None, start: bool = True, model_dir=None, **params):
        harness = Harness(model_dir or fitted_model_dir, engine_factory, **params)
        made.append(harness)
        if start:
            harness.start()
        return harness

    yield make
    for harness in made:
        harness.close()
