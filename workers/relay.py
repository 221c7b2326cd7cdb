"""The outbox relay: a beat-scheduled task that publishes jobs the producer could not.

It picks up jobs whose delay is over, jobs recorded while Redis was down, and jobs whose
producer died between commit and publish.
"""

from __future__ import annotations

import logging

import redis
from sqlalchemy.exc import SQLAlchemyError

from workers.runtime import ConveyorCelery, runtime_of

logger = logging.getLogger(__name__)

RELAY_TASK = "conveyor.relay_outbox"
RELAY_INTERVAL_SECONDS = 1.0
# rounds of up to 1,000 jobs per run, so a backlog drains without one run holding on
_ROUNDS = 20
_BATCH = 1000


def register_relay(app: ConveyorCelery) -> None:
    """Declare the relay task on ``app`` and schedule it every second with beat."""

    @app.task(name=RELAY_TASK, ignore_result=True, acks_late=False, shared=False)
    def relay_outbox() -> int:
        enqueuer = runtime_of(app).enqueuer
        published = 0
        try:
            for _ in range(_ROUNDS):
                count = enqueuer.relay_due(limit=_BATCH)
                published += count
                if count < _BATCH:
                    break
        except (redis.RedisError, SQLAlchemyError) as error:
            logger.warning("outbox relay could not run", extra={"reason": str(error)})
        if published:
            logger.info("outbox relay published %d jobs", published)
        return published

    app.conf.beat_schedule = {
        "relay-outbox": {
            "task": RELAY_TASK,
            "schedule": RELAY_INTERVAL_SECONDS,
            # a relay message older than this is pointless: a newer one is behind it
            "options": {"queue": "io", "expires": 30},
        }
    }
