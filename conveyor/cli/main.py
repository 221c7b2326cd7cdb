"""The ``conveyor`` command: every subcommand, put together from the modules that own them."""

from __future__ import annotations

import typer

from conveyor.cli.check import check
from conveyor.cli.context import EXIT_CODES_HELP
from conveyor.cli.enqueue import enqueue
from conveyor.cli.flower import flower
from conveyor.cli.jobs import jobs_cli
from conveyor.cli.local_stack import demo, dev
from conveyor.cli.processes import api, beat, migrate, worker
from conveyor.cli.schedules import schedules_cli

cli = typer.Typer(
    name="conveyor",
    help="Conveyor: reliable background jobs on Celery, Redis and a job ledger.",
    epilog=EXIT_CODES_HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# options after these commands' own go to Celery as they are
_PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True}
cli.command(context_settings=_PASS_THROUGH)(worker)
cli.command(context_settings=_PASS_THROUGH)(beat)
for command in (api, migrate, check, enqueue, dev, demo):
    cli.command()(command)
cli.add_typer(jobs_cli)
cli.add_typer(schedules_cli)
cli.command()(flower)


def main() -> None:
    """Console-script entry point."""
    cli()


if __name__ == "__main__":
    main()
