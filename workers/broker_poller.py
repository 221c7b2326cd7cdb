"""kombu's Redis poller, resuming a consumer as soon as an acknowledgement returns credit.

When every prefetch slot of a worker is taken, kombu stops reading its BRPOP and polls the
other sockets (the remote-control channel) until Celery's ``drain_events`` timeout, two
seconds, runs out. A gevent worker's slots are freed by acknowledgements made in other
greenlets, which that poll does not see: the worker then sat idle with its queue full for
up to two seconds each time its slots had filled: twelve 0.1 s jobs at concurrency 2 took
9.5 s instead of 0.7 s, and a no-op drain at concurrency 50 paused 1.7 s and 1.9 s with
nothing in flight (``tests/integration/test_worker_credit.py``). While a channel has no
credit, this poller waits in short slices instead, and looks at the credit between them.

The prefork pool does not go through this path: its event loop re-reads the credit on
every tick.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis as kombu_redis

#: Longest wait for a socket while a channel has no credit: how late a consumer may resume.
CREDIT_CHECK_SECONDS = 0.01


class PromptPoller(kombu_redis.MultiChannelPoller):
    """kombu's poller, waiting at most :data:`CREDIT_CHECK_SECONDS` while out of credit."""

    def get(self, callback: Any, timeout: float | None = None) -> Any:
        if (timeout is None or timeout > CREDIT_CHECK_SECONDS) and self._out_of_credit():
            timeout = CREDIT_CHECK_SECONDS
        return super().get(callback, timeout)

    def _out_of_credit(self) -> bool:
        channels: set[Any] = self._channels  # type: ignore[attr-defined]  # set by kombu
        return any(channel.active_queues and not channel.qos.can_consume() for channel in channels)
