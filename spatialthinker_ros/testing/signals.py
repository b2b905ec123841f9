"""Child processes that take Ctrl-C as they would from a terminal.

A shell without job control starts background commands with SIGINT ignored, and Python keeps an
ignored SIGINT ignored (it installs its KeyboardInterrupt handler only over the default). A test
run started that way (a CI runner, `nohup ... &`) would give every child an ignored SIGINT, and a
test of Ctrl-C would test nothing."""

from __future__ import annotations

import signal


def default_sigint() -> None:
    """`preexec_fn` for subprocess.Popen: the child starts with SIGINT's default disposition."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
