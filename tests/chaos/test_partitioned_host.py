"""A second worker host cut off from Redis and the ledger for 60 s: its jobs are finished by
the other worker within the lease target, and its late outcomes, once the network heals,
are fenced off."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from tests.support.api_server import API_KEYS, running_api
from tests.support.fault_harness import POOL_SIZE
from tests.support.fault_proxy import fault_proxy
from tests.support.ledger_reads import LedgerReader
from tests.support.network_namespace import can_make_namespaces, second_host
from tests.support.polling import wait_for
from tests.support.processes import dying_with_this_process
from tests.support.redis_server import private_redis
from tests.support.workers import CONVEYOR, start_worker, worker_environment

pytestmark = [pytest.mark.long_chaos, pytest.mark.timeout(600)]

LEASE_SECONDS = 10
WORK_SECONDS = 5
CUT_SECONDS = 60
JOBS = 10


def guest_ends(log_path: Path, ids: list[str]) -> dict[str, str] | None:
    """How the cut-off worker ended each attempt, once it has ended all of them: it sent its
    outcome (``succeeded`` in its log: an outcome the ledger must fence off), or it gave the
    outcome up because the ledger did not answer (``abandoned``: the job is put back)."""
    ends: dict[str, str] = {}
    for line in log_path.read_text(errors="replace").splitlines():
        for job_id in ids:
            if f"diagnostics.echo[{job_id}] succeeded" in line:
                ends[job_id] = "sent its outcome"
            elif f'"job_id": "{job_id}"' in line and "message requeued" in line:
                ends.setdefault(job_id, "gave its outcome up")
    return ends if len(ends) == len(ids) else None


@pytest.fixture
def namespaces() -> None:
    if not can_make_namespaces():
        if os.environ.get("CI"):
            pytest.fail("network namespaces need root and ip(8), which CI has")
        pytest.skip("network namespaces need root and ip(8)")


@pytest.mark.usefixtures("namespaces")
def test_a_host_cut_off_for_a_minute_loses_its_jobs_to_the_other_and_its_outcomes_are_fenced(
    chaos_database: str, chaos_ledger: LedgerReader, tmp_path: Path
) -> None:
    database = make_url(chaos_database)
    with (
        second_host() as host,
        private_redis(tmp_path, also_bind=host.host_address) as broker,
        fault_proxy(
            database.host or "127.0.0.1", database.port or 5432, listen_host=host.host_address
        ) as ledger_for_guest,
    ):
        env = worker_environment(
            env="test", redis_url=broker.url, database_url=chaos_database, api_keys=API_KEYS,
            rate_limit="off", storage_dir=str(tmp_path), retry_scale="0.02",
            visibility_timeout="3600", worker_lease_seconds=str(LEASE_SECONDS),
            io_concurrency=str(JOBS), database_pool_size=POOL_SIZE,
        )  # fmt: skip
        guest_env = {
            **env,
            "CONVEYOR_REDIS_URL": f"redis://{host.host_address}:{broker.port}/0",
            "CONVEYOR_DATABASE_URL": database.set(
                host=host.host_address, port=ledger_for_guest.port
            ).render_as_string(hide_password=False),
        }
        guest_log = tmp_path / "guest.log"
        with guest_log.open("wb") as log:
            guest = subprocess.Popen(
                dying_with_this_process(
                    host.command(CONVEYOR, "worker", "io", "--hostname", "io-guest@test")
                ),
                env=guest_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        local = None
        try:
            with running_api(env, tmp_path / "api.log") as api, api.client() as client:
                answer = client.post(
                    "/v1/jobs/batch",
                    json={"jobs": [
                        {"task": "diagnostics.echo",
                         "args": {"value": n, "sleep_seconds": WORK_SECONDS}}
                        for n in range(JOBS)
                    ]},
                )  # fmt: skip
                ids = [job["id"] for job in answer.json()["jobs"]]

                def all_running() -> bool:
                    views = [chaos_ledger.job(job_id) for job_id in ids]
                    return all(view is not None and view.status == "running" for view in views)

                wait_for(all_running, timeout=90, what="every job running on the second host")
                host.cut()
                cut_at = time.monotonic()
                local = start_worker("io", "io-local@test", tmp_path / "local.log", env)
                for job_id in ids:
                    chaos_ledger.wait_finished(job_id, timeout=LEASE_SECONDS + 30 + 60)
                taken_over = time.monotonic() - cut_at
                time.sleep(max(0.0, cut_at + CUT_SECONDS - time.monotonic()))
                host.heal()

                # TCP retransmissions back off while the link is down: allow for them
                ends = wait_for(
                    lambda: guest_ends(guest_log, ids), timeout=240, interval=1,
                    what="the cut-off worker to end its attempts",
                )  # fmt: skip
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(guest.pid, signal.SIGKILL)
            guest.wait(10)
            if local is not None:
                local.stop()

    views = [chaos_ledger.job(job_id) for job_id in ids]
    print(f"\nhow the cut-off worker ended its attempts: {dict(Counter(ends.values()))}")
    print(
        f"\nsecond host cut off for {CUT_SECONDS} s with {JOBS} jobs running (lease "
        f"{LEASE_SECONDS} s): the other worker finished them all {taken_over:.1f} s after the "
        f"cut (target {LEASE_SECONDS + 30} s + {WORK_SECONDS} s of work)"
    )
    assert taken_over <= LEASE_SECONDS + 30 + WORK_SECONDS
    assert [view.outcomes for view in views if view] == [["lost", "succeeded"]] * JOBS
    assert {view.result["worker"] for view in views if view} == {"io-local@test"}
    assert {view.history[0].worker for view in views if view} == {"io-guest@test"}
