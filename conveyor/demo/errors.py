"""Why a demo ended early."""

from __future__ import annotations


class DemoError(RuntimeError):
    """The demo could not run: the stack did not come up, or a process of it died."""


class DemoInterruptedError(DemoError):
    """Ctrl-C (SIGINT), SIGTERM or SIGHUP: the demo stops the stack and ends."""
