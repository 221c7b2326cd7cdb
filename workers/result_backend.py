"""Celery's Redis result backend, storing a task's state in one round trip instead of two.

Celery reads a task's stored meta before every write, so that a late duplicate never
overwrites a ``SUCCESS`` (``BaseKeyValueStoreBackend._store_result``): a ``GET`` and then a
``SETEX``/``PUBLISH`` pipeline, two round trips per finished job. Here the same rule runs
inside Redis as one script: the write, its publication to a waiting ``AsyncResult.get()``,
and the skip when ``SUCCESS`` is already stored.
"""

from __future__ import annotations

from typing import Any

from celery import states
from celery.backends.redis import RedisBackend
from celery.exceptions import BackendStoreError
from kombu.utils.encoding import bytes_to_str

# KEYS[1]: the task's meta key; ARGV: the encoded meta, its expiry in seconds (0: none)
_STORE_UNLESS_SUCCEEDED = """
local current = redis.call('GET', KEYS[1])
if current then
  local ok, meta = pcall(cjson.decode, current)
  if ok and type(meta) == 'table' and meta['status'] == 'SUCCESS' then
    return 0
  end
end
local expires = tonumber(ARGV[2])
if expires > 0 then
  redis.call('SETEX', KEYS[1], expires, ARGV[1])
else
  redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('PUBLISH', KEYS[1], ARGV[1])
return 1
"""


class OneTripRedisBackend(RedisBackend):
    """The Redis result backend with Celery's write rule in one server-side script."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._store_script: Any = None

    def _store_result(
        self,
        task_id: str,
        result: Any,
        state: str,
        traceback: Any = None,
        request: Any = None,
        **_: Any,
    ) -> Any:
        backend: Any = self  # the stubs lack these attributes of Celery's backends
        meta = backend._get_result_meta(
            result=result, state=state, traceback=traceback, request=request
        )
        meta["task_id"] = bytes_to_str(task_id)
        value: Any = self.encode(meta)
        if isinstance(value, str) and len(value) > backend._MAX_STR_VALUE_SIZE:
            raise BackendStoreError(f"result of {task_id} too large for the Redis backend")
        expires = backend.failure_expires if state == states.FAILURE else backend.expires
        self.ensure(self._store_unless_succeeded, (self.get_key_for_task(task_id), value, expires))
        return result

    def _store_unless_succeeded(self, key: bytes | str, value: Any, expires: Any) -> None:
        if self._store_script is None:
            self._store_script = self.client.register_script(_STORE_UNLESS_SUCCEEDED)
        seconds = int(expires or 0)  # Celery prepared it as whole seconds
        self._store_script(keys=[key], args=[value, seconds])
