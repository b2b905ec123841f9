"""The robot install (README "On a robot"), requirements-robot.txt and package.xml's rosdep keys.

The dry-run resolution for Python 3.10 (Humble) and 3.12 (Jazzy, Kilted) needs PyPI, so
scripts/check_robot_install.sh runs it during scripts/setup.sh; the tests here check its reports
(and skip with that reason where set-up did not run it).
"""

from __future__ import annotations

import ast
import json
import os
import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
REQUIREMENTS = ROOT / "requirements-robot.txt"
REPORTS = Path(os.environ.get("SPATIALTHINKER_ROBOT_REPORTS", ROOT / "build" / "robot-install"))
# Python of each LTS distribution's Ubuntu: Humble 22.04 -> 3.10, Jazzy 24.04 -> 3.12.
DISTRO_PYTHONS = {"humble": "3.10", "jazzy": "3.12"}

# rosdep keys that resolve on Humble, Jazzy and Kilted (scripts/rosdep_check.sh, run by .ci/run,
# resolves them offline against ../shared/rosdistro): ROS packages of the distributions and these
# system keys. A key added to package.xml must pass that script and be added here.
ROS_PACKAGE_KEYS = {
    "ament_cmake", "ament_cmake_python", "rosidl_default_generators", "rosidl_default_runtime",
    "builtin_interfaces", "std_msgs", "geometry_msgs", "sensor_msgs", "action_msgs", "rclpy",
    "visualization_msgs", "vision_msgs", "diagnostic_msgs", "lifecycle_msgs", "launch",
    "launch_ros", "ament_cmake_pytest", "tf2_ros_py", "tf2_py", "tf2_msgs",
}
SYSTEM_KEYS = {"python3-numpy", "python3-pil", "python3-tqdm", "python3-pytest", "python3-yaml"}
# Exist but deliberately not declared (package.xml says why): CPU-only distribution builds of
# torch, and pip keys that cannot pin transformers>=5,<6 and run a system-wide pip.
UNDECLARED_KEYS = {"python3-torch", "python3-torchvision", "python3-transformers-pip",
                   "python3-rosbags-pip"}


def robot_requirements() -> dict[str, Requirement]:
    lines = [line.split("#", 1)[0].strip() for line in REQUIREMENTS.read_text().splitlines()]
    requirements = [Requirement(line) for line in lines if line]
    return {canonicalize_name(r.name): r for r in requirements}


def setup_install_requires() -> dict[str, Requirement]:
    tree = ast.parse((ROOT / "setup.py").read_text())
    (value,) = [k.value for n in ast.walk(tree) if isinstance(n, ast.Call)
                for k in n.keywords if k.arg == "install_requires"]
    return {canonicalize_name(r.name): r for r in map(Requirement, ast.literal_eval(value))}


def test_robot_requirements_are_setup_py_with_numpy_below_2() -> None:
    robot, setup = robot_requirements(), setup_install_requires()
    assert set(robot) == set(setup)
    for name, requirement in robot.items():
        if name == "numpy":
            assert not requirement.specifier.contains("2.0") and requirement.specifier.contains(
                "1.26.4"), requirement
            assert set(setup[name].specifier) <= set(requirement.specifier)
        else:
            assert requirement.specifier == setup[name].specifier, name


def readme_robot_block() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### On a robot"):]
    return re.search(r"```bash\n(.*?)```", section, re.DOTALL).group(1)


def test_readme_robot_install_is_the_venv_way() -> None:
    block = readme_robot_block()
    assert "python3 -m venv --system-site-packages" in block
    assert "COLCON_IGNORE" in block
    assert "-r src/spatialthinker_ros/requirements-robot.txt" in block
    assert "python -m colcon build" in block  # the node's shebang then names the venv's Python
    assert "sudo pip" not in block and "--break-system-packages" not in block
    # The same venv recipe as the one scripts/check_robot_install.sh resolves with.
    script = (ROOT / "scripts" / "check_robot_install.sh").read_text()
    assert "-m venv --system-site-packages" in script and "COLCON_IGNORE" in script


@pytest.mark.parametrize("distro", sorted(DISTRO_PYTHONS))
def test_robot_requirements_resolve_for_the_distro_python(distro: str) -> None:
    report_path = REPORTS / f"report-{DISTRO_PYTHONS[distro]}.json"
    if not report_path.exists():
        pytest.skip(f"no {report_path}: scripts/check_robot_install.sh (run by scripts/setup.sh, "
                    "needs PyPI) has not run here")
    report = json.loads(report_path.read_text())
    resolved = {canonicalize_name(i["metadata"]["name"]): Version(i["metadata"]["version"])
                for i in report["install"]}
    for name, requirement in robot_requirements().items():
        assert name in resolved, f"{name} not resolved for {distro}"
        assert requirement.specifier.contains(resolved[name]), (name, resolved[name])
    assert resolved["numpy"].major == 1
    assert resolved["transformers"].major == 5


def test_package_xml_declares_only_checked_rosdep_keys() -> None:
    catkin_pkg = pytest.importorskip("catkin_pkg.package")
    package = catkin_pkg.parse_package(str(ROOT / "package.xml"))
    keys = {d.name for group in (package.buildtool_depends, package.build_depends,
                                 package.exec_depends, package.test_depends) for d in group}
    unchecked = keys - ROS_PACKAGE_KEYS - SYSTEM_KEYS
    assert unchecked == set(), f"rosdep keys not checked to resolve: {unchecked}"
    assert keys & UNDECLARED_KEYS == set()
    assert {"python3-numpy", "python3-pil", "python3-tqdm"} <= keys
