"""Building every call of the API: method, path, body, headers and whether a retry is safe."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx

from api_shim.client.errors import ConveyorConnectionError
from api_shim.client.models import Blob, Job, JobPage, JobSpec, JobStatus, Stats, TaskInfo
from api_shim.client.responses import (
    _batch,
    _blob,
    _enqueued,
    _job,
    _page,
    _response,
    _stats,
    _tasks,
)
from api_shim.client.upload_body import AsyncBlobData, _Body

T = TypeVar("T")


@dataclass(frozen=True)
class _Call(Generic[T]):
    """One API call: how to ask, whether asking again is safe, and how to read the answer."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    params: dict[str, str | int] | None = None
    json: Any = None
    body: _Body | None = None
    headers: dict[str, str] = field(default_factory=dict)
    idempotent: bool = False

    @property
    def request_id(self) -> str | None:
        return self.headers.get("X-Request-ID")

    @property
    def replayable(self) -> bool:
        return self.body is None or self.body.replayable

    def build(self, client: httpx.Client | httpx.AsyncClient) -> httpx.Request:
        """A fresh request for one attempt (a file body is rewound)."""
        content: bytes | Iterator[bytes] | AsyncIterator[bytes] | None = None
        headers = dict(self.headers)
        if self.body is not None:
            if isinstance(client, httpx.AsyncClient):
                content = self.body.async_content()
            else:
                content = self.body.sync_content()
            headers.update(self.body.headers())
        return client.build_request(
            self.method,
            self.path,
            params=self.params,
            json=self.json,
            content=content,
            headers=headers,
        )

    def connection_error(self, error: httpx.TransportError) -> ConveyorConnectionError:
        """The client's error for a request of this call that never got an answer."""
        return ConveyorConnectionError(
            f"{self.method} {self.path}: {type(error).__name__}: {error}",
            code="connection_error",
            request_id=self.request_id,
        )


def _job_id(job: Job | str) -> str:
    return quote(job.id if isinstance(job, Job) else job, safe="")


def _blob_id(blob: Blob | str) -> str:
    return quote(blob.id if isinstance(blob, Blob) else blob, safe=":")


class _Calls:
    """Builds every call of the API; shared by the blocking and the async client."""

    @staticmethod
    def _headers(request_id: str | None) -> dict[str, str]:
        return {"X-Request-ID": request_id} if request_id else {}

    def enqueue(self, spec: JobSpec, request_id: str | None) -> _Call[Job]:
        return _Call(
            "POST",
            "/v1/jobs",
            _enqueued,
            json=spec.to_document(),
            headers=self._headers(request_id),
            idempotent=spec.idempotency_key is not None,
        )

    def enqueue_many(
        self, jobs: Iterable[JobSpec | Mapping[str, Any]], request_id: str | None
    ) -> _Call[list[Job]]:
        documents = [job.to_document() if isinstance(job, JobSpec) else dict(job) for job in jobs]
        return _Call(
            "POST",
            "/v1/jobs/batch",
            _batch,
            json={"jobs": documents},
            headers=self._headers(request_id),
            # every item replays by its key, so the batch as a whole can be sent again
            idempotent=bool(documents)
            and all(d.get("idempotency_key") is not None for d in documents),
        )

    def get(self, job: Job | str, request_id: str | None) -> _Call[Job]:
        return _Call(
            "GET",
            f"/v1/jobs/{_job_id(job)}",
            _job,
            headers=self._headers(request_id),
            idempotent=True,
        )

    def cancel(self, job: Job | str, request_id: str | None) -> _Call[Job]:
        return _Call(
            "POST", f"/v1/jobs/{_job_id(job)}/cancel", _job, headers=self._headers(request_id)
        )

    def retry(self, job: Job | str, request_id: str | None) -> _Call[Job]:
        return _Call(
            "POST", f"/v1/jobs/{_job_id(job)}/retry", _job, headers=self._headers(request_id)
        )

    def page(
        self,
        status: JobStatus | None,
        task: str | None,
        limit: int,
        cursor: str | None,
        request_id: str | None,
    ) -> _Call[JobPage]:
        params: dict[str, str | int] = {"limit": limit}
        if status is not None:
            params["status"] = status
        if task is not None:
            params["task"] = task
        if cursor is not None:
            params["cursor"] = cursor
        return _Call(
            "GET",
            "/v1/jobs",
            _page,
            params=params,
            headers=self._headers(request_id),
            idempotent=True,
        )

    def upload_blob(self, data: AsyncBlobData, request_id: str | None) -> _Call[Blob]:
        body = _Body(data)
        # content-addressed: sending the same bytes twice stores them once
        return _Call(
            "POST",
            "/v1/blobs",
            _blob,
            body=body,
            headers=self._headers(request_id),
            idempotent=True,
        )

    def download_blob(self, blob: Blob | str, request_id: str | None) -> _Call[httpx.Response]:
        return _Call(
            "GET",
            f"/v1/blobs/{_blob_id(blob)}",
            _response,
            headers=self._headers(request_id),
            idempotent=True,
        )

    def stats(self, request_id: str | None) -> _Call[Stats]:
        return _Call("GET", "/v1/stats", _stats, headers=self._headers(request_id), idempotent=True)

    def tasks(self, request_id: str | None) -> _Call[list[TaskInfo]]:
        return _Call("GET", "/v1/tasks", _tasks, headers=self._headers(request_id), idempotent=True)
