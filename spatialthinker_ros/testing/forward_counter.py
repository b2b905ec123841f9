"""Hardware-independent cost figures of a decode path (tests and benchmarks): a model's forward
passes, and the host-device synchronisations of generating."""

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


class HostSyncCounter:
    """Counts, while active (a `with` block), the operations that make the host wait for the
    device: reading a scalar (`.item()`, `bool(t)`: aten._local_scalar_dense), data-dependent
    shapes (nonzero, equal), and copies out of the `watched` device tensors (the buffers
    generated ids live in). On a CPU none of these waits, but the same operations are the
    synchronisations a GPU would pay, so the count is the hardware-independent figure. A
    compiled step must run through `device_work` (its ops are the device's, not the host's)."""

    _SCALAR = ("aten._local_scalar_dense", "aten.nonzero", "aten.equal", "aten.is_nonzero")
    _COPY = ("aten.copy_", "aten._to_copy", "aten.clone")

    def __init__(self, watched: Any = ()) -> None:
        self.count = 0
        self.ops: list[str] = []
        self._storages = {t.untyped_storage().data_ptr() for t in watched}
        self._mode: Any = None

    def __enter__(self) -> HostSyncCounter:
        from torch.utils._python_dispatch import TorchDispatchMode

        counter = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                name = str(func.overloadpacket)
                if name in counter._SCALAR or (name in counter._COPY
                                               and counter._reads_watched(name, args)):
                    counter.count += 1
                    counter.ops.append(name)
                return func(*args, **(kwargs or {}))

        self._mode = _Mode()
        self._mode.__enter__()
        return self

    @staticmethod
    def device_work(step: Any) -> Any:
        """`step` run outside the counter: a compiled decode step, whose ops are the device's
        work (torch.compile does not run under a dispatch mode), or an uncompiled one standing
        in for it."""
        from torch.utils._python_dispatch import _disable_current_modes

        def run(*args: Any, **kwargs: Any) -> Any:
            with _disable_current_modes():
                return step(*args, **kwargs)

        return run

    def _reads_watched(self, name: str, args: tuple) -> bool:
        """A copy whose source is a watched buffer (a slice of one shares its storage)."""
        src = args[1] if name == "aten.copy_" else args[0]
        return (hasattr(src, "untyped_storage")
                and src.untyped_storage().data_ptr() in self._storages)  # fmt: skip

    def __exit__(self, *exc: Any) -> None:
        self._mode.__exit__(*exc)
