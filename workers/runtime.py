"""Per-process worker resources: settings, the pool in use and the ledger engine.

The engine is created lazily in the process that uses it, so a prefork child never
inherits its parent's pooled connections.
"""

from __future__ import annotations

import functools
import os
import random
import socket
from datetime import timedelta

import redis
from celery import Celery
from sqlalchemy import Engine

from workers.blob_store import BlobStore
from workers.broker import Publisher
from workers.enqueue import Enqueuer
from workers.hub_monitor import RunningTasks
from workers.leases import LeaseKeeper, Reconciler, new_instance_id, this_process_lease
from workers.ledger.database import create_ledger_engine
from workers.ledger.database_url import ensure_sqlite_directory
from workers.ledger.group_commit import GroupCommit
from workers.message_judge import MessageJudge
from workers.process_resources import ProcessResources
from workers.result_backend import OneTripRedisBackend
from workers.retention import Retention
from workers.scheduler import Scheduler
from workers.settings import Settings

# connections a prefork child needs: one task at a time, one the task may hold itself, and
# one for its lease
_PREFORK_POOL = 3


def pool_name_of(pool_cls: object) -> str:
    """``gevent``, ``prefork``, ``solo``, ``threads`` … for a Celery pool class."""
    module = getattr(pool_cls, "__module__", "") or ""
    name = module.rsplit(".", 1)[-1]
    return {"thread": "threads"}.get(name, name or "unknown")


def _fsync_on_a_thread(fd: int) -> None:
    """``os.fsync`` on the gevent hub's thread pool: the event loop runs on meanwhile."""
    import gevent  # noqa: PLC0415 - only a gevent worker may load gevent

    gevent.get_hub().threadpool.apply(os.fsync, (fd,))


class WorkerRuntime:
    """Resources one worker process hands to the tasks it runs."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.pool = "unknown"
        self.concurrency = 1
        self.rng = random.Random()  # noqa: S311 - jitter, not secrets
        self.blobs = BlobStore(settings.storage_dir)
        self.resources = ProcessResources(settings)
        self.running_tasks = RunningTasks()
        # this start of the worker: its processes' leases begin with it
        self.instance = new_instance_id()
        self.node = self.hostname
        # jobs whose attempt this process is running now: whether its outcome is recorded
        self.jobs_in_progress: dict[str, bool] = {}
        self.lease_keeper: LeaseKeeper | None = None
        self.reconciler: Reconciler | None = None
        self.scheduler: Scheduler | None = None
        self._engine: Engine | None = None
        self._autocommit: Engine | None = None
        self._group_commit: GroupCommit | None = None
        self._pid: int | None = None
        self._enqueuer: Enqueuer | None = None
        self._redis: redis.Redis | None = None

    def adopt_worker(self, pool: str, concurrency: int, node: str | None = None) -> None:
        """Record the pool, concurrency and node name of the worker this process belongs to."""
        self.pool = pool
        self.node = node or self.node
        self.concurrency = max(1, concurrency)
        if pool == "gevent":
            self.blobs = BlobStore(self.settings.storage_dir, sync=_fsync_on_a_thread)

    def hold_lease(self) -> None:
        """Take this process's lease in the ledger and keep renewing it (it runs attempts)."""
        ttl = timedelta(seconds=self.settings.worker_lease_seconds)
        lease = this_process_lease(self.instance, self.node, self.pool, ttl)
        settle = self.reconciler.settle if self.reconciler is not None else None
        self.lease_keeper = LeaseKeeper(
            lambda: self.engine,
            lease,
            settle,
            running_here=lambda job_id: job_id in self.jobs_in_progress,
        )
        self.lease_keeper.start()

    @property
    def lease_id(self) -> str | None:
        """The lease this process's attempts run under, if it holds one."""
        keeper = self.lease_keeper
        return keeper.lease.id if keeper is not None and keeper.lease.pid == os.getpid() else None

    def database_pool_size(self) -> int:
        """Connections this process may hold: one per greenlet, up to the configured cap."""
        if self.pool == "prefork":
            return _PREFORK_POOL
        return max(_PREFORK_POOL, min(self.concurrency, self.settings.database_pool_size))

    @property
    def engine(self) -> Engine:
        """The ledger engine of this process, created on first use."""
        if self._engine is None or self._pid != os.getpid():
            self._create_engine()
        assert self._engine is not None  # noqa: S101 - set by _create_engine
        return self._engine

    @property
    def outcome_engine(self) -> Engine:
        """The engine for single-statement ledger writes: autocommit on PostgreSQL.

        Each of the worker's common ledger transitions is one atomic statement there, so a
        transaction around it would only add the BEGIN and COMMIT round trips.
        """
        engine = self.engine
        if engine.dialect.name != "postgresql":
            return engine
        if self._autocommit is None or self._autocommit.pool is not engine.pool:
            self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
        return self._autocommit

    @property
    def group_commit(self) -> GroupCommit | None:
        """Claims and successes of concurrent jobs written together: a gevent worker on
        PostgreSQL. ``None`` elsewhere (a prefork child runs one job at a time)."""
        if self.pool != "gevent" or self.engine.dialect.name != "postgresql":
            return None
        if self._group_commit is None:
            self._group_commit = GroupCommit(
                lambda: self.outcome_engine, on_forsaken_start=self._abandon
            )
        return self._group_commit

    def _abandon(self, job_id: str, attempt: int) -> None:
        """Have this process's lease keeper put back an attempt nobody here runs."""
        if self.lease_keeper is not None:
            self.lease_keeper.abandon(job_id, attempt)

    def _create_engine(self) -> None:
        if self._engine is not None and self._pid != os.getpid():
            # inherited through fork: drop the parent's connections without closing them
            self._engine.dispose(close=False)
            self._enqueuer = None
            self._redis = None
        url = self.settings.database_url
        ensure_sqlite_directory(url)
        # no pre-ping on the worker's hot path: after a server restart the first failing
        # statement invalidates the whole pool, and the base task defers that one message
        self._engine = create_ledger_engine(
            url, pool_size=self.database_pool_size(), pre_ping=False
        )
        self._pid = os.getpid()

    @property
    def enqueuer(self) -> Enqueuer:
        """Publishes ledger jobs (the outbox relay and replays), created on first use."""
        return self._clients()[0]

    @property
    def redis_client(self) -> redis.Redis:
        """This process's Redis client (the enqueuer's), created on first use."""
        return self._clients()[1]

    @functools.cached_property
    def retention(self) -> Retention:
        """This process's share of retention (:mod:`workers.retention`), made on first use."""
        return Retention(
            lambda: self.engine, lambda: self.redis_client, self.blobs, self.settings.retention
        )

    def _clients(self) -> tuple[Enqueuer, redis.Redis]:
        engine = self.engine  # first, so a forked child drops the parent's client below
        if self._enqueuer is None or self._redis is None:
            self._redis = redis.Redis.from_url(
                self.settings.redis_url, socket_connect_timeout=5, socket_timeout=30
            )
            self._enqueuer = Enqueuer(engine, Publisher(self._redis))
        return self._enqueuer, self._redis

    def reset_after_fork(self) -> None:
        """Forget the parent's engine and lease; the child creates its own on first use."""
        self.lease_keeper = None
        self.jobs_in_progress = {}
        if self._engine is not None:
            self._engine.dispose(close=False)
        self._engine = None
        self._pid = None
        self._enqueuer = None
        self._redis = None

    def close(self) -> None:
        """Release this process's lease; close its connections and shared resources."""
        if self.lease_keeper is not None and self.lease_keeper.lease.pid == os.getpid():
            self.lease_keeper.stop()
        self.lease_keeper = None
        self.resources.close()
        if self._engine is not None and self._pid == os.getpid():
            self._engine.dispose()
            if self._redis is not None:
                self._redis.close()
        self._engine = None
        self._enqueuer = None
        self._redis = None

    @property
    def hostname(self) -> str:
        """This machine's name, for node names."""
        return socket.gethostname()


class ConveyorCelery(Celery):
    """The Celery application, carrying the worker runtime its tasks use."""

    runtime: WorkerRuntime
    message_judge: MessageJudge

    def _get_backend(self) -> OneTripRedisBackend:
        """The result backend: always Redis, at ``result_backend``'s URL."""
        return OneTripRedisBackend(app=self, url=self.conf.result_backend)


def runtime_of(app: Celery) -> WorkerRuntime:
    """The runtime attached to ``app`` by :func:`workers.celery_app.create_app`."""
    runtime = getattr(app, "runtime", None)
    if not isinstance(runtime, WorkerRuntime):
        raise TypeError("this Celery app was not built by workers.celery_app.create_app")
    return runtime
