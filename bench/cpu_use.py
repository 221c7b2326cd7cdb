"""CPU time read from /proc: a process's own, PostgreSQL's and Redis's, between two moments."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

from bench_processes import process_tree

TICKS = os.sysconf("SC_CLK_TCK")


def process_seconds(pid: int, *, reaped_children: bool = False) -> float:
    """CPU seconds (user + system) ``pid`` has used; 0 once it is gone.

    With ``reaped_children``, also what its children used before it reaped them (a prefork
    worker's recycled children, the PostgreSQL backends of closed connections): summed
    over a process tree at two moments, that keeps a child that ended between them counted.
    """
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = text[text.rfind(")") + 2 :].split()
    ticks = int(fields[11]) + int(fields[12])
    if reaped_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / TICKS


def processes_named(name: str) -> list[int]:
    """Every process whose command is ``name``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # it ended while the directory was read
            continue
        if stat[stat.find("(") + 1 : stat.rfind(")")] == name:
            found.append(int(entry.name))
    return found


@dataclass
class CpuUse:
    """CPU seconds used by a worker (and its children), PostgreSQL and Redis."""

    worker: float = 0.0
    postgres: float = 0.0
    redis: float = 0.0

    @classmethod
    def of(cls, worker: int) -> CpuUse:
        def total(pids: list[int]) -> float:
            return sum(process_seconds(pid, reaped_children=True) for pid in pids)

        return cls(
            total(process_tree(worker)),
            total(processes_named("postgres")),
            total(processes_named("redis-server")),
        )

    def since(self, start: CpuUse) -> CpuUse:
        return CpuUse(
            self.worker - start.worker, self.postgres - start.postgres, self.redis - start.redis
        )


class ProcessesMeter:
    """CPU seconds used by every process named ``name`` while the meter runs, including
    processes that start and end meanwhile (sampled every ``interval`` seconds, so at most
    the last interval of a process that ends is missed)."""

    def __init__(self, name: str, interval: float = 0.05) -> None:
        self._name = name
        self._interval = interval
        self._first: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ProcessesMeter:
        self._sample(initial=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    @property
    def seconds(self) -> float:
        return sum(last - self._first.get(pid, 0.0) for pid, last in self._last.items())

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._sample()

    def _sample(self, *, initial: bool = False) -> None:
        for pid in processes_named(self._name):
            seconds = process_seconds(pid)
            if seconds:
                self._last[pid] = seconds
                if initial:
                    self._first[pid] = seconds
