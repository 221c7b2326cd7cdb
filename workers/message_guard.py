"""Where every broker message is judged before Celery takes it: the worker's consumer, and
the Redis channel beneath it for messages whose envelope cannot even be read.

A refused message is logged once at ERROR with what identifies it (task name, id, queue,
content type, size) and an ``error_id``, never its body or other headers; it is counted
(``conveyor_messages_rejected_total{reason}``) and acknowledged, so it never comes back.
"""

from __future__ import annotations

import binascii
import logging
from collections.abc import Callable, Mapping
from typing import Any, cast

import redis
from celery.worker.consumer import Consumer
from kombu.transport import redis as kombu_redis
from kombu.transport.virtual import Message as VirtualMessage
from vine import promise

from workers.broker_poller import PromptPoller
from workers.message_judge import Rejection, RejectReason
from workers.message_rejections import record_rejection
from workers.runtime import ConveyorCelery
from workers.structured_logging import new_error_id

logger = logging.getLogger("conveyor.messages")

_NAME_SHOWN = 200  # characters of a task name or id kept in the log line


def _shown(value: Any) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else repr(value)
    return text[:_NAME_SHOWN]


def message_identity(message: Any) -> dict[str, Any]:
    """What identifies a message without revealing what it carries."""
    headers = message.headers if isinstance(message.headers, Mapping) else {}
    delivery = message.delivery_info if isinstance(message.delivery_info, Mapping) else {}
    body = message.body
    return {
        "task": _shown(headers.get("task")),
        "message_id": _shown(headers.get("id")),
        "queue": _shown(delivery.get("routing_key") or delivery.get("exchange")),
        "content_type": _shown(message.content_type),
        "size": len(body) if isinstance(body, bytes | str) else None,
    }


class RejectionReport:
    """Logs and counts refused messages; the counter lives in Redis for the API to read."""

    def __init__(self, counter: Callable[[], redis.Redis]) -> None:
        self._counter = counter

    def __call__(self, rejection: Rejection, identity: Mapping[str, Any]) -> None:
        """Report one refused message."""
        logger.error(
            "message rejected (%s): %s; it is dropped, not run",
            rejection.reason.value,
            rejection.problem,
            extra={"error_id": new_error_id(), "reason": rejection.reason.value, **identity},
        )
        try:
            record_rejection(self._counter(), rejection.reason.value)
        except redis.RedisError as error:
            logger.warning("rejected-message counter not recorded: %s", error)


class JudgingConsumer(Consumer):
    """Celery's consumer, with every task message judged before Celery's handler sees it."""

    def create_task_handler(self, promise: Any = promise) -> Callable[[Any], None]:
        """Celery's handler, behind the app's :class:`MessageJudge`."""
        handle = super().create_task_handler(promise)
        app = cast(ConveyorCelery, self.app)
        judge = app.message_judge
        runtime = app.runtime
        report = RejectionReport(lambda: runtime.redis_client)
        # kombu counts KeyError among Redis's connection errors; here it is a bad message
        connection_errors = tuple(
            error for error in getattr(self, "connection_errors", ()) if error is not KeyError
        )

        def refuse(message: Any, rejection: Rejection) -> None:
            report(rejection, message_identity(message))
            message.reject_log_error(logger, connection_errors, requeue=False)

        def on_task_received(message: Any) -> None:
            rejection = judge.judge(
                message.headers, message.body, message.content_type, message.content_encoding
            )
            if rejection is not None:
                refuse(message, rejection)
                return
            try:
                handle(message)
            except connection_errors:
                raise
            except Exception as error:  # noqa: BLE001 - no message may stop the worker
                refuse(message, Rejection(RejectReason.MALFORMED, type(error).__name__))

        return on_task_received


class UnreadableEnvelopeError(Exception):
    """A popped message whose kombu envelope is not the object kombu builds messages from."""


class GuardedMessage(VirtualMessage):
    """kombu's message, built from an envelope that may be anything at all."""

    def __init__(self, payload: Any, channel: Any = None, **kwargs: Any) -> None:
        try:
            super().__init__(payload, channel=channel, **kwargs)
        except (KeyError, TypeError, AttributeError, ValueError, binascii.Error) as error:
            # KeyError is one of kombu's connection errors: raised as it is, a bad envelope
            # would make the worker reconnect and cancel the tasks it runs
            raise UnreadableEnvelopeError(type(error).__name__) from None


class GuardedChannel(kombu_redis.Channel):
    """kombu's Redis channel, dropping a popped message whose envelope cannot be read, and
    failing with a connection error once its connection is gone.

    kombu parses the envelope (JSON, then the base64 body) after BRPOP has taken it from
    the list and before Celery sees it; a failure there would otherwise escape into the
    worker's event loop and stop the worker. The message is already gone from Redis then,
    so it is reported, not requeued.
    """

    Message = GuardedMessage

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        if self.connection.client is None:
            # The connection was collected (Celery's consumer does so on a connection error,
            # before it closes it) while this channel stayed open, holding unacknowledged
            # messages; closing it now restores them through a transport that no longer
            # knows the broker. kombu's AttributeError there stopped the worker: this is the
            # connection error it stands for, which Celery handles by reconnecting. Redis
            # keeps the messages in its unacked hash; the ledger brings back their jobs.
            raise redis.ConnectionError("the broker connection was closed")
        params: dict[str, Any] = super()._connparams(asynchronous)  # type: ignore[misc]
        return params

    def _brpop_read(self, **options: Any) -> bool:
        try:
            return bool(super()._brpop_read(**options))  # type: ignore[misc]  # kombu's own
        except UnreadableEnvelopeError as error:
            problem = f"not a kombu envelope ({error})"
        except self.connection.connection_errors:
            raise
        except (ValueError, TypeError) as error:  # the envelope is not JSON
            problem = f"not JSON ({type(error).__name__})"
        report = RejectionReport(lambda: redis.Redis(connection_pool=self.pool))
        report(Rejection(RejectReason.ENVELOPE, problem), {})
        return True


class GuardedTransport(kombu_redis.Transport):
    """kombu's Redis transport with :class:`GuardedChannel`, polled by a
    :class:`~workers.broker_poller.PromptPoller`."""

    Channel = GuardedChannel

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cycle = PromptPoller()
