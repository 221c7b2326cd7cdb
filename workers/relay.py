"""The outbox relay: publishes jobs the producer could not, and delayed jobs once due.

The same loop fires due schedules first (:mod:`workers.scheduler`) and runs the reconciler,
which puts back the jobs of dead worker processes. Retention (:mod:`workers.retention`) runs
beside it, on a loop of its own that takes a small step four times a second.

It picks up jobs whose delay is over, jobs recorded while Redis was down, and jobs whose
producer died between commit and publish; and, every ten runs, jobs the ledger says were
published and still wait whose messages Redis no longer has. Every io (gevent) worker runs
it once a second in a greenlet of its own (:class:`RelayLoop`), and every cpu (prefork)
worker on its event loop's timer, without the lost-message check; so no single process has
to be up for it. Any number of relays cooperate, each taking only rows no other has locked
(``SKIP LOCKED``). ``conveyor beat`` runs the same loop in its own process (no task message:
a message per second would crowd Flower and take a worker's slot); harmless beside the
workers' loops. Each run leaves its time in Redis (:mod:`workers.relay_heartbeat`), which
``/readyz``, ``/v1/stats`` and ``conveyor check`` report.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable
from datetime import timedelta

import redis
from sqlalchemy.exc import SQLAlchemyError

from workers.relay_heartbeat import record_relay_run
from workers.runtime import ConveyorCelery, WorkerRuntime, runtime_of

logger = logging.getLogger(__name__)

RELAY_TASK = "conveyor.relay_outbox"
RELAY_INTERVAL_SECONDS = 1.0
#: Retention deletes a small batch this often: short transactions spread out, not long ones.
RETENTION_INTERVAL_SECONDS = 0.25
#: A published job still waiting this long is checked for in Redis; if its message is gone
#: (Redis restarted without persistence, failed over, was flushed), it is published again.
LOST_AFTER = timedelta(seconds=30)
# the check reads every message Redis holds: one run in ten (about every 10 s) makes it
_RUNS_PER_LOST_CHECK = 10
# rounds of up to 1,000 jobs per run, so a backlog drains without one run holding on
_ROUNDS = 20
_BATCH = 1000


def relay_outbox(runtime: WorkerRuntime) -> int:
    """Publish every job due now (in rounds); how many. A failure is logged, not raised."""
    enqueuer = runtime.enqueuer
    published = 0
    try:
        for _ in range(_ROUNDS):
            count = enqueuer.relay_due(limit=_BATCH)
            published += count
            if count < _BATCH:
                break
        record_relay_run(runtime.redis_client)
    except (redis.RedisError, SQLAlchemyError) as error:
        logger.warning("outbox relay could not run", extra={"reason": str(error)})
    if published:
        logger.info("outbox relay published %d jobs", published)
    return published


def fire_schedules(runtime: WorkerRuntime) -> int:
    """Make the jobs of the schedules due now; how many. A failure is logged, not raised."""
    if runtime.scheduler is None:
        return 0
    try:
        fired = runtime.scheduler.fire_due()
    except (redis.RedisError, SQLAlchemyError) as error:
        logger.warning("schedules could not fire", extra={"reason": str(error)})
        return 0
    except Exception:
        # a bug must not end the loop that also relays and reconciles
        logger.exception("schedules could not fire")
        return 0
    if fired:
        logger.info("schedules fired %d jobs", fired, extra={"jobs": fired})
    return fired


def republish_lost(runtime: WorkerRuntime) -> int:
    """Publish again the waiting jobs whose messages Redis lost; a failure is logged."""
    try:
        return runtime.enqueuer.republish_lost(
            waiting_longer_than=LOST_AFTER,
            held_longer_than=timedelta(seconds=runtime.settings.worker_lease_seconds),
        )
    except (redis.RedisError, SQLAlchemyError) as error:
        logger.warning("lost-message check could not run", extra={"reason": str(error)})
        return 0


def reconcile(runtime: WorkerRuntime) -> None:
    """Put back the jobs of dead worker processes (:mod:`workers.leases`)."""
    if runtime.reconciler is not None:
        runtime.reconciler.run()


def retain(runtime: WorkerRuntime) -> None:
    """Take one step of retention (:mod:`workers.retention`)."""
    runtime.retention.step()


def relay_run(runtime: WorkerRuntime) -> Callable[[], None]:
    """One run of the relay loop: due schedules, the outbox, the reconciler, and one run in
    ten the lost-message check."""
    runs = itertools.count(1)

    def run() -> None:
        fire_schedules(runtime)
        relay_outbox(runtime)
        reconcile(runtime)
        if next(runs) % _RUNS_PER_LOST_CHECK == 0:
            republish_lost(runtime)

    return run


class PeriodicLoop:
    """Runs ``work`` every ``interval`` seconds in a thread of its own until stopped.

    In a gevent worker the thread is a greenlet (threading is patched), and the work's
    database and Redis calls yield like any task's.
    """

    def __init__(self, name: str, interval: float, work: Callable[[], None]) -> None:
        self._name = name
        self._interval = interval
        self._work = work
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        """Start the loop."""
        self._thread.start()
        logger.info("%s running every %g s", self._name, self._interval)

    def stop(self) -> None:
        """Stop after the current run."""
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._work()


def background_loops(runtime: WorkerRuntime) -> list[PeriodicLoop]:
    """The loops an io worker or a beat runs beside its work: the relay (:func:`relay_run`)
    and retention, in small steps several times a second (:func:`retain`)."""
    return [
        PeriodicLoop("outbox relay", RELAY_INTERVAL_SECONDS, relay_run(runtime)),
        PeriodicLoop("retention", RETENTION_INTERVAL_SECONDS, lambda: retain(runtime)),
    ]


def register_relay(app: ConveyorCelery) -> None:
    """Declare the relay task on ``app``; beat does not schedule it.

    Workers and beat relay in a loop of their own. The task stays declared so that a relay
    message sent by an older beat still runs once instead of being refused.
    """

    @app.task(name=RELAY_TASK, ignore_result=True, acks_late=False, shared=False)
    def relay_outbox_task() -> int:
        return relay_outbox(runtime_of(app))

    app.conf.beat_schedule = {}
