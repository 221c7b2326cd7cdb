"""How a task is declared: ``@conveyor_task("name")`` on a plain function.

The catalog entry of that name supplies the kind (and so the queue), the argument model
and the time limits; the function stays plain Python, callable directly in tests.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from celery import shared_task

from tasks.base import ConveyorTask, JobContext
from tasks.catalog import ALL_SPECS, TaskSpec

Function = TypeVar("Function", bound=Callable[[JobContext, Any], Any])


def conveyor_task(name: str) -> Callable[[Function], Function]:
    """Register ``function`` as the implementation of catalog task ``name``.

    Everything else about the task (kind, limits, retry overrides) is its catalog entry, so
    the API, which reads only the catalog, sees the same task the worker runs.
    """
    spec: TaskSpec = ALL_SPECS[name]

    def register(function: Function) -> Function:
        # Celery builds a subclass of ConveyorTask whose ``run`` is the function given here
        shared_task(
            bind=True,
            base=ConveyorTask,
            name=spec.name,
            queue=spec.queue,
            soft_time_limit=spec.soft_time_limit,
            time_limit=spec.time_limit,
            spec=spec,
            implementation=staticmethod(function),
        )(ConveyorTask.run)
        return function

    return register
