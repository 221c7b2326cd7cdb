"""The exceptions a task raises to tell the runtime what went wrong.

They import nothing from Celery: the retry-policy table (``tasks.retry_policy``) decides
what each one means.
"""

from __future__ import annotations


class TaskError(Exception):
    """Base of every exception a task raises on purpose."""


class TransientError(TaskError):
    """A passing fault (a timeout, a dropped connection): try again soon, backing off."""


class RateLimitedError(TaskError):
    """The remote side asked us to slow down; try again after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = max(0.0, float(retry_after))


class DependencyUnavailableError(TaskError):
    """Something the task needs is down; retry patiently for minutes."""


class PermanentError(TaskError):
    """Trying again cannot help (bad input, a refused request): fail at once."""


class InvalidArgumentsError(PermanentError):
    """The job's arguments do not match the task's argument model."""


class PoisonJobError(PermanentError):
    """The job's worker died under it too many times; it is failed without running again."""
