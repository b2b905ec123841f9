"""CMakeLists.txt configured for real against the ROS 2 wheels of this interpreter's environment."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def cmake_configure(build: Path, *args: str) -> subprocess.CompletedProcess:
    if shutil.which("cmake") is None:
        pytest.skip("cmake is not installed")
    if not (Path(sys.prefix) / "share" / "ament_cmake").is_dir():
        pytest.skip(f"{sys.prefix} lacks the ROS 2 wheels (ament_cmake)")
    prefixes = [sys.prefix, *filter(None, os.environ.get("AMENT_PREFIX_PATH", "").split(":"))]
    env = {**os.environ, "AMENT_PREFIX_PATH": os.pathsep.join(prefixes)}
    return subprocess.run(
        ["cmake", "-S", str(ROOT), "-B", str(build), f"-DCMAKE_PREFIX_PATH={sys.prefix}",
         f"-DPython3_EXECUTABLE={sys.executable}", "-DPython3_FIND_VIRTUALENV=ONLY", *args],
        capture_output=True, text=True, env=env, timeout=600, check=False)


def test_testing_without_ament_cmake_pytest_is_a_configure_error(tmp_path) -> None:
    """`colcon test` would otherwise pass with no test at all."""
    done = cmake_configure(tmp_path / "build", "-DBUILD_TESTING=ON",
                           "-DCMAKE_DISABLE_FIND_PACKAGE_ament_cmake_pytest=TRUE")
    assert done.returncode != 0
    assert "CMake Error" in done.stderr
    assert "ament_cmake_pytest was not found, so no test" in " ".join(done.stderr.split())
