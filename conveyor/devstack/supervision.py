"""Supervising a group of processes: each in a session of its own, their output interleaved
under a prefix per process, stopped in the reverse order of their start.

A Ctrl-C in the terminal reaches only the supervisor, which then stops the group in order;
each process is started through ``parent_watch``, so it is told to stop if the
supervisor is killed outright.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO

from conveyor.devstack.parent_watch import watched_command


class StackStartError(RuntimeError):
    """A process of the stack did not come up."""


#: Seconds each process gets to stop on SIGTERM before it is killed.
STOP_GRACE = 30.0


def free_ports(count: int, *, besides: Sequence[int] = ()) -> list[int]:
    """``count`` distinct TCP ports of 127.0.0.1 that nothing listens on right now, none of
    them in ``besides``.

    The probing sockets stay open until all are chosen, so the kernel cannot hand out the
    same port twice.
    """
    with contextlib.ExitStack() as probes:
        ports: list[int] = []
        while len(ports) < count:
            probe = probes.enter_context(socket.socket())
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
            if port not in besides:
                ports.append(port)
        return ports


@dataclass
class StackProcess:
    """One supervised process: its name (the log prefix) and command line."""

    name: str
    command: Sequence[str]
    process: subprocess.Popen[bytes] | None = None
    #: The group asked it to stop (SIGTERM).
    stopping: bool = False
    _pump: threading.Thread | None = field(default=None, repr=False)

    def ending(self, code: int) -> str:
        """How its end reads: ``stopped`` when it ended as asked (uvicorn re-raises the
        SIGTERM it handled, so that is a clean stop too), else the code or the signal."""
        if self.stopping and code in (0, -signal.SIGTERM):
            return "stopped"
        if code < 0:
            return f"killed by {signal.Signals(-code).name}"
        return f"exited with code {code}"


class ProcessGroup:
    """Starts processes, copies their output to ``out`` line by line with a name prefix,
    and stops them in the reverse order of their start."""

    def __init__(self, env: Mapping[str, str], out: IO[str] | None = None) -> None:
        self._env = dict(env)
        self._out = out if out is not None else sys.stdout
        self._lock = threading.Lock()
        self._started: list[StackProcess] = []
        self._width = 10

    def start(self, name: str, command: Sequence[str]) -> StackProcess:
        """Start ``command`` in a session of its own; its output goes to ``out``."""
        # through parent_watch: if this supervisor is killed outright, the process is told
        watched = watched_command(command)
        process = subprocess.Popen(  # noqa: S603 - our own fixed commands
            watched,
            env=self._env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        entry = StackProcess(name, command, process)
        entry._pump = threading.Thread(
            target=self._copy, args=(entry, process), name=f"log-{name}", daemon=True
        )
        entry._pump.start()
        self._started.append(entry)
        return entry

    def say(self, name: str, line: str) -> None:
        """Write one line under ``name``'s prefix."""
        with self._lock:
            self._out.write(f"{name:<{self._width}} | {line}\n")
            self._out.flush()

    def _copy(self, entry: StackProcess, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None  # noqa: S101 - piped above
        for raw in process.stdout:
            self.say(entry.name, raw.decode("utf-8", "replace").rstrip("\n"))
        self.say(entry.name, entry.ending(process.wait()))

    def exited(self) -> StackProcess | None:
        """A process that has ended on its own, if any."""
        return next(
            (p for p in self._started if p.process is not None and p.process.poll() is not None),
            None,
        )

    def wait_until(self, stop: threading.Event, poll: float = 0.5) -> StackProcess | None:
        """Wait until ``stop`` is set (``None``) or a process ends on its own (that one)."""
        while not stop.wait(poll):
            dead = self.exited()
            if dead is not None:
                return dead
        return None

    def stop_all(self, grace: float = STOP_GRACE) -> None:
        """SIGTERM each process, last started first, waiting for each (then SIGKILL)."""
        for entry in reversed(self._started):
            self._stop(entry, grace)
        self._started.clear()

    def _stop(self, entry: StackProcess, grace: float) -> None:
        process = entry.process
        if process is None:
            return
        if process.poll() is None:
            entry.stopping = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(grace)
            except subprocess.TimeoutExpired:
                self.say(entry.name, f"did not stop within {grace:.0f} s; killed")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
        # the whole session: prefork children, uvicorn workers
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        if entry._pump is not None:
            entry._pump.join(5)


#: The signals that stop the stack: Ctrl-C, a service manager's stop, a closed terminal.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def stop_requested() -> Iterator[threading.Event]:
    """An event set by SIGINT, SIGTERM or SIGHUP while the block runs.

    The signals only set it, so the supervisor stops the stack in order and a second
    Ctrl-C cannot cut that short; the previous handlers come back after the block.
    """
    stop = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in STOP_SIGNALS}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
