"""The local stack of ``conveyor dev``: Redis (or an embedded Valkey), the ledger, and every
Conveyor process, with their output interleaved under a prefix per process.

Processes run in sessions of their own, so a Ctrl-C in the terminal reaches only this
supervisor, which then stops them in order: the API first (no new jobs), beat, the
workers (warm shutdown: running jobs finish, unstarted ones stay in Redis), Flower, and
the embedded Valkey last.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from workers.embedded_valkey import redis_answers, valkey_command
from workers.schema import upgrade
from workers.settings import Settings

#: What ``conveyor dev`` fills in when the environment leaves them unset (dev only).
DEV_API_KEY = ("dev", "conveyor-dev-api-key")
DEV_FLOWER_LOGIN = "conveyor:conveyor-dev-flower"
#: Seconds each process gets to stop on SIGTERM before it is killed.
STOP_GRACE = 30.0
#: Seconds the embedded Valkey may take to answer.
VALKEY_START_TIMEOUT = 30.0


class StackStartError(RuntimeError):
    """A process of the stack did not come up."""


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
    _pump: threading.Thread | None = field(default=None, repr=False)


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
        watched = [sys.executable, "-m", "workers.parent_watch", str(os.getpid()), *command]
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
            target=self._copy, args=(name, process), name=f"log-{name}", daemon=True
        )
        entry._pump.start()
        self._started.append(entry)
        return entry

    def say(self, name: str, line: str) -> None:
        """Write one line under ``name``'s prefix."""
        with self._lock:
            self._out.write(f"{name:<{self._width}} | {line}\n")
            self._out.flush()

    def _copy(self, name: str, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None  # noqa: S101 - piped above
        for raw in process.stdout:
            self.say(name, raw.decode("utf-8", "replace").rstrip("\n"))
        self.say(name, f"exited with code {process.wait()}")

    def exited(self) -> StackProcess | None:
        """A process that has ended on its own, if any."""
        return next(
            (p for p in self._started if p.process is not None and p.process.poll() is not None),
            None,
        )

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


def conveyor_command(*args: str) -> list[str]:
    """``conveyor ARGS`` run by this interpreter (no reliance on PATH)."""
    return [sys.executable, "-m", "workers.cli", *args]


def stack_commands(api_port: int, flower_port: int) -> list[tuple[str, list[str]]]:
    """The long-running processes of the stack, in start order; they stop in reverse: the
    API (no new jobs), beat, the workers, then Flower, which so sees them go."""
    return [
        ("flower", conveyor_command("flower", "--port", str(flower_port))),
        # task events from the start, so Flower sees every job, not only those after it
        # switched events on
        ("worker-io", conveyor_command("worker", "io", "--task-events")),
        ("worker-cpu", conveyor_command("worker", "cpu", "--task-events")),
        ("beat", conveyor_command("beat")),
        ("api", conveyor_command("api", "--port", str(api_port))),
    ]


@dataclass(frozen=True)
class DevStackInfo:
    """Where the running stack answers, and how to log in."""

    api_url: str
    api_key: str
    flower_url: str
    flower_login: str
    redis_url: str
    embedded_redis: bool
    database_url: str

    def lines(self) -> list[str]:
        """The banner ``conveyor dev`` prints."""
        redis_note = " (embedded Valkey)" if self.embedded_redis else ""
        return [
            f"API        {self.api_url}   (docs: {self.api_url}/docs)",
            f"API key    Authorization: Bearer {self.api_key}",
            f"Flower     {self.flower_url}   login {self.flower_login}",
            f"Redis      {self.redis_url}{redis_note}",
            f"Ledger     {self.database_url}",
            "Ctrl-C stops everything (warm shutdown: running jobs finish, queued ones stay).",
        ]


def dev_overrides(settings: Settings, redis_url: str) -> dict[str, str]:
    """The settings the stack's processes get on top of the environment."""
    overrides = {"CONVEYOR_REDIS_URL": redis_url}
    if not settings.api_key_table:
        overrides["CONVEYOR_API_KEYS"] = ":".join(DEV_API_KEY)
    if settings.flower_basic_auth is None:
        overrides["CONVEYOR_FLOWER_BASIC_AUTH"] = DEV_FLOWER_LOGIN
    return overrides


def describe_stack(
    settings: Settings, redis_url: str, embedded: bool, api_port: int, flower_port: int
) -> DevStackInfo:
    """The banner's facts; configured secrets are never printed, only the dev defaults."""
    api_key = DEV_API_KEY[1] if not settings.api_key_table else "(one of CONVEYOR_API_KEYS)"
    login = (
        DEV_FLOWER_LOGIN if settings.flower_basic_auth is None else "(CONVEYOR_FLOWER_BASIC_AUTH)"
    )
    return DevStackInfo(
        api_url=f"http://127.0.0.1:{api_port}",
        api_key=api_key,
        flower_url=f"http://127.0.0.1:{flower_port}",
        flower_login=login,
        redis_url=redis_url,
        embedded_redis=embedded,
        database_url=settings.database_url,
    )


@dataclass(frozen=True)
class StackLayout:
    """Where the stack listens and keeps its local state (the embedded Valkey's files)."""

    api_port: int
    flower_port: int
    state_dir: Path


@dataclass(frozen=True)
class RunningStack:
    """A started stack: its facts, its processes and the environment they run with."""

    info: DevStackInfo
    group: ProcessGroup
    env: Mapping[str, str]


@contextlib.contextmanager
def running_stack(
    settings: Settings,
    environment: Mapping[str, str],
    layout: StackLayout,
    *,
    out: IO[str] | None = None,
    extra_settings: Mapping[str, str] | None = None,
) -> Iterator[RunningStack]:
    """The whole stack, started inside the block and stopped in order after it.

    ``extra_settings`` are CONVEYOR_* values the stack's processes get on top of the
    environment and the dev defaults. The processes may still be starting when the
    block begins; :class:`StackStartError` if the embedded Valkey does not answer.
    """
    embedded = not redis_answers(settings.redis_url)
    (valkey_port,) = free_ports(1, besides=(layout.api_port, layout.flower_port))
    redis_url = f"redis://127.0.0.1:{valkey_port}/0" if embedded else settings.redis_url
    env = {**environment, **dev_overrides(settings, redis_url), **(extra_settings or {})}
    group = ProcessGroup(env, out)
    info = describe_stack(settings, redis_url, embedded, layout.api_port, layout.flower_port)
    try:
        if embedded:
            start_valkey(group, valkey_port, layout.state_dir / "valkey")
        upgrade(settings.database_url, "head")
        for line in info.lines():
            group.say("conveyor", line)
        for name, command in stack_commands(layout.api_port, layout.flower_port):
            group.start(name, command)
        yield RunningStack(info, group, env)
    finally:
        group.say("conveyor", "stopping (warm shutdown)")
        group.stop_all()
        group.say("conveyor", "stopped")


def start_valkey(group: ProcessGroup, port: int, data_dir: Path) -> None:
    """Start the embedded Valkey as the group's first process (so it stops last) and wait
    until it answers."""
    data_dir.mkdir(parents=True, exist_ok=True)
    process = group.start("valkey", valkey_command(port, data_dir))
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + VALKEY_START_TIMEOUT
    while not redis_answers(url):
        if process.process is not None and process.process.poll() is not None:
            raise StackStartError("the embedded Valkey exited at start-up; see its log lines")
        if time.monotonic() > deadline:
            raise StackStartError(
                f"the embedded Valkey did not answer within {VALKEY_START_TIMEOUT:.0f} s"
            )
        time.sleep(0.05)


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


def run_dev_stack(
    settings: Settings,
    environment: Mapping[str, str],
    layout: StackLayout,
    *,
    out: IO[str] | None = None,
) -> int:
    """Run the stack until SIGINT, SIGTERM or SIGHUP (exit code 0) or until a process dies
    (1)."""
    with (
        stop_requested() as stop,
        running_stack(settings, environment, layout, out=out) as stack,
    ):
        while not stop.wait(0.5):
            dead = stack.group.exited()
            if dead is not None:
                stack.group.say("conveyor", f"{dead.name} stopped on its own; stopping")
                return 1
        return 0
