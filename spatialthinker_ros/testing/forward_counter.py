"""Counting a model's forward passes: the hardware-independent cost figure of a decode path
(tests and benchmarks)."""

from __future__ import annotations

from typing import Any


class ForwardCounter:
    """Counts `module`'s forward calls through a forward hook (eager paths only: a hook inside a
    compiled graph would change what is measured). `close()` removes the hook."""

    def __init__(self, module: Any) -> None:
        self.count = 0
        self._handle = module.register_forward_hook(self._hook)

    def _hook(self, *args: Any) -> None:
        self.count += 1

    def close(self) -> None:
        self._handle.remove()
