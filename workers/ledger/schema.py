"""Schema management: Alembic upgrades and downgrades of the ledger, from code."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from workers.ledger.database_url import ensure_sqlite_directory

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def alembic_config(database_url: str) -> Config:
    """An Alembic configuration for ``database_url`` using ``migrations/``."""
    config = Config(str(PROJECT_ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(PROJECT_ROOT / "migrations"))
    # percent signs in passwords would be read as interpolation by configparser
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Migrate the ledger at ``database_url`` up to ``revision``."""
    ensure_sqlite_directory(database_url)
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str = "base") -> None:
    """Migrate the ledger at ``database_url`` down to ``revision``."""
    command.downgrade(alembic_config(database_url), revision)
