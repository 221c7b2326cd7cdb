"""The Procfile and docker-compose.yml run real commands with real settings, the same ones."""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urlsplit

import pytest
import typer
import yaml  # type: ignore[import-untyped]  # no stubs installed; only safe_load is used
from celery.bin.celery import celery as celery_group
from celery.worker.control import Panel
from typer.testing import CliRunner

from conveyor.cli.main import cli
from conveyor.cli.processes import worker_command
from tasks.catalog import POOL_OF_KIND
from workers.settings import Settings

ROOT = Path(__file__).resolve().parents[2]

# honcho's (and foreman's) grammar for a process line; any other line is silently skipped
PROCFILE_LINE = re.compile(r"^([A-Za-z0-9_-]+):\s*(.+)$")
PROCESS_COMMANDS = {
    "release": "conveyor migrate",
    "api": "conveyor api",
    "worker_io": "conveyor worker io",
    "worker_cpu": "conveyor worker cpu",
    "beat": "conveyor beat",
    "flower": "conveyor flower",
}
SERVICE_OF_PROCESS = {
    "release": "migrate",
    "api": "api",
    "worker_io": "worker-io",
    "worker_cpu": "worker-cpu",
    "beat": "beat",
    "flower": "flower",
}
ONE_SHOT_SERVICES = {"migrate"}
SETTING_FIELDS = {f"CONVEYOR_{name.upper()}" for name in Settings.model_fields}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|KEY|TOKEN|AUTH", re.IGNORECASE)
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:[:?+-][^}]*)?\}")
INTERPOLATED = "INTERPOLATED"


def procfile() -> dict[str, str]:
    """Process type → command, read as honcho reads it."""
    entries: dict[str, str] = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        match = PROCFILE_LINE.match(line)
        if match:
            assert match.group(1) not in entries, f"process type {match.group(1)} twice"
            entries[match.group(1)] = match.group(2).strip()
    return entries


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def services() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose()["services"]
    return found


def conveyor_services() -> dict[str, dict[str, Any]]:
    """The services that run the Conveyor image (built from the Dockerfile)."""
    return {name: s for name, s in services().items() if "build" in s}


def argv_of(command: str | list[str]) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else [str(a) for a in command]


def environment_of(service: dict[str, Any]) -> dict[str, str]:
    """A service's ``environment:`` as a mapping, whichever of the two forms it uses."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        return dict(item.partition("=")[::2] for item in raw)
    return {name: "" if value is None else str(value) for name, value in raw.items()}


def healthcheck_argv(service: dict[str, Any]) -> list[str]:
    """The healthcheck as the argv the container runs (``$$`` is compose's literal ``$``)."""
    test = service["healthcheck"]["test"]
    if isinstance(test, str):
        return shlex.split(test.replace("$$", "$"))
    kind, *rest = test
    if kind == "CMD-SHELL":
        return shlex.split(rest[0].replace("$$", "$"))
    assert kind == "CMD", test
    return [part.replace("$$", "$") for part in rest]


def url_of(value: str) -> SplitResult:
    """``value`` split as a URL, each ``${...}`` (whose ``?`` ends a host) as ``INTERPOLATED``."""
    return urlsplit(INTERPOLATION.sub(INTERPOLATED, value))


def resolve(group: Any, argv: list[str]) -> Any:
    """The command ``argv`` reaches, its options and arguments parsed as click would.

    Raises click's own error for an unknown option or argument. Nothing is invoked. Only
    public methods are used: typer brings a click of its own, so its commands are not
    instances of ``click.Group``.
    """
    command, name, args, parent = group, argv[0], argv[1:], None
    while callable(getattr(command, "get_command", None)):
        ctx = command.make_context(name, list(args), parent=parent)
        # the group's own options (celery's -A) come first, then the subcommand's name;
        # what follows the name is left in ctx.args
        sub_name = args[len(args) - len(ctx.args) - 1]
        sub = command.get_command(ctx, sub_name)
        assert sub is not None, f"{shlex.join(argv)}: no command {sub_name!r}"
        command, name, args, parent = sub, sub_name, list(ctx.args), ctx
    command.make_context(name, list(args), parent=parent)
    return command


def check_real_command(argv: list[str]) -> None:
    """``argv`` is a real ``conveyor`` or ``celery`` command line."""
    if argv[0] == "conveyor":
        resolve(typer.main.get_command(cli), argv)
        assert CliRunner().invoke(cli, [*argv[1:], "--help"]).exit_code == 0, argv
        if argv[1] == "worker":
            assert argv[2] in POOL_OF_KIND, argv
    elif argv[0] == "celery":
        command = resolve(celery_group, argv)
        app_option = argv[argv.index("-A") + 1]
        assert importlib.util.find_spec(app_option) is not None, app_option
        if command.name in ("inspect", "control"):
            action = argv[argv.index(command.name) + 1]
            assert Panel.meta[action].type == command.name, action
    else:
        pytest.fail(f"not a conveyor or celery command: {shlex.join(argv)}")


# (a) the Procfile ------------------------------------------------------------------------


def test_procfile_has_exactly_the_six_process_types() -> None:
    assert procfile() == PROCESS_COMMANDS


def test_every_procfile_line_is_in_honchos_grammar() -> None:
    # honcho skips a line it cannot parse without a word: a typo would lose a process
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            assert PROCFILE_LINE.match(line), line


# (b) compose runs the Procfile's commands --------------------------------------------------


def test_compose_runs_exactly_the_procfile_commands() -> None:
    running = conveyor_services()

    assert set(running) == set(SERVICE_OF_PROCESS.values())
    for process, command in procfile().items():
        service = running[SERVICE_OF_PROCESS[process]]
        assert argv_of(service["command"]) == shlex.split(command), process
    assert {shlex.join(argv_of(s["command"])) for s in running.values()} == set(procfile().values())


def test_only_conveyor_services_run_conveyor() -> None:
    for name, service in services().items():
        if name not in conveyor_services():
            assert not argv_of(service.get("command", [""]))[0].startswith("conveyor"), name


# (c) every command is real ---------------------------------------------------------------


@pytest.mark.parametrize(("process", "command"), sorted(procfile().items()))
def test_every_procfile_command_is_a_real_command(process: str, command: str) -> None:
    check_real_command(shlex.split(command))


@pytest.mark.parametrize(
    "service",
    sorted(n for n, s in services().items() if "build" in s and "healthcheck" in s),
)
def test_every_conveyor_healthcheck_runs_what_the_image_has(service: str) -> None:
    argv = healthcheck_argv(services()[service])

    # python:3.11-slim plus our package: no curl, no wget
    assert argv[0] in ("python", "conveyor", "celery"), argv
    if argv[0] != "python":
        check_real_command(argv)


def test_worker_healthchecks_ping_the_workers_own_node_name() -> None:
    for kind in POOL_OF_KIND:
        argv = healthcheck_argv(services()[f"worker-{kind}"])
        command = worker_command(kind, Settings(_env_file=None), [])
        node = command[command.index("--hostname") + 1]

        assert argv[argv.index("inspect") + 1] == "ping"
        # %h is the host name, which is $HOSTNAME inside a container
        assert argv[argv.index("-d") + 1] == node.replace("%h", "$HOSTNAME"), kind


@pytest.mark.parametrize(
    ("service", "path", "setting"),
    [("api", "/healthz", "CONVEYOR_API_PORT"), ("flower", "/healthcheck", "CONVEYOR_FLOWER_PORT")],
)
def test_http_healthchecks_ask_the_port_the_service_binds(
    service: str, path: str, setting: str
) -> None:
    spec = services()[service]
    argv = healthcheck_argv(spec)
    port = environment_of(spec)[setting]

    assert argv[:2] == ["python", "-c"]
    assert "urllib.request.urlopen" in argv[2]
    assert f"http://127.0.0.1:{port}{path}" in argv[2]
    assert any(str(p).endswith(f":{port}") for p in spec["ports"]), spec["ports"]


# (d) only real settings ------------------------------------------------------------------


def test_compose_sets_only_real_settings() -> None:
    text = (ROOT / "docker-compose.yml").read_text()

    assert set(re.findall(r"\bCONVEYOR_[A-Z0-9_]+", text)) <= SETTING_FIELDS
    for name, service in services().items():
        for variable in environment_of(service):
            if variable.startswith("CONVEYOR_"):
                assert variable in SETTING_FIELDS, (name, variable)


def test_env_example_names_only_real_settings() -> None:
    text = (ROOT / ".env.example").read_text()

    assert set(re.findall(r"\bCONVEYOR_[A-Z0-9_]+", text)) <= SETTING_FIELDS


def test_env_example_documents_what_compose_interpolates() -> None:
    # compose fills ${VAR} from .env, which starts as a copy of .env.example
    wanted = set(INTERPOLATION.findall((ROOT / "docker-compose.yml").read_text()))
    documented = set(
        re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", (ROOT / ".env.example").read_text(), re.M)
    )

    assert wanted <= documented


@pytest.mark.parametrize("service", sorted(SERVICE_OF_PROCESS.values()))
def test_compose_settings_are_valid_settings(service: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("CONVEYOR_"):
            monkeypatch.delenv(name)
    values = {
        name.removeprefix("CONVEYOR_").lower(): INTERPOLATION.sub("placeholder", value)
        for name, value in environment_of(services()[service]).items()
    }

    # Settings ignores unknown names: each one must be a field for this to mean anything
    assert set(values) <= set(Settings.model_fields)
    Settings(_env_file=None, **values)  # type: ignore[arg-type]  # strings, as read from the environment


# (e) compose hygiene ---------------------------------------------------------------------


def test_redis_keeps_every_message() -> None:
    redis = services()["redis"]
    command = shlex.join(argv_of(redis["command"]))

    assert redis["image"] == "redis:7-alpine"
    assert "--appendonly yes" in command
    assert "--maxmemory-policy noeviction" in command
    assert any(str(v).endswith(":/data") for v in redis["volumes"])
    assert argv_of(redis["healthcheck"]["test"])[-2:] == ["redis-cli", "ping"]


def test_postgres_keeps_its_data_and_reports_ready() -> None:
    postgres = services()["postgres"]

    assert postgres["image"] == "postgres:15-alpine"
    assert any(str(v).endswith(":/var/lib/postgresql/data") for v in postgres["volumes"])
    assert "pg_isready" in " ".join(argv_of(postgres["healthcheck"]["test"]))


def test_every_long_running_service_is_healthchecked_or_waits_for_one() -> None:
    for name, service in services().items():
        if name in ONE_SHOT_SERVICES:
            assert service.get("restart") == "no", name
            continue
        conditions = {d["condition"] for d in (service.get("depends_on") or {}).values()}
        assert "healthcheck" in service or "service_healthy" in conditions, name


def test_depends_on_always_names_a_condition_that_can_be_met() -> None:
    every = services()
    for name, service in every.items():
        depends = service.get("depends_on") or {}
        assert isinstance(depends, dict), f"{name}: depends_on without conditions"
        for target, spec in depends.items():
            if spec["condition"] == "service_healthy":
                assert "healthcheck" in every[target], (name, target)
            else:
                assert spec["condition"] == "service_completed_successfully", (name, target)
                assert target in ONE_SHOT_SERVICES, (name, target)


def test_conveyor_services_start_on_a_migrated_database() -> None:
    for name, service in conveyor_services().items():
        depends = service["depends_on"]
        assert depends["redis"]["condition"] == "service_healthy", name
        assert depends["postgres"]["condition"] == "service_healthy", name
        if name not in ONE_SHOT_SERVICES:
            assert depends["migrate"]["condition"] == "service_completed_successfully", name


def test_flower_waits_for_both_workers_to_answer() -> None:
    depends = services()["flower"]["depends_on"]

    for worker in ("worker-io", "worker-cpu"):
        assert depends[worker]["condition"] == "service_healthy"


def test_ports_are_published_on_the_loopback_only() -> None:
    published = {}
    for name, service in services().items():
        for port in service.get("ports") or []:
            host_ip = port.get("host_ip") if isinstance(port, dict) else str(port).split(":")[0]
            assert host_ip == "127.0.0.1", (name, port)
            published[name] = port

    assert set(published) == {"api", "flower"}


def test_conveyor_urls_point_at_the_compose_services() -> None:
    postgres = environment_of(services()["postgres"])
    for name, service in conveyor_services().items():
        env = environment_of(service)
        redis_url = urlsplit(env["CONVEYOR_REDIS_URL"])
        database_url = url_of(env["CONVEYOR_DATABASE_URL"])

        assert redis_url.hostname == "redis", name
        assert database_url.hostname == "postgres", name
        assert database_url.username == postgres["POSTGRES_USER"], name
        assert database_url.path == f"/{postgres['POSTGRES_DB']}", name
        # the server's own password variable, never a literal
        assert database_url.password == INTERPOLATED, name
        assert set(INTERPOLATION.findall(env["CONVEYOR_DATABASE_URL"])) == set(
            INTERPOLATION.findall(postgres["POSTGRES_PASSWORD"])
        ), name


def test_no_secret_values_in_compose() -> None:
    for name, service in services().items():
        for variable, value in environment_of(service).items():
            if SECRET_NAME.search(variable):
                assert INTERPOLATION.fullmatch(value), (name, variable)
            password = url_of(value).password if "://" in value else None
            if password is not None:
                assert password == INTERPOLATED, (name, variable)
            assert not re.search(r"(?i)(password|secret|token|key)=", value), (name, variable)


def test_secrets_come_from_env_file_which_stays_out_of_the_image() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()

    assert ".env" in ignored
    for name, service in conveyor_services().items():
        env_file = service["env_file"]
        files = [env_file] if isinstance(env_file, str) else env_file
        assert ".env" in [f if isinstance(f, str) else f["path"] for f in files], name


def test_workers_and_api_share_the_blob_store() -> None:
    mounts = {}
    for name in ("api", "worker-io", "worker-cpu"):
        service = services()[name]
        storage_dir = environment_of(service)["CONVEYOR_STORAGE_DIR"]
        mounts[name] = next(
            str(v).split(":")[0] for v in service["volumes"] if str(v).endswith(f":{storage_dir}")
        )

    assert len(set(mounts.values())) == 1, mounts
    assert set(mounts.values()) <= set(compose()["volumes"])


def test_flower_state_is_on_a_volume() -> None:
    flower = services()["flower"]
    database = Path(environment_of(flower)["CONVEYOR_FLOWER_DB"])

    assert any(str(v).endswith(f":{database.parent}") for v in flower["volumes"])
