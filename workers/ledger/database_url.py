"""The ledger's database URLs: which database they name, and where a SQLite file lives."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import make_url

_POSTGRESQL = "postgresql+psycopg://"
_POSTGRESQL_ALIASES = ("postgres://", "postgresql://", "postgresql+psycopg2://")
_SQLITE = "sqlite://"


def normalise(url: str) -> str:
    """Point every PostgreSQL URL at the psycopg 3 driver."""
    for prefix in _POSTGRESQL_ALIASES:
        if url.startswith(prefix):
            return _POSTGRESQL + url[len(prefix) :]
    return url


def is_supported(url: str) -> bool:
    """Whether ``url`` (normalised) names a SQLite or a psycopg 3 PostgreSQL database."""
    return url.startswith((_SQLITE, _POSTGRESQL))


def is_sqlite(url: str) -> bool:
    """Whether ``url`` names a SQLite database."""
    return url.startswith("sqlite")


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite ``url``; ``None`` for in-memory SQLite or another database."""
    if not is_sqlite(url):
        return None
    database = make_url(url).database
    if not database or database == ":memory:":
        return None
    return Path(database)


def missing_sqlite_file(url: str) -> Path | None:
    """The SQLite file ``url`` names, when it does not exist (yet)."""
    path = sqlite_file(url)
    return path if path is not None and not path.exists() else None


def ensure_sqlite_directory(url: str) -> None:
    """Create the folder of a SQLite file, so that SQLite can create the file in it."""
    path = sqlite_file(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)


def with_absolute_sqlite_path(url: str) -> str:
    """``url``, with a relative SQLite file made absolute, so that the URL names the same
    database from any directory; other URLs as they are."""
    path = sqlite_file(url)
    if path is None or path.is_absolute():
        return url
    return make_url(url).set(database=str(path.resolve())).render_as_string(hide_password=False)
