"""What the demo shows: live progress while the workload runs, and the summary tables.

In a terminal the progress redraws in place (rich ``Live``); piped to a file or a CI log it
is one plain line every few seconds instead.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table

from api_shim.client import FINISHED_STATUSES
from conveyor.demo.receiver import ReceiverTally
from conveyor.demo.summary import STATUS_ORDER, DemoSummary
from conveyor.demo.workload import WorkloadState

#: Seconds between two progress lines when the output is not a terminal.
PLAIN_PROGRESS_EVERY = 5.0


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def progress_table(state: WorkloadState, elapsed: float) -> RenderableType:
    """Per task: finished of known, a bar, and the statuses now."""
    table = Table(title=f"conveyor demo: {elapsed:5.1f} s", title_justify="left", expand=False)
    for column in ("task", "queue", "finished", "", "now"):
        table.add_column(column)
    by_task: dict[str, Counter[str]] = {}
    queues: dict[str, str] = {}
    for job in state.jobs.values():
        by_task.setdefault(job.task, Counter[str]())[job.status] += 1
        queues[job.task] = job.queue
    for task, counts in sorted(by_task.items()):
        known = sum(counts.values())
        done = sum(counts[s] for s in FINISHED_STATUSES)
        now = ", ".join(f"{counts[s]} {s}" for s in STATUS_ORDER if counts[s])
        bar = ProgressBar(total=known, completed=done, width=24)
        table.add_row(task, queues[task], f"{done}/{known}", bar, now)
    return table


def progress_line(state: WorkloadState, elapsed: float) -> str:
    """One line of progress for a log."""
    counts = Counter[str](job.status for job in state.jobs.values())
    now = ", ".join(f"{counts[s]} {s}" for s in STATUS_ORDER if counts[s])
    return f"[{elapsed:5.1f} s] {state.finished}/{len(state.jobs)} finished: {now}"


class ProgressView:
    """Shows each new state: redrawn in a terminal, a line every few seconds elsewhere."""

    def __init__(self, console: Console, live: Live | None, started: float) -> None:
        self._console = console
        self._live = live
        self._started = started
        self._last_line = 0.0

    def show(self, state: WorkloadState) -> None:
        elapsed = time.monotonic() - self._started
        if self._live is not None:
            self._live.update(progress_table(state, elapsed))
        elif state.done or elapsed - self._last_line >= PLAIN_PROGRESS_EVERY:
            self._console.print(progress_line(state, elapsed), highlight=False)
            self._last_line = elapsed


@contextmanager
def progress_view(console: Console) -> Iterator[ProgressView]:
    """A progress view for the block; in a terminal the last table stays on screen."""
    started = time.monotonic()
    if not console.is_terminal:
        yield ProgressView(console, None, started)
        return
    with Live(console=console, refresh_per_second=4, transient=False) as live:
        yield ProgressView(console, live, started)


@dataclass(frozen=True)
class StackAccess:
    """Where the demo's stack answered, for the closing hints."""

    api_url: str
    flower_url: str | None  # None: a running stack's, which the demo does not know
    flower_login: str
    stack_log: str | None


def jobs_table(summary: DemoSummary) -> Table:
    """Jobs by task and status, with retries."""
    statuses = [s for s in STATUS_ORDER if summary.by_status.get(s)]
    table = Table(title="Jobs by task and status", title_justify="left")
    table.add_column("task")
    for status in statuses:
        table.add_column(status, justify="right")
    table.add_column("total", justify="right")
    table.add_column("retries", justify="right")
    for task, counts in summary.by_task.items():
        table.add_row(
            task, *(str(counts.get(s, 0)) for s in statuses), str(sum(counts.values())),
            str(summary.retries_by_task[task]),
        )  # fmt: skip
    table.add_row(
        "all", *(str(summary.by_status.get(s, 0)) for s in statuses), str(summary.total),
        str(summary.retries), style="bold",
    )  # fmt: skip
    return table


def pools_table(summary: DemoSummary) -> Table:
    """Throughput (over the span from the first start to the last finish) and latency
    (enqueue to finish, retries included) per pool."""
    table = Table(title="Pools", title_justify="left")
    for column in ("queue", "pool", "jobs", "span", "jobs/s", "latency p50", "latency p95"):
        table.add_column(column, justify="left" if column in ("queue", "pool") else "right")
    for pool in summary.pools:
        table.add_row(
            pool.queue, pool.pool, str(pool.finished), f"{pool.busy_seconds:.1f} s",
            f"{pool.jobs_per_second:.1f}", _seconds(pool.latency_p50),
            _seconds(pool.latency_p95),
        )  # fmt: skip
    table.add_row(
        "all", "", str(summary.total), f"{summary.wall_seconds:.1f} s", "",
        _seconds(summary.latency_p50), _seconds(summary.latency_p95), style="bold",
    )  # fmt: skip
    return table


def summary_view(
    summary: DemoSummary, tally: ReceiverTally, access: StackAccess, *, serving: bool
) -> RenderableType:
    """The whole closing report. Flower's and the API's addresses are given only if they
    still serve after it (``serving``): a stack the demo started stops once it is printed,
    unless ``--keep-running``."""
    lines = [
        (
            f"{summary.total} jobs in {summary.wall_seconds:.1f} s; "
            f"{summary.retries} retries over {summary.jobs_retried} jobs."
        ),
        (
            f"Receiver: {sum(tally.webhooks.values())} webhook requests ({tally.bad_signatures}"
            f" with a bad signature), {tally.images_served} images served."
        ),
    ]
    if summary.dead_letters:
        lines.append(
            f"Dead letters ({len(summary.dead_letters)} jobs `failed`): replay one with "
            "`conveyor jobs retry ID` or POST /v1/jobs/ID/retry, e.g."
        )
        lines.extend(
            f"  {d.id}  {d.task}  {d.error} after {d.attempts} attempt(s)"
            for d in summary.dead_letter_examples(6)
        )
    if serving:
        flower = (
            f"Flower: {access.flower_url} (login {access.flower_login})"
            if access.flower_url
            else "Flower: the running stack's (`conveyor dev` prints its URL and login)"
        )
        lines.append(f"{flower} - Tasks, filtered by state FAILURE or RETRY.")
        lines.append(f"The API's documentation: {access.api_url}/docs")
    else:
        lines.append(
            "The stack stops now. To look at these jobs in Flower (Tasks, filtered by state"
            " FAILURE or RETRY) and at the API's /docs, run the demo with --keep-running,"
            " or start `conveyor dev`."
        )
    lines.append("The ledger: `conveyor jobs list --status failed`.")
    if access.stack_log:
        lines.append(f"Logs of every process: {access.stack_log}")
    if summary.unexpected:
        lines.append(f"[bold red]{len(summary.unexpected)} jobs ended otherwise than planned:")
        lines.extend(f"  {line}" for line in summary.unexpected[:10])
    if summary.unfinished:
        lines.append(
            f"[bold red]{summary.unfinished} jobs had not finished when the demo stopped"
            " waiting[/]: retries wait up to 10 min x CONVEYOR_RETRY_SCALE; raise --timeout,"
            " or lower the scale (--retry-scale, or the running stack's setting)."
        )
    if not summary.unexpected and not summary.unfinished:
        lines.append("Every job ended as planned.")
    return Group(jobs_table(summary), pools_table(summary), *lines)
