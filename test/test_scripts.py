"""The CI and check scripts name tests that exist: a renamed test file must not turn a check into
`no tests ran` (exit 4) on a fresh clone."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEXTS = [*sorted((ROOT / "scripts").glob("*.sh")), ROOT / ".ci" / "run", ROOT / "README.md",
         *sorted((ROOT / "docs").glob("*.md")), ROOT / "CMakeLists.txt"]


def test_every_named_test_file_exists() -> None:
    missing = {
        f"{path.relative_to(ROOT)}: {name}"
        for path in TEXTS if path.exists()
        for name in re.findall(r"\btest/[\w/]+\.py\b", path.read_text(encoding="utf-8"))
        if not (ROOT / name).is_file()
    }
    assert not missing, f"scripts and docs name missing test files: {sorted(missing)}"


def test_colcon_test_selection_names_registered_tests() -> None:
    """colcon_check.sh selects ctest names (the file stems CMakeLists registers) by a regex."""
    text = (ROOT / "scripts" / "colcon_check.sh").read_text(encoding="utf-8")
    selection = re.search(r"COLCON_TESTS:-\^\(([\w|]+)\)\$", text)
    assert selection, "colcon_check.sh no longer selects tests with ^(a|b)$"
    registered = {p.stem for p in (ROOT / "test" / "ros").glob("test_*.py")}
    unknown = set(selection.group(1).split("|")) - registered
    assert not unknown, f"colcon_check.sh selects tests that do not exist: {sorted(unknown)}"
