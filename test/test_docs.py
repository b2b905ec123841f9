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


def _synopsis(text: str, start: str) -> str:
    """The README's synopsis of a subcommand: from `start` to the end of its inline code span,
    or of its code block."""
    at = text.index(start)
    if text[at - 1] == "`":
        return text[at:text.index("`", at)]
    return text[at:text.index("\n```", at)]


def _options(parser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings if s.startswith("--")} - {"--help"}


def test_readme_synopses_are_the_cli_options() -> None:
    """Every option of the README's ask/replay/eval synopses exists; every option of the
    subcommand is in its synopsis (replay and eval: those besides the shared model options)."""
    from spatialthinker_ros.cli import build_parser
    from spatialthinker_ros.core.options import ENGINE_OPTIONS

    text = README.read_text(encoding="utf-8")
    subparsers = next(a for a in build_parser()._actions if a.choices and "ask" in a.choices)
    model = {opt.flag for opt in ENGINE_OPTIONS if opt.cli}
    for command, start in (("ask", "spatialthinker-ros ask IMAGE"),
                           ("replay", "spatialthinker-ros replay IN_BAG"),
                           ("eval", "spatialthinker-ros eval INPUT...")):
        listed = set(re.findall(r"--[a-z][a-z-]*", _synopsis(text, start)))
        offered = _options(subparsers.choices[command])
        assert not listed - offered, f"README {command} synopsis: unknown {listed - offered}"
        expected = offered - {"--no-gpu-preprocess", "--no-batch-questions"}
        if command != "ask":
            expected -= model
        assert not expected - listed, f"README {command} synopsis misses {expected - listed}"
