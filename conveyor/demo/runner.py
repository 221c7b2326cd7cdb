"""``conveyor demo``: bring the stack up (or use a running API), run the mixed workload
through both pools with live progress, print the summary, stop everything it started."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from api_shim.client import ConveyorClient, ConveyorError
from conveyor.demo.display import StackAccess, progress_view, summary_view
from conveyor.demo.errors import DemoError, DemoInterruptedError
from conveyor.demo.receiver import flaky_receiver
from conveyor.demo.summary import DemoSummary, summarise
from conveyor.demo.workload import WorkloadState, plan_workload, run_workload
from conveyor.devstack.readiness import StartInterruptedError, wait_until_serving
from conveyor.devstack.stack import (
    DEV_API_KEY,
    StackLayout,
    running_stack,
    stack_api_secret,
)
from conveyor.devstack.supervision import (
    ProcessGroup,
    StackStartError,
    free_ports,
    stop_requested,
)
from workers.settings import Settings
from workers.structured_logging import configure_logging

#: The exit code of a demo stopped by Ctrl-C, as a shell reports a command SIGINT ended.
INTERRUPTED_EXIT_CODE = 130


@dataclass(frozen=True)
class DemoOptions:
    """What ``conveyor demo`` was asked for."""

    jobs: int
    timeout: float
    retry_scale: float
    api_url: str | None
    api_key: str | None
    state_dir: Path
    summary_json: Path | None
    keep_running: bool = False


@dataclass(frozen=True)
class DemoTarget:
    """The API the workload goes to, and the stack's processes when the demo started them."""

    access: StackAccess
    api_key: str
    group: ProcessGroup | None


@contextmanager
def demo_target(
    settings: Settings,
    environment: dict[str, str],
    options: DemoOptions,
    console: Console,
    stop: threading.Event,
) -> Iterator[DemoTarget]:
    """The running API named by ``--api-url``, or a stack started for the block."""
    api_key = options.api_key or stack_api_secret(settings)
    if options.api_url is not None:
        access = StackAccess(options.api_url.rstrip("/"), None, "", None)
        console.print(
            f"Using the stack at {access.api_url}: its own retry delays apply, and at"
            " CONVEYOR_RETRY_SCALE=1 a job that fails 8 times takes minutes (see --timeout).",
            highlight=False,
        )
        yield DemoTarget(access, api_key, None)
        return
    options.state_dir.mkdir(parents=True, exist_ok=True)
    log_path = options.state_dir / "stack.log"
    api_port, flower_port = free_ports(2)
    with ExitStack() as resources:
        out = resources.enter_context(log_path.open("w", encoding="utf-8"))
        # this process's own log lines (migrations, ...) join the stack's, off the screen
        configure_logging(settings.log_level, settings.secret_values(), stream=out)
        console.print(f"Starting the stack (logs: {log_path}) ...", highlight=False)
        try:
            stack = resources.enter_context(
                running_stack(
                    settings,
                    environment,
                    StackLayout(api_port, flower_port, options.state_dir),
                    out=out,
                    extra_settings={"CONVEYOR_RETRY_SCALE": repr(options.retry_scale)},
                )
            )
        except StackStartError as error:
            raise DemoError(str(error)) from error
        info = stack.info
        redis_note = "embedded Valkey" if info.embedded_redis else "Redis"
        console.print(
            f"{redis_note} at {info.redis_url}; ledger {info.database_url}; "
            f"API {info.api_url}; Flower {info.flower_url}; retry delays x{options.retry_scale}",
            highlight=False,
        )
        try:
            wait_until_serving(info, stack.group, stop, api_secret=api_key)
        except StartInterruptedError as error:
            raise DemoInterruptedError(str(error)) from error
        except StackStartError as error:
            raise DemoError(str(error)) from error
        access = StackAccess(info.api_url, info.flower_url, info.flower_login, str(log_path))
        yield DemoTarget(access, api_key, stack.group)
        console.print("Stopping the stack (warm shutdown) ...", highlight=False)


def _watch(
    states: Iterator[WorkloadState], group: ProcessGroup | None, stop: threading.Event
) -> Iterator[WorkloadState]:
    """``states``, ending with :class:`DemoError` if a process of the stack dies, or
    :class:`DemoInterruptedError` once ``stop`` is set."""
    for state in states:
        if stop.is_set():
            raise DemoInterruptedError("interrupted")
        dead = group.exited() if group is not None else None
        if dead is not None:
            raise DemoError(f"{dead.name} exited during the workload; see the stack log")
        yield state


def run_demo(
    settings: Settings, environment: dict[str, str], options: DemoOptions, console: Console
) -> int:
    """Run the demo; 0 when every job finished as planned, 1 otherwise, 130 on Ctrl-C.

    SIGINT, SIGTERM and SIGHUP only set a flag: the demo then stops the stack in order.
    """
    with stop_requested() as stop:
        return _run_demo(settings, environment, options, console, stop)


def _run_demo(
    settings: Settings,
    environment: dict[str, str],
    options: DemoOptions,
    console: Console,
    stop: threading.Event,
) -> int:
    secret = settings.webhook_signing_secret
    signing_secret = secret.get_secret_value() if secret is not None else ""
    try:
        with (
            demo_target(settings, environment, options, console, stop) as target,
            flaky_receiver(signing_secret) as receiver,
            ConveyorClient(target.access.api_url, target.api_key, timeout=30) as client,
        ):
            catalog = {task.name for task in client.tasks()}
            diagnostics = "diagnostics.fail" in catalog
            if not diagnostics:
                console.print(
                    "The diagnostics tasks are off (CONVEYOR_DIAGNOSTICS): no deliberate"
                    " failures in this run.",
                    highlight=False,
                )
            plan = plan_workload(options.jobs, receiver, diagnostics=diagnostics)
            console.print(
                f"Running about {plan.total_jobs} jobs through the io (gevent) and cpu "
                f"(prefork) pools; receiver at {receiver.base_url}",
                highlight=False,
            )
            started = time.monotonic()
            state = WorkloadState()
            with progress_view(console) as view:
                workload = run_workload(client, plan, timeout=options.timeout)
                for state in _watch(workload, target.group, stop):
                    view.show(state)
            summary = summarise(
                state.jobs.values(),
                wall_seconds=time.monotonic() - started,
                unexpected=[
                    f"{job.id} {job.task}: {job.status}, planned {planned}"
                    for job, planned in state.mismatches()
                ],
            )
            # a stack the demo started serves on only with --keep-running
            serving = target.group is None or options.keep_running
            console.print(summary_view(summary, receiver.tally, target.access, serving=serving))
            if options.summary_json is not None:
                options.summary_json.write_text(
                    json.dumps(summary.as_json(), indent=2, default=str)
                )
            if options.keep_running and target.group is not None:
                _stay_up(target, target.group, console, stop)
    except DemoInterruptedError as error:
        console.print(
            f"conveyor demo: {error}; the stack has stopped (warm shutdown), and unfinished"
            " jobs stay queued in the ledger and in Redis",
            highlight=False,
        )
        return INTERRUPTED_EXIT_CODE
    except DemoError as error:
        console.print(f"[bold red]conveyor demo: {error}")
        return 1
    except ConveyorError as error:
        console.print(f"[bold red]conveyor demo: the API refused the workload: {error}")
        return 1
    return _exit_code(summary)


def _stay_up(
    target: DemoTarget, group: ProcessGroup, console: Console, stop: threading.Event
) -> None:
    """Keep the started stack running until Ctrl-C, for a look at Flower and the API."""
    access = target.access
    # a configured key is a secret: only the dev default is shown, as conveyor dev does
    key = target.api_key if target.api_key == DEV_API_KEY[1] else "one of CONVEYOR_API_KEYS"
    console.print(
        f"The stack stays up: API {access.api_url} (key {key}), Flower"
        f" {access.flower_url} (login {access.flower_login}). Ctrl-C stops it.",
        highlight=False,
    )
    dead = group.wait_until(stop)
    if dead is not None:
        console.print(f"conveyor demo: {dead.name} stopped on its own; stopping")


def _exit_code(summary: DemoSummary) -> int:
    return 1 if summary.unexpected or summary.unfinished else 0
