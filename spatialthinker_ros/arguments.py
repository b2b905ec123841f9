"""Command-line arguments shared by the subcommands (`ask`, `replay`, `eval`), built from the
engine options table (`core.options`)."""

from __future__ import annotations

import argparse
import sys

from .core.options import ENGINE_OPTIONS, EngineConfig, Option
from .core.text import one_line
from .core.types import STOP_AFTER, GenerationBackend


def _argument(group: argparse._ArgumentGroup, opt: Option) -> None:
    kwargs: dict = {"dest": opt.name, "default": opt.default,
                    "help": f"{opt.help} (default: %(default)s)"}
    if opt.kind is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    else:
        kwargs["type"] = opt.kind
        if opt.choices:
            kwargs["choices"] = list(opt.choices)
        if opt.cli_const is not None:
            kwargs.update(nargs="?", const=opt.cli_const)
    group.add_argument(opt.flag, **kwargs)


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """The engine options (core.options: one table for the CLI, the node and validation)."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    for opt in ENGINE_OPTIONS:
        if opt.cli:
            if opt.group not in groups:
                groups[opt.group] = parser.add_argument_group(opt.group)
            _argument(groups[opt.group], opt)


def add_stop_after_argument(parser: argparse.ArgumentParser) -> None:
    """`--stop-after scene_graph`: end each answer as soon as its scene graph is complete."""
    parser.add_argument(
        "--stop-after",
        choices=[s for s in STOP_AFTER if s],
        default="",
        help="scene_graph: stop generating as soon as the scene graph is complete (the result "
        "has the observation and scene graph, no answer; status ok)",
    )


def engine_config_from_args(args: argparse.Namespace) -> EngineConfig:
    """The engine config the arguments ask for; raises ModelLoadError naming every bad one."""
    config = EngineConfig.from_options(vars(args))
    config.validate()
    return config


def concurrency_problem(concurrency: int, backend: GenerationBackend) -> str | None:
    """Why `--concurrency N` cannot be used with `backend` (`eval`, `replay`), or None: more
    than one request in flight needs a backend that takes them (a server batches them; the
    in-process model answers one at a time)."""
    if concurrency > 1 and not getattr(backend, "concurrent_requests", False):
        return (
            f"--concurrency {concurrency} needs a backend that takes concurrent requests "
            f"(--backend openai); the {backend.name} backend answers one at a time"
        )
    return None


def fail(message: object) -> int:
    """Print a one-line error as every subcommand does; exit code 2."""
    print(f"spatialthinker-ros: error: {one_line(message, 600)}", file=sys.stderr)
    return 2
