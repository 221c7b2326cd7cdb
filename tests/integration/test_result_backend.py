"""The one-round-trip result backend keeps Celery's rule: a stored SUCCESS is never replaced,
and a waiting ``AsyncResult.get()`` hears every write."""

from __future__ import annotations

import threading
import uuid

import redis
from celery import Celery, states

from workers.result_backend import OneTripRedisBackend

APP = Celery("result-backend-test", set_as_current=False)
APP.conf.update(result_serializer="json", accept_content=["json"], result_expires=600)


def backend_on(url: str) -> OneTripRedisBackend:
    return OneTripRedisBackend(app=APP, url=url)


def test_a_success_is_stored_with_its_expiry_and_never_replaced(quiet_redis_url: str) -> None:
    backend = backend_on(quiet_redis_url)
    task_id = str(uuid.uuid4())
    client = redis.Redis.from_url(quiet_redis_url)
    try:
        backend.store_result(task_id, {"n": 1}, states.STARTED)
        assert backend_on(quiet_redis_url).get_task_meta(task_id)["status"] == states.STARTED
        backend.store_result(task_id, {"n": 2}, states.SUCCESS)
        backend.store_result(task_id, ValueError("late"), states.FAILURE)  # a late duplicate

        meta = backend_on(quiet_redis_url).get_task_meta(task_id)
        assert (meta["status"], meta["result"]) == (states.SUCCESS, {"n": 2})
        assert 0 < client.ttl(backend.get_key_for_task(task_id)) <= 600
    finally:
        client.close()


def test_a_waiting_client_hears_the_result(quiet_redis_url: str) -> None:
    backend = backend_on(quiet_redis_url)
    task_id = str(uuid.uuid4())
    answer: dict[str, object] = {}

    def wait() -> None:
        answer["result"] = APP.AsyncResult(task_id, backend=backend).get(timeout=30)

    waiter = threading.Thread(target=wait)
    waiter.start()
    backend.store_result(task_id, {"done": True}, states.SUCCESS)
    waiter.join(40)
    assert answer == {"result": {"done": True}}
