"""The Celery application factory: configuration, queues, routing and worker signals."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import redis
from celery import signals
from celery.concurrency import get_implementation
from kombu import Exchange, Queue

from tasks.base import poison_error
from tasks.catalog import KINDS, Catalog, build_catalog
from tasks.errors import PoisonJobError
from tasks.retry_policy import POISON_AFTER_LOST_ATTEMPTS
from workers.hub_monitor import HubBlock, HubBlockMonitor
from workers.leases import ChildLeaseWatch, Reconciler
from workers.message_judge import MessageJudge
from workers.pool_fitness import record_hub_block
from workers.relay import (
    RELAY_INTERVAL_SECONDS,
    RELAY_TASK,
    RETENTION_INTERVAL_SECONDS,
    PeriodicLoop,
    background_loops,
    register_relay,
    relay_run,
    retain,
)
from workers.runtime import ConveyorCelery, WorkerRuntime, pool_name_of
from workers.scheduler import Scheduler
from workers.settings import Settings, SettingsError
from workers.structured_logging import configure_logging, log_context

logger = logging.getLogger(__name__)
#: A temporary blob file untouched this long (seconds) belongs to a writer that died.
TEMPORARY_BLOB_LIFETIME = 24 * 3600.0

# connections kept beyond one per concurrent task: the consumer, events, heartbeats
_CONNECTION_HEADROOM = 20
RESULT_EXPIRES_SECONDS = 24 * 3600


class KindRouter:
    """Routes a task to the queue of its declared kind, so producers never name a queue."""

    def __init__(self, catalog: Catalog) -> None:
        self._catalog = catalog

    def __call__(
        self, name: str, args: Any, kwargs: Any, options: Any, task: Any = None, **_: Any
    ) -> dict[str, str] | None:
        spec = self._catalog.get(name)
        return {"queue": spec.queue} if spec else None


def check_visibility_timeout(settings: Settings, catalog: Catalog) -> None:
    """Refuse a visibility timeout that would redeliver a task still within its time limit."""
    longest = catalog.longest_time_limit()
    if settings.visibility_timeout <= longest:
        raise SettingsError(
            f"CONVEYOR_VISIBILITY_TIMEOUT: {settings.visibility_timeout} s is not above the "
            f"longest task hard time limit ({longest:g} s); Redis would redeliver running jobs"
        )


def connection_cap(settings: Settings) -> int:
    """Redis connections one process may open: one per concurrent task plus headroom.

    redis-py caps a default pool at 100 connections and raises beyond it, which stalls a
    gevent worker with a larger pool; the cap follows the configured concurrency instead.
    """
    return max(settings.io_concurrency, settings.cpu_concurrency) + _CONNECTION_HEADROOM


def create_app(settings: Settings, catalog: Catalog | None = None) -> ConveyorCelery:
    """Build the Celery app for ``settings``; the worker runtime rides on ``app.runtime``."""
    catalog = (
        catalog if catalog is not None else build_catalog(diagnostics=bool(settings.diagnostics))
    )
    check_visibility_timeout(settings, catalog)
    app = ConveyorCelery("conveyor", set_as_current=False)
    cap = connection_cap(settings)
    app.conf.update(
        broker_url=settings.redis_url,
        result_backend=settings.redis_url,
        # JSON only: pickle would let anyone who can write to Redis run code in a worker
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        event_serializer="json",
        task_queues=[
            Queue(kind, Exchange(kind, type="direct"), routing_key=kind) for kind in KINDS
        ],
        task_default_exchange="io",
        task_default_routing_key="io",
        task_default_queue="io",
        task_routes=(KindRouter(catalog),),
        # a message is acknowledged after its task ran; a dead worker's job is redelivered
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # STARTED is the ledger's "running"; storing it too would double the result writes
        task_track_started=False,
        # Flower switches task events on by broadcast while it runs; idle, they cost a
        # fanout publish per task state
        task_send_sent_event=False,
        worker_send_task_events=False,
        result_expires=RESULT_EXPIRES_SECONDS,
        # one result backend (and one Redis pool) per process: Celery's default keeps one
        # per thread, and under gevent that means a new backend and connection per task
        result_backend_thread_safe=True,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout,
            "max_connections": cap,
            "socket_connect_timeout": 5,
            "health_check_interval": 25,
        },
        redis_max_connections=cap,
        redis_socket_connect_timeout=5,
        redis_socket_timeout=30,
        redis_retry_on_timeout=True,
        redis_backend_health_check_interval=25,
        worker_prefetch_multiplier=1,
        worker_max_tasks_per_child=1000,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        # beat only schedules the outbox relay every second; nothing worth persisting
        beat_scheduler="celery.beat:Scheduler",
        include=catalog.modules(),
        # every message is judged before Celery takes it (workers/message_guard.py)
        worker_consumer="workers.message_guard:JudgingConsumer",
        broker_transport="workers.message_guard:GuardedTransport",
    )
    runtime = app.runtime = WorkerRuntime(settings)
    runtime.reconciler = Reconciler(
        lambda: runtime.engine,
        timedelta(seconds=settings.worker_lease_seconds),
        poison_after=POISON_AFTER_LOST_ATTEMPTS,
        poison_error=lambda: poison_error().as_json(),
        on_poisoned=lambda job_id, error: _mirror_failure(app, job_id, error),
    )
    runtime.scheduler = Scheduler(lambda: runtime.engine, lambda: runtime.enqueuer, catalog)
    app.message_judge = MessageJudge(frozenset(catalog), internal_tasks=frozenset({RELAY_TASK}))
    register_relay(app)
    _connect_worker_signals(app)
    return app


def _mirror_failure(app: ConveyorCelery, job_id: str, error: dict[str, Any]) -> None:
    """Celery's state of a job the reconciler failed: FAILURE, as the ledger says."""
    try:
        app.backend.mark_as_failure(job_id, PoisonJobError(str(error.get("message", ""))))
    except redis.RedisError as failure:
        logger.warning("Celery state of a poisoned job not set: %s", failure)


def watch_event_loop(runtime: WorkerRuntime) -> None:
    """Report every task that keeps this gevent worker's event loop from running."""
    fitness_logger = logging.getLogger("conveyor.pool_fitness")

    def report(block: HubBlock) -> None:
        with log_context(job_id=block.job_id or None, task_id=block.job_id or None):
            fitness_logger.warning(
                "%s blocked the gevent event loop for %.2f s; CPU-bound work belongs in a "
                "cpu task (prefork pool)",
                block.task,
                block.seconds,
                extra={"task": block.task, "blocked_seconds": block.seconds, "pool": "gevent"},
            )
        try:
            record_hub_block(runtime.redis_client, block.task, block.seconds)
        except redis.RedisError as error:
            fitness_logger.warning("pool-fitness counter not recorded: %s", error)

    threshold = runtime.settings.hub_block_threshold
    HubBlockMonitor(runtime.running_tasks, threshold, report).start()
    logger.info("watching the event loop", extra={"threshold_seconds": threshold})


def _connect_worker_signals(app: ConveyorCelery) -> None:
    runtime = app.runtime

    def on_setup_logging(**_: Any) -> None:
        # connecting here stops Celery from installing its own (plain text) handlers
        configure_logging(runtime.settings.log_level, runtime.settings.secret_values())

    def on_worker_init(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is not app:
            return
        pool = pool_name_of(get_implementation(sender.pool_cls))
        runtime.adopt_worker(pool, int(sender.concurrency or 1), str(sender.hostname))
        if pool == "gevent":
            watch_event_loop(runtime)
        if pool != "prefork":  # this process runs the attempts: it holds a lease
            runtime.hold_lease()
        swept = runtime.blobs.sweep_temporary(older_than=TEMPORARY_BLOB_LIFETIME)
        if swept:
            logger.info("removed %d abandoned temporary blob files", swept)
        logger.info(
            "worker starting",
            extra={"pool": pool, "concurrency": runtime.concurrency},
        )

    loops: list[PeriodicLoop] = []

    def on_worker_ready(sender: Any = None, **_: Any) -> None:
        # every worker relays the outbox and takes retention steps: an io worker in
        # greenlets of its own; a prefork main process on its event loop's timer, since a
        # thread there could hold a lock while a child is forked and leave the child stuck
        if runtime.pool == "gevent" and not loops:
            loops.extend(background_loops(runtime))
            for loop in loops:
                loop.start()
        elif runtime.pool == "prefork" and getattr(sender, "timer", None) is not None:
            children = ChildLeaseWatch(lambda: runtime.engine, runtime.instance)
            relay = relay_run(runtime)

            def housekeeping() -> None:
                children.check(list(sender.pool.info.get("processes", [])))
                relay()

            sender.timer.call_repeatedly(RELAY_INTERVAL_SECONDS, housekeeping)
            sender.timer.call_repeatedly(RETENTION_INTERVAL_SECONDS, lambda: retain(runtime))
            logger.info("outbox relay running every %g s", RELAY_INTERVAL_SECONDS)

    def on_beat_init(sender: Any = None, **_: Any) -> None:
        # beat relays in threads of its own process; it sends no relay messages
        if getattr(sender, "app", None) is app and not loops:
            loops.extend(background_loops(runtime))
            for loop in loops:
                loop.start()

    def on_worker_stop(**_: Any) -> None:
        for loop in loops:
            loop.stop()
        on_process_shutdown()

    def on_process_init(**_: Any) -> None:
        runtime.reset_after_fork()
        runtime.hold_lease()  # a prefork child runs attempts: it holds a lease of its own

    def on_process_shutdown(**_: Any) -> None:
        runtime.close()

    signals.setup_logging.connect(on_setup_logging, weak=False)
    signals.worker_init.connect(on_worker_init, weak=False)
    signals.worker_process_init.connect(on_process_init, weak=False)
    signals.worker_process_shutdown.connect(on_process_shutdown, weak=False)
    signals.worker_ready.connect(on_worker_ready, weak=False)
    signals.beat_init.connect(on_beat_init, weak=False)
    signals.worker_shutdown.connect(on_worker_stop, weak=False)
