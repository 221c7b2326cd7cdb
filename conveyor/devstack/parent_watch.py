"""Run a command that ends when the process that started it dies, even by SIGKILL.

``python -m conveyor.devstack.parent_watch PARENT_PID [--kill] COMMAND...`` asks Linux to send
SIGTERM (SIGKILL with ``--kill``) to this process when its parent dies (``PR_SET_PDEATHSIG``),
then becomes COMMAND by exec, which keeps the request. The stack's supervisor starts every
process this way, so a supervisor killed outright leaves no worker, Flower or Valkey behind; the
tests start theirs with ``--kill``. Elsewhere than Linux it only execs.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Sequence

_PR_SET_PDEATHSIG = 1


def watch_parent(parent: int, sig: signal.Signals = signal.SIGTERM) -> None:
    """Have ``sig`` sent here when the parent dies; ``sig`` at once if it already has."""
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, sig) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:  # the parent died before the request was made
        os.kill(os.getpid(), sig)


def watched_command(command: Sequence[str], *, kill: bool = False) -> list[str]:
    """``command`` run through this module, watching the calling process: SIGTERM (SIGKILL
    with ``kill``) when it dies. Start it from the main thread: Linux sends the signal when the
    thread that started the child ends."""
    return [
        sys.executable, "-m", _MODULE, str(os.getpid()), *(["--kill"] if kill else []), *command,
    ]  # fmt: skip


_MODULE = "conveyor.devstack.parent_watch"


def main() -> None:
    """``python -m conveyor.devstack.parent_watch PARENT_PID [--kill] COMMAND...``."""
    parent, command = int(sys.argv[1]), sys.argv[2:]
    sig = signal.SIGTERM
    if command[:1] == ["--kill"]:
        sig, command = signal.SIGKILL, command[1:]
    watch_parent(parent, sig)
    os.execvp(command[0], command)  # noqa: S606 - the caller's own fixed command


if __name__ == "__main__":
    main()
