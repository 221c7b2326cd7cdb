"""The worker's Redis channels survive the way Celery's consumer closes them after the broker
went away: the connection collected first (its transport forgets the broker's address),
closed after."""

from __future__ import annotations

from contextlib import suppress
from pathlib import Path
from typing import cast

from kombu import Connection, Consumer, Queue
from kombu.common import ignore_errors

from tests.support.redis_server import private_redis
from workers.message_guard import GuardedChannel, GuardedTransport


def test_closing_collected_channels_that_hold_unacknowledged_messages_is_not_a_bug(
    tmp_path: Path,
) -> None:
    # Seen in a gevent worker when Redis was killed: each channel had a message taken and
    # not yet acknowledged, and a BRPOP in flight. Collecting the connection stopped at the
    # first channel whose BRPOP failed, and dropped the broker's address; the close that
    # Celery's consumer makes next then restored a channel's unacknowledged messages through
    # that transport, raised AttributeError instead of a connection error, and the worker
    # stopped ("Unrecoverable error").
    with private_redis(tmp_path) as broker:
        connection = Connection(broker.url, transport=GuardedTransport)
        channels = [
            cast(GuardedChannel, c) for c in (connection.default_channel, connection.channel())
        ]
        with connection.Producer() as producer:
            for number, channel in enumerate(channels):
                queue = Queue(f"loss-{number}", routing_key=f"loss-{number}")
                producer.publish({"n": number}, routing_key=queue.routing_key, declare=[queue])
                Consumer(channel, [queue], callbacks=[lambda _body, _message: None]).consume()
        for _ in channels:
            connection.drain_events(timeout=5)  # one message each, taken, not acknowledged
        for channel in channels:
            assert channel.qos._delivered
            channel._brpop_start()  # type: ignore[attr-defined]  # kombu's own: a BRPOP in flight
        broker.kill()

        with suppress(*connection.connection_errors):
            connection.collect()  # what Celery's consumer does first
        # and then; a connection error is ignored and the consumer reconnects, anything
        # else escapes and stops the worker
        ignore_errors(connection, connection.close)
