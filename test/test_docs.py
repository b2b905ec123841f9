"""Facts the README repeats must stay equal to the code they come from."""

from __future__ import annotations

import re
from pathlib import Path

from spatialthinker_ros.ros.params import markdown_table

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_parameter_table_is_the_nodes_parameters() -> None:
    """Regenerate with `python -m spatialthinker_ros.ros.params` after changing a parameter."""
    assert markdown_table() in README.read_text(encoding="utf-8")


def test_readme_layout_names_every_module() -> None:
    """The Layout section lists each module of the package (a new module: add it there)."""
    text = README.read_text(encoding="utf-8")
    layout = re.sub(r"```.*?```", "", text[text.index("\n## Layout"):], flags=re.S)
    named = {
        word.removesuffix(".py").rstrip("/").rsplit("/", 1)[-1]
        for span in re.findall(r"`([^`]+)`", layout)
        for word in re.split(r"[\s+,()]+", span)
        if word
    }
    package = README.parent / "spatialthinker_ros"
    modules = {
        path.relative_to(package).as_posix(): path.stem
        for path in package.rglob("*.py")
        if path.stem != "__init__"
    }
    packages = {path.parent.name for path in package.rglob("__init__.py")} - {package.name}
    missing = sorted(rel for rel, stem in modules.items() if stem not in named)
    assert not missing, f"README Layout misses {missing}"
    assert not sorted(packages - named), f"README Layout misses packages {packages - named}"
