"""Run a command that ends when the process that started it dies, even by SIGKILL.

``python -m conveyor.devstack.parent_watch COMMAND...`` asks Linux to send SIGTERM to this process
when its parent dies (``PR_SET_PDEATHSIG``), then becomes COMMAND by exec, which keeps the
request. The stack's supervisor starts every process this way, so a supervisor killed
outright leaves no worker, Flower or Valkey behind. Elsewhere than Linux it only execs.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def watch_parent(parent: int) -> None:
    """Have SIGTERM sent here when the parent dies; SIGTERM at once if it already has."""
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:  # the parent died before the request was made
        os.kill(os.getpid(), signal.SIGTERM)


def main() -> None:
    """``python -m conveyor.devstack.parent_watch PARENT_PID COMMAND...``."""
    parent, command = int(sys.argv[1]), sys.argv[2:]
    watch_parent(parent)
    os.execvp(command[0], command)  # noqa: S606 - the supervisor's own fixed command


if __name__ == "__main__":
    main()
