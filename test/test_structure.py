"""The package's shape: no import cycles, a ROS-free core, modules of one job and bounded size.

Imports are read from the source (top-level and function-level alike), so a cycle hidden by a
function-level import is found too."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "spatialthinker_ros"
PACKAGE = PACKAGE_DIR.name
MAX_LINES = 500
# Modules that must never import rclpy (they run where ROS is not installed).
ROS_FREE = ("core", "replay", "replay_config", "replay_frames", "replay_answers", "replay_tf",
            "bag_io",
            "bag_types", "sample_bag", "cli", "arguments", "evaluation", "testing",
            "interface_docs", "tool_schema")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE_DIR.rglob("*.py")}


def imported(name: str, path: Path, known: set[str]) -> set[str]:
    """Package modules that `name` (at `path`) imports anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            # `from .core import outputs` imports the module core.outputs.
            targets = [f"{prefix}.{a.name}" for a in node.names] + [prefix]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name and target.startswith(PACKAGE):
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imported(name, path, known) for name, path in mods.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (as a path a -> ... -> a), or None. Packages (`__init__`) importing their
    own submodules are not edges back to the package."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if node.startswith(nxt + "."):
                continue  # a module importing its parent package's __init__
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if state.get(nxt) is None and (cycle := visit(nxt)) is not None:
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if state.get(start) is None and (cycle := visit(start)) is not None:
            return cycle
    return None


def test_the_finder_sees_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles() -> None:
    graph = import_graph()
    assert f"{PACKAGE}.core.engine" in graph
    assert f"{PACKAGE}.core.types" in graph[f"{PACKAGE}.core.engine"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_core_imports_nothing_above_it() -> None:
    for name, deps in import_graph().items():
        if name.startswith(f"{PACKAGE}.core"):
            outside = {d for d in deps if not d.startswith(f"{PACKAGE}.core")}
            assert not outside, f"{name} imports {outside}"


def test_ros_free_modules_never_import_rclpy() -> None:
    for name, path in modules().items():
        if name.split(".")[1:2] and name.split(".")[1] in ROS_FREE:
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and not node.level:
                    names = [node.module or ""]
                assert not any(n.split(".")[0] in ("rclpy", "rosidl_runtime_py") for n in names), (
                    f"{name} imports rclpy"
                )


def test_modules_stay_small() -> None:
    sizes = {name: len(path.read_text(encoding="utf-8").splitlines())
             for name, path in modules().items()}
    too_big = {name: n for name, n in sizes.items() if n > MAX_LINES}
    assert not too_big, f"modules over {MAX_LINES} lines: {too_big}"
