"""The Procfile and docker-compose.yml run real commands with real settings, the same ones."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import typer
import yaml

from workers.cli import POOL_OF_KIND, cli
from workers.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def procfile() -> dict[str, str]:
    entries = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, command = line.partition(":")
            entries[name.strip()] = command.strip()
    return entries


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def conveyor_commands() -> set[str]:
    group = typer.main.get_command(cli)
    return set(getattr(group, "commands", {}))


def test_every_procfile_line_is_a_real_conveyor_command() -> None:
    known = conveyor_commands()
    entries = procfile()

    assert {"release", "worker_io", "worker_cpu"} <= set(entries)
    for name, command in entries.items():
        argv = shlex.split(command)
        assert argv[0] == "conveyor", name
        assert argv[1] in known, (name, argv)
        if argv[1] == "worker":
            assert argv[2] in POOL_OF_KIND, name


def test_compose_runs_exactly_the_procfile_commands() -> None:
    services = compose()["services"]
    commands = {name: s["command"] for name, s in services.items() if "command" in s}
    conveyor_services = {n: c for n, c in commands.items() if c.startswith("conveyor")}

    assert set(conveyor_services.values()) == set(procfile().values())
    assert conveyor_services["worker-io"] == "conveyor worker io"
    assert conveyor_services["worker-cpu"] == "conveyor worker cpu"


def test_compose_sets_only_real_settings_and_no_secret_values() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    fields = {f"CONVEYOR_{name.upper()}" for name in Settings.model_fields}

    assert set(re.findall(r"\bCONVEYOR_[A-Z_]+", text)) <= fields
    for service in compose()["services"].values():
        for name, value in (service.get("environment") or {}).items():
            if re.search("PASSWORD|SECRET|KEY", name):
                assert str(value).startswith("${"), name


def test_compose_services_wait_for_healthy_dependencies() -> None:
    services = compose()["services"]

    assert "noeviction" in services["redis"]["command"]
    assert "--appendonly yes" in services["redis"]["command"]
    for name in ("redis", "postgres"):
        assert "healthcheck" in services[name]
    for name in ("worker-io", "worker-cpu"):
        depends = services[name]["depends_on"]
        assert depends["redis"]["condition"] == "service_healthy"
        assert depends["migrate"]["condition"] == "service_completed_successfully"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
