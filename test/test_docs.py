"""Facts the README repeats must stay equal to the code they come from."""

from __future__ import annotations

from pathlib import Path

from spatialthinker_ros.ros.params import markdown_table

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_parameter_table_is_the_nodes_parameters() -> None:
    """Regenerate with `python -m spatialthinker_ros.ros.params` after changing a parameter."""
    assert markdown_table() in README.read_text(encoding="utf-8")
