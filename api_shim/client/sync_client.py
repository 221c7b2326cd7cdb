"""ConveyorClient: the blocking client of the Conveyor API."""

from __future__ import annotations

import time
from collections.abc import Generator, Iterable, Mapping
from datetime import datetime
from typing import Any, TypeVar

import httpx

from api_shim.client.blob_streams import BlobStream
from api_shim.client.calls import _Call
from api_shim.client.client_base import _ClientBase
from api_shim.client.closing import ClosesOnExit
from api_shim.client.errors import _error_from
from api_shim.client.models import Blob, Job, JobPage, JobSpec, JobStatus, Priority, Stats, TaskInfo
from api_shim.client.retrying import _Poll
from api_shim.client.upload_body import CHUNK_SIZE, BlobData

T = TypeVar("T")


class ConveyorClient(_ClientBase, ClosesOnExit):
    """A blocking client of the Conveyor API; close it, or use it in a ``with`` block."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 10.0,
        max_retries: int = 3,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, api_key, timeout, max_retries)
        self._http = httpx.Client(
            base_url=self.base_url,
            headers=self._default_headers,
            timeout=timeout,
            transport=transport,
        )

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    # -- transport

    def _send(self, call: _Call[Any], *, stream: bool = False) -> httpx.Response:
        """The successful answer to ``call``, after the retries the policy allows."""
        attempt = 0
        while True:
            try:
                response = self._http.send(call.build(self._http), stream=stream)
            except httpx.TransportError as error:
                delay = self._policy.after_error(call, attempt, error)
                if delay is None:
                    raise call.connection_error(error) from error
            else:
                if response.is_success:
                    return response
                try:
                    response.read()
                finally:
                    response.close()
                delay = self._policy.after_response(call, attempt, response)
                if delay is None:
                    raise _error_from(response, call.request_id)
            time.sleep(delay)
            attempt += 1

    def _run(self, call: _Call[T]) -> T:
        return call.parse(self._send(call))

    # -- jobs

    def enqueue(
        self,
        task: str,
        args: Mapping[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
        priority: Priority | None = None,
        delay_seconds: float | None = None,
        run_at: datetime | None = None,
        request_id: str | None = None,
    ) -> Job:
        """Enqueue one job; ``job.replayed`` when the key had already been used for it."""
        spec = JobSpec(
            task,
            args,
            idempotency_key=idempotency_key,
            priority=priority,
            delay_seconds=delay_seconds,
            run_at=run_at,
        )
        return self._run(self._calls.enqueue(spec, request_id))

    def enqueue_many(
        self, jobs: Iterable[JobSpec | Mapping[str, Any]], *, request_id: str | None = None
    ) -> list[Job]:
        """Enqueue up to 1,000 jobs at once: all are accepted, or none."""
        return self._run(self._calls.enqueue_many(jobs, request_id))

    def get(self, job: Job | str, *, request_id: str | None = None) -> Job:
        """The job, with ``history``."""
        return self._run(self._calls.get(job, request_id))

    def wait(
        self,
        job: Job | str,
        *,
        timeout: float = 60.0,
        poll_interval: float = 0.1,
        max_interval: float = 2.0,
        request_id: str | None = None,
    ) -> Job:
        """Poll until the job has finished; :class:`WaitTimeoutError` after ``timeout`` s."""
        poll = _Poll(timeout, poll_interval, max_interval)
        while True:
            current = self.get(job, request_id=request_id)
            delay = poll.delay_after(current)
            if delay is None:
                return current
            time.sleep(delay)

    def cancel(self, job: Job | str, *, request_id: str | None = None) -> Job:
        """Cancel a job that has not finished (:class:`ConflictError` if it has)."""
        return self._run(self._calls.cancel(job, request_id))

    def retry(self, job: Job | str, *, request_id: str | None = None) -> Job:
        """Requeue a ``failed`` or ``cancelled`` job (:class:`ConflictError` otherwise)."""
        return self._run(self._calls.retry(job, request_id))

    def page(
        self,
        status: JobStatus | None = None,
        task: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
        *,
        request_id: str | None = None,
    ) -> JobPage:
        """One page of the client's jobs, newest first."""
        return self._run(self._calls.page(status, task, limit, cursor, request_id))

    def iter_jobs(
        self,
        status: JobStatus | None = None,
        task: str | None = None,
        limit: int = 50,
        *,
        request_id: str | None = None,
    ) -> Generator[Job, None, None]:
        """Every matching job, newest first, fetched ``limit`` per page as iteration goes."""
        cursor: str | None = None
        while True:
            page = self.page(status, task, limit, cursor, request_id=request_id)
            yield from page.items
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    # -- blobs, catalog, stats

    def upload_blob(self, data: BlobData, *, request_id: str | None = None) -> Blob:
        """Stream ``data`` (bytes, a binary file, or an iterable of byte chunks) to the store."""
        return self._run(self._calls.upload_blob(data, request_id))

    def download_blob(
        self, blob: Blob | str, *, chunk_size: int = CHUNK_SIZE, request_id: str | None = None
    ) -> BlobStream:
        """The blob's bytes as a stream of chunks; close it (``with``) or read it to the end."""
        response = self._send(self._calls.download_blob(blob, request_id), stream=True)
        return BlobStream(response, blob, chunk_size)

    def stats(self, *, request_id: str | None = None) -> Stats:
        """The client's jobs by status and the queue depths."""
        return self._run(self._calls.stats(request_id))

    def tasks(self, *, request_id: str | None = None) -> list[TaskInfo]:
        """The task catalog."""
        return self._run(self._calls.tasks(request_id))

    def list(
        self,
        status: JobStatus | None = None,
        task: str | None = None,
        limit: int = 50,
        *,
        request_id: str | None = None,
    ) -> Generator[Job, None, None]:
        """Same as :meth:`iter_jobs`."""
        return self.iter_jobs(status, task, limit, request_id=request_id)
