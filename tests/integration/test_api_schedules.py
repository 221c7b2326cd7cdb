"""``/v1/schedules`` end to end: real HTTP, the session's real workers firing the ticks.

The schedules belong to dora, whose jobs no other test counts, and are deleted after each
test: the session's workers would otherwise go on firing them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.integration.test_api import finished_job
from tests.support.api_server import BOB, DORA, ApiServer
from tests.support.polling import wait_for

SCHEDULE_FIELDS = {
    "name", "task", "args", "cron", "every_seconds", "timezone", "priority", "paused",
    "next_run_at", "last_run_at", "latest_jobs", "created_at", "updated_at",
}  # fmt: skip
ECHO = {"task": "diagnostics.echo", "args": {"value": "tick"}}


@pytest.fixture
def dora(api: ApiServer) -> Iterator[httpx.Client]:
    """An API client as dora; every schedule of dora's is deleted afterwards."""
    with api.client(DORA[1]) as client:
        yield client
        for schedule in client.get("/v1/schedules").json()["items"]:
            assert client.delete(f"/v1/schedules/{schedule['name']}").status_code == 204


def jobs_of_schedule(client: httpx.Client, name: str) -> list[dict[str, Any]]:
    answer = client.get("/v1/jobs", params={"schedule": name, "limit": 500})
    assert answer.status_code == 200, answer.text
    items: list[dict[str, Any]] = answer.json()["items"]
    return items


def test_put_creates_then_replaces_and_get_shows_the_schedule(dora: httpx.Client) -> None:
    created = dora.put("/v1/schedules/report", json={**ECHO, "cron": "0 6 * * 1"})
    assert created.status_code == 201, created.text
    assert created.headers["Location"] == "/v1/schedules/report"
    schedule = created.json()
    assert set(schedule) == SCHEDULE_FIELDS
    assert schedule["cron"] == "0 6 * * 1"
    assert schedule["every_seconds"] is None
    assert (schedule["timezone"], schedule["priority"], schedule["paused"]) == (
        "UTC", "normal", False,
    )  # fmt: skip
    assert schedule["next_run_at"].endswith("T06:00:00.000000Z")
    assert (schedule["last_run_at"], schedule["latest_jobs"]) == (None, [])

    replaced = dora.put(
        "/v1/schedules/report",
        json={**ECHO, "args": {"value": 2}, "cron": "0 6 * * 1", "timezone": "Asia/Tokyo"},
    )
    assert replaced.status_code == 200, replaced.text
    assert replaced.json()["args"] == {"value": 2}
    assert replaced.json()["created_at"] == schedule["created_at"]
    assert replaced.json()["next_run_at"].endswith("T21:00:00.000000Z")  # 06:00 in Tokyo

    got = dora.get("/v1/schedules/report")
    assert got.status_code == 200
    assert got.json() == replaced.json()
    assert [s["name"] for s in dora.get("/v1/schedules").json()["items"]] == ["report"]


@pytest.mark.parametrize(
    ("body", "code", "field"),
    [
        ({**ECHO, "cron": "61 * * * *"}, "validation_error", "cron"),
        ({**ECHO, "cron": "*/5 * * * *", "every_seconds": 5}, "validation_error", "cron"),
        (ECHO, "validation_error", "cron"),
        ({**ECHO, "every_seconds": 0}, "validation_error", "every_seconds"),
        ({**ECHO, "every_seconds": 1.5}, "validation_error", "every_seconds"),
        ({**ECHO, "every_seconds": 60, "timezone": "Mars/Olympus"}, "validation_error", "timezone"),
        ({**ECHO, "every_seconds": 60, "paused": "yes"}, "validation_error", "paused"),
        ({**ECHO, "every_seconds": 60, "priority": "urgent"}, "validation_error", "priority"),
        ({**ECHO, "every_seconds": 60, "name": "x"}, "validation_error", "name"),
        ({"task": "no.such", "every_seconds": 60}, "unknown_task", "task"),
        ({"task": "diagnostics.echo", "every_seconds": 60}, "validation_error", "args.value"),
    ],
)
def test_an_invalid_schedule_is_refused_naming_the_field(
    dora: httpx.Client, body: dict[str, Any], code: str, field: str
) -> None:
    answer = dora.put("/v1/schedules/refused", json=body)

    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["code"] == code
    assert error["details"][0]["loc"] == field
    assert error["message"].startswith(field)
    assert dora.get("/v1/schedules/refused").status_code == 404


def test_a_bad_name_or_body_is_refused(dora: httpx.Client) -> None:
    body = {**ECHO, "every_seconds": 60}
    assert dora.put("/v1/schedules/has%20space", json=body).status_code == 422
    assert dora.put("/v1/schedules/" + "n" * 101, json=body).status_code == 422
    as_text = {"Content-Type": "text/plain"}
    assert dora.put("/v1/schedules/x", content=b"{}", headers=as_text).status_code == 415
    as_json = {"Content-Type": "application/json"}
    assert dora.put("/v1/schedules/x", content=b"{", headers=as_json).status_code == 422


def test_another_clients_schedule_is_not_found(dora: httpx.Client, api: ApiServer) -> None:
    assert dora.put("/v1/schedules/private", json={**ECHO, "cron": "0 0 1 1 *"}).status_code == 201

    with api.client(BOB[1]) as bob:
        assert bob.get("/v1/schedules/private").status_code == 404
        assert bob.post("/v1/schedules/private/pause").status_code == 404
        assert bob.delete("/v1/schedules/private").status_code == 404
        assert "private" not in [s["name"] for s in bob.get("/v1/schedules").json()["items"]]
    assert dora.get("/v1/schedules/private").json()["paused"] is False


def test_ticks_become_jobs_that_run_and_pause_resume_delete_work(dora: httpx.Client) -> None:
    created = dora.put(
        "/v1/schedules/heartbeat", json={**ECHO, "every_seconds": 1, "priority": "high"}
    )
    assert created.status_code == 201, created.text

    def two_jobs() -> list[dict[str, Any]] | None:
        found = jobs_of_schedule(dora, "heartbeat")
        return found if len(found) >= 2 else None

    jobs = wait_for(two_jobs, timeout=30, interval=0.2, what="two ticks to become jobs")
    for job in jobs:
        assert job["schedule"] == "heartbeat"
        assert job["idempotency_key"] == f"schedule:heartbeat:{job['scheduled_for'][:19]}Z"
        assert job["priority"] == "high"
    assert len({job["idempotency_key"] for job in jobs}) == len(jobs)
    done = finished_job(dora, jobs[-1]["id"])
    assert done["status"] == "succeeded"
    assert done["result"]["value"] == "tick"

    shown = dora.get("/v1/schedules/heartbeat").json()
    assert shown["last_run_at"] is not None
    assert set(shown["latest_jobs"]) <= {job["id"] for job in jobs_of_schedule(dora, "heartbeat")}
    assert shown["latest_jobs"]

    paused = dora.post("/v1/schedules/heartbeat/pause")
    assert paused.status_code == 200, paused.text
    assert (paused.json()["paused"], paused.json()["next_run_at"]) == (True, None)
    # the pause waited for any firing holding the schedule: from now on, no new tick
    count = len(jobs_of_schedule(dora, "heartbeat"))

    resumed = dora.post("/v1/schedules/heartbeat/resume")
    assert resumed.status_code == 200
    assert resumed.json()["paused"] is False
    assert resumed.json()["next_run_at"] is not None
    wait_for(
        lambda: len(jobs_of_schedule(dora, "heartbeat")) > count,
        timeout=30, interval=0.2, what="a tick after the resume",
    )  # fmt: skip

    assert dora.delete("/v1/schedules/heartbeat").status_code == 204
    assert dora.get("/v1/schedules/heartbeat").status_code == 404
    assert dora.delete("/v1/schedules/heartbeat").status_code == 404
    assert jobs_of_schedule(dora, "heartbeat")  # its jobs stay


def test_jobs_list_filters_by_schedule_and_plain_jobs_have_none(dora: httpx.Client) -> None:
    plain = dora.post("/v1/jobs", json=ECHO).json()
    assert plain["schedule"] is None

    assert jobs_of_schedule(dora, "never-made") == []
    assert dora.get("/v1/jobs", params={"schedule": "bad name"}).status_code == 422
    every = dora.get("/v1/jobs", params={"limit": 500}).json()["items"]
    assert plain["id"] in {job["id"] for job in every}
