"""What the API's routes work with, built once per process and closed on shutdown."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import redis
from redis.asyncio import Redis as AsyncRedis
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from api_shim.auth import Authenticator
from api_shim.batching import EnqueueBatcher
from api_shim.intake import JobIntake
from api_shim.metrics import ApiMetrics
from api_shim.rate_limit import SlidingWindowLimiter
from api_shim.status_counts import StatusCounts
from tasks.catalog import Catalog
from workers.blob_store import BlobStore
from workers.broker import Publisher, queue_depths
from workers.enqueue import Enqueuer
from workers.ledger.database import create_ledger_engine, create_session_factory
from workers.ledger.database_url import ensure_sqlite_directory
from workers.message_rejections import read_rejections
from workers.pool_fitness import FitnessCount, read_fitness
from workers.settings import Settings

# every outside call of a request is bounded, so a stuck dependency answers 503, not a hang
REDIS_TIMEOUT_SECONDS = 2.0
DATABASE_CONNECT_TIMEOUT_SECONDS = 3.0
DATABASE_POOL_WAIT_SECONDS = 5.0
DATABASE_STATEMENT_TIMEOUT_MS = 10_000


@dataclass(frozen=True)
class ApiServices:
    """Settings, catalog, ledger, Redis clients and the request-side components."""

    settings: Settings
    catalog: Catalog
    engine: Engine
    sessions: sessionmaker[Session]
    redis: redis.Redis
    async_redis: AsyncRedis
    enqueuer: Enqueuer
    batcher: EnqueueBatcher
    limiter: SlidingWindowLimiter | None
    authenticator: Authenticator
    intake: JobIntake
    blobs: BlobStore
    metrics: ApiMetrics
    status_counts: StatusCounts

    def queue_depths(self) -> dict[str, int]:
        """Messages waiting per queue (blocking; for the metrics scrape)."""
        return queue_depths(self.redis)

    def rejected_messages(self) -> dict[str, int]:
        """Messages the workers refused, by reason (blocking; for the metrics scrape)."""
        return read_rejections(self.redis)

    def pool_fitness(self) -> list[FitnessCount]:
        """The workers' pool-fitness counters (blocking; for the metrics scrape)."""
        return list(read_fitness(self.redis))


@contextmanager
def open_services(
    settings: Settings, catalog: Catalog, metrics: ApiMetrics
) -> Iterator[ApiServices]:
    """Build the services for one API process; close every connection on exit."""
    ensure_sqlite_directory(settings.database_url)
    engine = create_ledger_engine(
        settings.database_url,
        pool_size=settings.database_pool_size,
        connect_timeout=DATABASE_CONNECT_TIMEOUT_SECONDS,
        pool_timeout=DATABASE_POOL_WAIT_SECONDS,
        statement_timeout_ms=DATABASE_STATEMENT_TIMEOUT_MS,
        # a round trip per checkout would double the writer's; after a database restart
        # the first failing statement invalidates the pool and that request answers 503
        pre_ping=False,
    )
    sync_redis = redis.Redis.from_url(
        settings.redis_url,
        socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
        socket_timeout=REDIS_TIMEOUT_SECONDS,
    )
    async_redis = AsyncRedis.from_url(
        settings.redis_url,
        socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
        socket_timeout=REDIS_TIMEOUT_SECONDS,
    )
    rate = settings.parsed_rate_limit
    enqueuer = Enqueuer(engine, Publisher(sync_redis))
    try:
        with EnqueueBatcher(enqueuer) as batcher:
            yield ApiServices(
                settings=settings,
                catalog=catalog,
                engine=engine,
                sessions=create_session_factory(engine),
                redis=sync_redis,
                async_redis=async_redis,
                enqueuer=enqueuer,
                batcher=batcher,
                limiter=SlidingWindowLimiter(async_redis, rate) if rate else None,
                authenticator=Authenticator(settings.api_key_table),
                intake=JobIntake(catalog),
                blobs=BlobStore(settings.storage_dir),
                metrics=metrics,
                status_counts=StatusCounts(engine),
            )
    finally:
        sync_redis.close()
        engine.dispose()
