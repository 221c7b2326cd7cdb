"""A process a test started: its log file, and a stop that always ends it; what runs below
a process."""

from __future__ import annotations

import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from conveyor.devstack.parent_watch import watched_command
from conveyor.devstack.supervision import free_ports


def dying_with_this_process(command: list[str], *, supervisor: bool = False) -> list[str]:
    """``command``, run so that it is SIGKILLed when the test process dies: a run killed
    halfway leaves no server or worker behind (Linux; elsewhere the command runs as is).

    A ``supervisor`` (``conveyor dev``, ``conveyor demo``) gets SIGTERM instead, so that it
    stops its own processes, killing those that do not stop in time."""
    return watched_command(command, kill=not supervisor)


@dataclass
class ServiceProcess:
    """A started process with its log file."""

    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        """Everything the process has written so far."""
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 60) -> int:
        """Send ``sig`` and wait for the exit (SIGKILL after ``timeout``); its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(10)


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on right now."""
    return free_ports(1)[0]


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (children, their children …)."""
    found: set[int] = set()
    pending = [pid]
    while pending:
        parent = pending.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            children = (task / "children").read_text().split() if task.exists() else []
            for child in map(int, children):
                if child not in found:
                    found.add(child)
                    pending.append(child)
    return found


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"
