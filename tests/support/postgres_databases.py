"""Databases of a test process's own on the test PostgreSQL server: made, migrated, dropped."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg
from psycopg import sql
from sqlalchemy import make_url

from workers.ledger import schema


@dataclass(frozen=True)
class PostgresServer:
    """The server at ``url``, a libpq URL whose database part is ignored.

    URLs are built with SQLAlchemy rather than by appending ``/name``, so that a server
    reached through a socket directory (``?host=/path``, as the embedded one is) keeps it.
    """

    url: str

    def database_url(self, name: str, *, driver: str | None = "psycopg") -> str:
        """The URL of database ``name``: SQLAlchemy's by default, libpq's with ``driver=None``."""
        url = make_url(self.url).set(database=name)
        if driver is not None:
            url = url.set(drivername=f"postgresql+{driver}")
        return url.render_as_string(hide_password=False)

    def admin_connection(self, timeout: int = 3) -> psycopg.Connection[tuple[object, ...]]:
        """An autocommit connection to the ``postgres`` database, to create and drop others."""
        return psycopg.connect(
            self.database_url("postgres", driver=None), autocommit=True, connect_timeout=timeout
        )

    def answers(self) -> bool:
        """Whether the server accepts a connection."""
        try:
            with self.admin_connection(timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    def database_names(self) -> list[str]:
        """Every database on the server."""
        with self.admin_connection() as admin:
            return [str(row[0]) for row in admin.execute("SELECT datname FROM pg_database")]

    def create_database(self, name: str) -> str:
        """Drop and create database ``name``; its SQLAlchemy URL."""
        with self.admin_connection() as admin:
            admin.execute(_drop(name))
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.database_url(name)

    def drop_database(self, name: str) -> None:
        """Drop database ``name`` and any connection still open to it."""
        with self.admin_connection() as admin:
            admin.execute(_drop(name))

    @contextmanager
    def migrated_database(self, name: str) -> Iterator[str]:
        """A fresh database ``name`` at the newest schema, dropped afterwards; its URL."""
        url = self.create_database(name)
        try:
            schema.upgrade(url)
            yield url
        finally:
            self.drop_database(name)


def _drop(name: str) -> sql.Composed:
    return sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
