"""How a task is declared: ``@conveyor_task("name")`` on a plain function.

The catalog entry of that name supplies the kind (and so the queue), the argument model
and the time limits; the function stays plain Python, callable directly in tests.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from celery import shared_task

from tasks.base import ConveyorTask, JobContext
from tasks.catalog import ALL_SPECS, TaskSpec
from tasks.retry_policy import RetryPolicy

Function = TypeVar("Function", bound=Callable[[JobContext, Any], Any])


def conveyor_task(
    name: str, *, retry_overrides: Mapping[type[BaseException], RetryPolicy] | None = None
) -> Callable[[Function], Function]:
    """Register ``function`` as the implementation of catalog task ``name``.

    ``retry_overrides`` replaces rows of the retry-policy table for this task only.
    """
    spec: TaskSpec = ALL_SPECS[name]
    if retry_overrides:
        spec = TaskSpec(**{**spec.__dict__, "retry_overrides": dict(retry_overrides)})

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
