"""scripts/rosdep_check.sh (run by .ci/run on package.xml) fails when a key does not resolve."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SPATIALTHINKER_SHARED", ROOT.parent / "shared"))
ROSDEP = Path(sys.executable).with_name("rosdep")


def test_a_key_that_does_not_resolve_fails_the_check(tmp_path: Path) -> None:
    if not (SHARED / "rosdistro" / "index.yaml").is_file():
        pytest.skip(f"no rosdistro snapshot at {SHARED / 'rosdistro'}")
    if not ROSDEP.exists():
        pytest.skip("rosdep is not installed (pip install -e .[test])")
    if shutil.which("bash") is None:
        pytest.skip("no bash")
    text = (ROOT / "package.xml").read_text()
    bogus = "spatialthinker_no_such_key"
    text, n = re.subn(r"(<exec_depend>rclpy</exec_depend>)",
                      rf"\1\n  <exec_depend>{bogus}</exec_depend>", text)
    assert n == 1
    (tmp_path / "package.xml").write_text(text)
    env = {**os.environ, "ROSDEP": str(ROSDEP), "ROSDEP_TARGETS": "jazzy:ubuntu:noble",
           "SPATIALTHINKER_SHARED": str(SHARED)}
    done = subprocess.run(["bash", str(ROOT / "scripts" / "rosdep_check.sh"), str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"Cannot locate rosdep definition for [{bogus}]" in done.stderr
    assert "FAILED: jazzy/ubuntu:noble" in done.stderr
