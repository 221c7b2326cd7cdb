"""The local stack of ``conveyor dev`` and ``conveyor demo``: Redis (or an embedded Valkey),
the ledger, and every Conveyor process, supervised as one group (``supervision``).

The stack stops in order: the API first (no new jobs), beat, the workers (warm shutdown:
running jobs finish, unstarted ones stay in Redis), Flower, and the embedded Valkey last.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from conveyor.devstack.embedded_valkey import redis_answers, valkey_command
from conveyor.devstack.readiness import StartInterruptedError, wait_until_serving
from conveyor.devstack.supervision import (
    ProcessGroup,
    StackStartError,
    free_ports,
    stop_requested,
)
from workers.ledger.database_url import with_absolute_sqlite_path
from workers.ledger.schema import upgrade
from workers.settings import Settings

#: What ``conveyor dev`` fills in when the environment leaves them unset (dev only).
DEV_API_KEY = ("dev", "conveyor-dev-api-key")
DEV_FLOWER_LOGIN = "conveyor:conveyor-dev-flower"
#: Seconds the embedded Valkey may take to answer.
VALKEY_START_TIMEOUT = 30.0


def conveyor_command(*args: str) -> list[str]:
    """``conveyor ARGS`` run by this interpreter (no reliance on PATH)."""
    return [sys.executable, "-m", "conveyor.cli.main", *args]


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
        """The banner ``conveyor dev`` prints once the stack serves."""
        redis_note = " (embedded Valkey)" if self.embedded_redis else ""
        return [
            "ready: the API, Flower and both workers answer, and a job made it through each pool",
            f"API        {self.api_url}   (docs: {self.api_url}/docs)",
            f"API key    Authorization: Bearer {self.api_key}",
            f"Flower     {self.flower_url}   login {self.flower_login}",
            f"Redis      {self.redis_url}{redis_note}",
            f"Ledger     {self.database_url}",
            "In another terminal, for `conveyor jobs`, `conveyor enqueue` and `conveyor check`:",
            f"  export CONVEYOR_REDIS_URL={self.redis_url}",
            f"  export CONVEYOR_DATABASE_URL={self.database_url}",
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


def stack_api_secret(settings: Settings) -> str:
    """A secret the stack's API accepts: the first configured one, else the dev default."""
    keys = settings.api_key_table
    return next(iter(keys.values())).get_secret_value() if keys else DEV_API_KEY[1]


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
        database_url=with_absolute_sqlite_path(settings.database_url),
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
    block begins (``readiness`` waits until they serve); :class:`StackStartError` if the
    embedded Valkey does not answer.
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
        group.say("conveyor", "starting: Flower, the workers, beat and the API …")
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


def run_dev_stack(
    settings: Settings,
    environment: Mapping[str, str],
    layout: StackLayout,
    *,
    out: IO[str] | None = None,
) -> int:
    """Run the stack until SIGINT, SIGTERM or SIGHUP (exit code 0) or until a process dies
    or the stack does not come up (1). The banner comes once the stack serves."""
    with (
        stop_requested() as stop,
        running_stack(settings, environment, layout, out=out) as stack,
    ):
        try:
            wait_until_serving(stack.info, stack.group, stop, api_secret=stack_api_secret(settings))
        except StartInterruptedError:
            return 0
        except StackStartError as error:
            stack.group.say("conveyor", f"the stack did not come up: {error}; stopping")
            return 1
        for line in stack.info.lines():
            stack.group.say("conveyor", line)
        dead = stack.group.wait_until(stop)
        if dead is not None:
            stack.group.say("conveyor", f"{dead.name} stopped on its own; stopping")
            return 1
        return 0
