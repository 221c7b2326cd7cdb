"""The catalog, routing by kind, the Celery configuration and the import boundaries."""

from __future__ import annotations

import subprocess
import sys
from typing import Literal

import pytest
from celery.concurrency import get_implementation

from conveyor.cli.processes import worker_command
from tasks.catalog import ALL_SPECS, DIAGNOSTICS, build_catalog
from workers.celery_app import KindRouter, connection_cap, create_app
from workers.runtime import pool_name_of
from workers.settings import load_settings


def test_every_task_lives_under_the_folder_of_its_kind() -> None:
    for spec in ALL_SPECS.values():
        assert spec.module.startswith(f"tasks.{spec.kind}."), spec.name
        assert spec.queue == spec.kind


def test_the_router_sends_each_catalog_task_to_its_kind_and_ignores_others() -> None:
    router = KindRouter(build_catalog(diagnostics=True))

    assert router("diagnostics.spin", (), {}, {}) == {"queue": "cpu"}
    assert router("diagnostics.echo", (), {}, {}) == {"queue": "io"}
    assert router("celery.ping", (), {}, {}) is None


def test_diagnostics_leave_the_catalog_when_disabled() -> None:
    core = {"webhooks.deliver", "http.fetch", "files.digest", "images.thumbnail"}

    assert set(build_catalog(diagnostics=True)) == core | {spec.name for spec in DIAGNOSTICS}
    assert set(build_catalog(diagnostics=False)) == core


def test_the_catalog_tasks_sit_in_the_queue_of_their_pool() -> None:
    router = KindRouter(build_catalog(diagnostics=False))

    assert router("webhooks.deliver", (), {}, {}) == {"queue": "io"}
    assert router("http.fetch", (), {}, {}) == {"queue": "io"}
    assert router("files.digest", (), {}, {}) == {"queue": "cpu"}
    assert router("images.thumbnail", (), {}, {}) == {"queue": "cpu"}


def test_the_app_speaks_json_only_and_acknowledges_late() -> None:
    app = create_app(load_settings(env="test", io_concurrency=500))
    conf = app.conf

    assert conf.accept_content == ["json"] and conf.result_accept_content == ["json"]
    assert conf.task_serializer == conf.result_serializer == "json"
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.broker_transport_options["visibility_timeout"] == 3600
    assert conf.redis_max_connections == conf.broker_transport_options["max_connections"]
    assert conf.redis_max_connections == connection_cap(load_settings(io_concurrency=500)) > 500
    assert {q.name: q.routing_key for q in conf.task_queues} == {"io": "io", "cpu": "cpu"}
    assert {q.name: q.exchange.name for q in conf.task_queues} == {"io": "io", "cpu": "cpu"}
    app.close()


@pytest.mark.parametrize(
    ("kind", "pool", "queue"), [("io", "gevent", "io"), ("cpu", "prefork", "cpu")]
)
def test_worker_command_uses_the_pool_and_queue_of_its_kind(
    kind: Literal["io", "cpu"], pool: str, queue: str
) -> None:
    settings = load_settings(io_concurrency=150, cpu_concurrency=3)

    command = worker_command(kind, settings, [])

    assert command[1:6] == ["-m", "celery", "-A", "workers.app", "worker"]
    assert command[command.index("--pool") + 1] == pool
    assert command[command.index("--queues") + 1] == queue
    assert command[command.index("--hostname") + 1] == f"{kind}@%h"
    assert command[command.index("--concurrency") + 1] == ("150" if kind == "io" else "3")
    assert command[command.index("--prefetch-multiplier") + 1] == "1"


def test_worker_command_keeps_a_node_name_given_by_the_caller() -> None:
    command = worker_command("io", load_settings(), ["-n", "edge@%h"])

    assert command.count("--hostname") == 0
    assert command[-2:] == ["-n", "edge@%h"]


def test_pool_names_come_from_the_celery_pool_module() -> None:
    assert pool_name_of(get_implementation("prefork")) == "prefork"
    assert pool_name_of(get_implementation("solo")) == "solo"
    assert pool_name_of(get_implementation("threads")) == "threads"


def test_the_api_loads_neither_celery_gevent_nor_implementations() -> None:
    probe = (
        "import sys, tasks.catalog, api_shim.app, api_shim.client;"
        "api_shim.app.create_api(api_shim.app.get_settings());"
        "loaded = [m for m in ('gevent', 'celery', 'tasks.io.diagnostics',"
        " 'tasks.cpu.diagnostics', 'tasks.base', 'workers.app') if m in sys.modules];"
        "print(','.join(loaded))"
    )

    finished = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )

    assert finished.stdout.strip() == ""
