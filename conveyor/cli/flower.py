"""``conveyor flower``: Celery's Flower on our app, behind basic auth, with persistent state.

Secrets stay off the command line, where ``ps`` shows them to every user: the login goes
to Flower through ``FLOWER_BASIC_AUTH`` and the broker URL through our settings.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from conveyor.cli.context import ExitCode, command_settings, refuse
from workers.settings import Settings

#: The variable Flower reads its ``--basic-auth`` option from.
FLOWER_AUTH_VARIABLE = "FLOWER_BASIC_AUTH"


def flower_login(settings: Settings) -> str:
    """The ``user:password`` Flower accepts; refuses (exit 2) a missing or unusable one."""
    if settings.flower_basic_auth is None:
        refuse(
            ExitCode.USAGE,
            "CONVEYOR_FLOWER_BASIC_AUTH is not set; Flower needs a user:password to start",
        )
    login = settings.flower_basic_auth.get_secret_value()
    if "," in login:
        # Flower reads the variable as a comma-separated list of logins
        refuse(ExitCode.USAGE, "CONVEYOR_FLOWER_BASIC_AUTH: Flower cannot take a ',' in a login")
    return login


def flower_argv(host: str, port: int, database: Path) -> list[str]:
    """The ``celery flower`` command line: no secret is on it."""
    return [
        sys.executable, "-m", "celery", "-A", "workers.app", "flower",
        f"--address={host}",
        f"--port={port}",
        "--persistent=True",
        f"--db={database}",
    ]  # fmt: skip


def flower(
    host: Annotated[
        str | None,
        typer.Option(help="address to bind (default: CONVEYOR_FLOWER_HOST, else 127.0.0.1)"),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(
            min=1, max=65535, help="port to listen on (default: CONVEYOR_FLOWER_PORT, else 5555)"
        ),
    ] = None,
) -> None:
    """Run Flower, Celery's monitor, with basic auth from CONVEYOR_FLOWER_BASIC_AUTH.

    Refuses to start (exit 2) without that setting. Task history is kept in
    CONVEYOR_FLOWER_DB (default ./var/flower.db) across restarts; Prometheus metrics are
    Flower's own, at /metrics (served without the login, like /healthcheck).
    """
    settings = command_settings()
    login = flower_login(settings)
    settings.flower_db.parent.mkdir(parents=True, exist_ok=True)
    command = flower_argv(
        host or settings.flower_host, port or settings.flower_port, settings.flower_db
    )
    # inherited through exec; Flower reads it as its --basic-auth option
    os.environ[FLOWER_AUTH_VARIABLE] = login
    # exec: SIGTERM reaches Flower itself, which saves its state and exits
    os.execv(sys.executable, command)  # noqa: S606 - fixed argv, no shell
