"""Per-process resources that tasks share (an HTTP connection pool, say), closed at exit.

A task asks for a resource by the factory that makes it; the first call in a process
makes it, later calls in the same process get the same one. A forked child starts empty.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, TypeVar, cast

from workers.settings import Settings

Resource = TypeVar("Resource")
ResourceFactory = Callable[[Settings], AbstractContextManager[Resource]]


class ProcessResources:
    """Resources made once per process from the settings, and closed together."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._made: dict[Callable[..., Any], Any] = {}
        self._stack = contextlib.ExitStack()

    def get(self, factory: ResourceFactory[Resource]) -> Resource:
        """The process's resource made by ``factory``, made on first use."""
        with self._lock:
            if self._pid != os.getpid():
                self._forget_inherited()
            if factory not in self._made:
                self._made[factory] = self._stack.enter_context(factory(self._settings))
            return cast(Resource, self._made[factory])

    def close(self) -> None:
        """Close every resource this process made."""
        with self._lock:
            if self._pid == os.getpid():
                self._stack.close()
            self._made.clear()
            self._stack = contextlib.ExitStack()

    def _forget_inherited(self) -> None:
        # a forked child must not close (or use) its parent's sockets
        self._made.clear()
        self._stack.pop_all()
        self._pid = os.getpid()
