"""A Python client for the Conveyor HTTP API: enqueue jobs, wait for them, move blobs.

``ConveyorClient`` blocks, ``AsyncConveyorClient`` is its asyncio twin. Both share one
request builder (``_Calls``), one retry policy and one response interpreter; only the
transport call and the way they sleep differ. Only httpx, pydantic and the standard
library are imported, so a producer needs none of the worker code.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.metadata
import math
import random
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Callable,
    Generator,
    Iterable,
    Iterator,
    Mapping,
)
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import IO, Annotated, Any, Final, Generic, Literal, Self, TypeVar, cast
from urllib.parse import quote

import httpx
import pydantic

__all__ = [
    "AsyncBlobStream",
    "AsyncConveyorClient",
    "Attempt",
    "Blob",
    "BlobStream",
    "ConflictError",
    "ConveyorClient",
    "ConveyorConnectionError",
    "ConveyorError",
    "Job",
    "JobError",
    "JobPage",
    "JobSpec",
    "NotFoundError",
    "PayloadTooLargeError",
    "RateLimitedError",
    "ServerError",
    "ServiceUnavailableError",
    "Stats",
    "TaskInfo",
    "UnauthorizedError",
    "UnknownTaskError",
    "UnsupportedMediaTypeError",
    "ValidationError",
    "WaitTimeoutError",
]

try:
    __version__ = importlib.metadata.version("conveyor")
except importlib.metadata.PackageNotFoundError:  # pragma: no cover - run from a bare checkout
    __version__ = "0.0.0"

USER_AGENT: Final = f"conveyor-client/{__version__}"
CHUNK_SIZE: Final = 64 * 1024
MAX_RETRY_DELAY: Final = 30.0  # seconds; a longer Retry-After is cut to this
BACKOFF_BASE: Final = 0.25  # seconds before the first retry when the server names no delay

JobStatus = Literal["queued", "running", "retrying", "succeeded", "failed", "cancelled"]
Priority = Literal["high", "normal", "low"]
FINISHED_STATUSES: Final[frozenset[str]] = frozenset({"succeeded", "failed", "cancelled"})

T = TypeVar("T")
_jitter = random.SystemRandom()


def _as_utc(value: datetime) -> datetime:
    # the API sends UTC with a "Z"; a naive time is taken as UTC rather than refused
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


UtcDatetime = Annotated[datetime, pydantic.AfterValidator(_as_utc)]


# --------------------------------------------------------------------------- documents


@dataclass(frozen=True)
class JobError:
    """Why a job (or one attempt) failed."""

    type: str
    message: str
    error_id: str | None = None


@dataclass(frozen=True)
class Attempt:
    """One entry of a job's ``history``."""

    number: int
    status: str
    worker: str
    pool: str
    pid: int
    started_at: UtcDatetime
    finished_at: UtcDatetime | None = None
    retry_delay_seconds: float | None = None
    error: JobError | None = None


@dataclass(frozen=True)
class Job:
    """A job as the ledger has it.

    ``history`` is ``None`` when the answer did not carry it (lists, enqueues) and one
    entry per attempt from :meth:`ConveyorClient.get`. ``replayed`` is true when the
    server answered an enqueue with an earlier job of the same idempotency key.
    """

    id: str
    task: str
    queue: str
    status: JobStatus
    args: dict[str, Any]
    priority: Priority
    attempts: int
    max_attempts: int
    idempotency_key: str | None
    request_id: str | None
    created_at: UtcDatetime
    scheduled_for: UtcDatetime | None
    started_at: UtcDatetime | None
    finished_at: UtcDatetime | None
    next_retry_at: UtcDatetime | None
    result: Any
    error: JobError | None
    history: tuple[Attempt, ...] | None = None
    replayed: bool = False

    @property
    def finished(self) -> bool:
        """Whether the job is ``succeeded``, ``failed`` or ``cancelled``."""
        return self.status in FINISHED_STATUSES


@dataclass(frozen=True)
class JobSpec:
    """One job to enqueue, for :meth:`ConveyorClient.enqueue_many` (a plain dict works too)."""

    task: str
    args: Mapping[str, Any] | None = None
    idempotency_key: str | None = None
    priority: Priority | None = None
    delay_seconds: float | None = None
    run_at: datetime | None = None

    def to_document(self) -> dict[str, Any]:
        """The JSON object ``POST /v1/jobs`` takes."""
        document: dict[str, Any] = {"task": self.task, "args": dict(self.args or {})}
        if self.idempotency_key is not None:
            document["idempotency_key"] = self.idempotency_key
        if self.priority is not None:
            document["priority"] = self.priority
        if self.delay_seconds is not None:
            document["delay_seconds"] = self.delay_seconds
        if self.run_at is not None:
            document["run_at"] = self.run_at.isoformat()
        return document


@dataclass(frozen=True)
class JobPage:
    """One page of ``GET /v1/jobs``, newest first."""

    items: tuple[Job, ...]
    next_cursor: str | None


@dataclass(frozen=True)
class Blob:
    """A stored blob: its content address ``sha256:<hex>`` and its size in bytes."""

    id: str
    size: int

    def __str__(self) -> str:
        return self.id


@dataclass(frozen=True)
class TaskInfo:
    """A catalog entry."""

    name: str
    queue: str
    description: str
    args_schema: dict[str, Any]


@dataclass(frozen=True)
class Stats:
    """The calling client's jobs by status, and every queue's depth."""

    jobs: dict[str, int]
    queues: dict[str, int]


@dataclass(frozen=True)
class _BlobOut:
    blob: str
    size: int


@dataclass(frozen=True)
class _PageOut:
    items: list[Job]
    next_cursor: str | None


@dataclass(frozen=True)
class _BatchOut:
    jobs: list[Job]


_JOB: Final = pydantic.TypeAdapter(Job)
_PAGE: Final = pydantic.TypeAdapter(_PageOut)
_BATCH: Final = pydantic.TypeAdapter(_BatchOut)
_BLOB: Final = pydantic.TypeAdapter(_BlobOut)
_TASKS: Final = pydantic.TypeAdapter(list[TaskInfo])
_STATS: Final = pydantic.TypeAdapter(Stats)


# --------------------------------------------------------------------------- errors


class ConveyorError(Exception):
    """Any failure of a Conveyor call.

    ``status`` is the HTTP status (``None`` when there was no answer), ``code`` the
    machine-readable code of the error body, ``error_id`` the id in the server's log line,
    ``request_id`` the ``X-Request-ID`` of the call and ``retry_after`` the server's
    ``Retry-After`` in seconds, when it sent one.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str = "client_error",
        error_id: str | None = None,
        details: Any = None,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.error_id = error_id
        self.details = details
        self.request_id = request_id
        self.retry_after = retry_after

    def __str__(self) -> str:
        head = f"{self.status} {self.code}" if self.status is not None else self.code
        ids = ", ".join(
            f"{name}={value}"
            for name, value in (("error_id", self.error_id), ("request_id", self.request_id))
            if value
        )
        return f"{head}: {self.message}" + (f" ({ids})" if ids else "")


class UnauthorizedError(ConveyorError):
    """401: no API key, or one the server does not know."""


class NotFoundError(ConveyorError):
    """404: no such job or blob (another client's job is not found either)."""


class ConflictError(ConveyorError):
    """409: an idempotency key reused for another request, or a job in the wrong state."""


class PayloadTooLargeError(ConveyorError):
    """413: the body is over the server's limit."""


class UnsupportedMediaTypeError(ConveyorError):
    """415: the body is not JSON."""


class ValidationError(ConveyorError):
    """422: not a valid request; ``details`` lists ``{"loc", "msg"}`` for each problem."""


class UnknownTaskError(ValidationError):
    """422 ``unknown_task``: the task is not in the catalog."""


class RateLimitedError(ConveyorError):
    """429: over the client's rate limit; ``retry_after`` says when to come back."""


class ServiceUnavailableError(ConveyorError):
    """503: Redis or the ledger does not answer; nothing was recorded."""


class ServerError(ConveyorError):
    """500 or another 5xx: a server bug; quote ``error_id``."""


class ConveyorConnectionError(ConveyorError):
    """No answer: the connection failed or timed out (``__cause__`` is the httpx error)."""


class WaitTimeoutError(ConveyorError):
    """:meth:`ConveyorClient.wait` ran out of time; ``job`` is the last state seen."""

    def __init__(self, job: Job, timeout: float) -> None:
        super().__init__(
            f"job {job.id} is still {job.status} after {timeout:g} s", code="wait_timeout"
        )
        self.job = job
        self.timeout = timeout


_ERRORS_BY_STATUS: Final[dict[int, type[ConveyorError]]] = {
    401: UnauthorizedError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    415: UnsupportedMediaTypeError,
    422: ValidationError,
    429: RateLimitedError,
    503: ServiceUnavailableError,
}


def _error_class(status: int, code: str) -> type[ConveyorError]:
    if status == 422 and code == "unknown_task":
        return UnknownTaskError
    known = _ERRORS_BY_STATUS.get(status)
    if known is not None:
        return known
    return ServerError if status >= 500 else ConveyorError


def _retry_after(response: httpx.Response) -> float | None:
    """``Retry-After`` in seconds (delta-seconds or an HTTP date), or ``None``."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        seconds = (_as_utc(when) - datetime.now(UTC)).total_seconds()
    return max(seconds, 0.0) if math.isfinite(seconds) else None


def _error_from(response: httpx.Response, request_id: str | None) -> ConveyorError:
    """The typed exception for an answer that is not a success (its body already read)."""
    status = response.status_code
    code, message, error_id, details = f"http_{status}", response.reason_phrase, None, None
    try:
        envelope = response.json()
    except ValueError:
        envelope = None
    body = envelope.get("error") if isinstance(envelope, dict) else None
    if isinstance(body, dict):
        code = str(body.get("code") or code)
        message = str(body.get("message") or message)
        error_id = str(body["error_id"]) if body.get("error_id") else None
        details = body.get("details")
    elif response.text:
        message = f"{message}: {response.text[:200]}"
    return _error_class(status, code)(
        message,
        status=status,
        code=code,
        error_id=error_id,
        details=details,
        request_id=response.headers.get("x-request-id") or request_id,
        retry_after=_retry_after(response),
    )


def _decode(adapter: pydantic.TypeAdapter[T], response: httpx.Response) -> T:
    try:
        return adapter.validate_json(response.content)
    except pydantic.ValidationError as error:
        raise ConveyorError(
            f"unexpected answer to {response.request.method} {response.request.url.path}: "
            f"{error.error_count()} problem(s), first: {error.errors()[0]['msg']}",
            status=response.status_code,
            code="invalid_response",
            request_id=response.headers.get("x-request-id"),
        ) from None


# --------------------------------------------------------------------------- requests


def _read_file(file: IO[bytes], chunk_size: int) -> Iterator[bytes]:
    while chunk := file.read(chunk_size):
        yield chunk


async def _aread_file(file: IO[bytes], chunk_size: int) -> AsyncIterator[bytes]:
    while chunk := await asyncio.to_thread(file.read, chunk_size):
        yield chunk


async def _aiterate(chunks: Iterable[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


BlobData = bytes | bytearray | memoryview | IO[bytes] | Iterable[bytes]
AsyncBlobData = BlobData | AsyncIterable[bytes]


class _Body:
    """An upload body, streamed chunk by chunk; never read into memory as a whole.

    Bytes and seekable files can be sent again (so a 429 or 503 can be retried); an
    iterator or a pipe is sent once.
    """

    def __init__(self, data: AsyncBlobData) -> None:
        if isinstance(data, str):
            raise TypeError("upload bytes, a binary file or an iterable of bytes, not str")
        self._data = data
        self._start: int | None = None
        self.length: int | None = None
        if isinstance(data, bytes | bytearray | memoryview):
            self.length = len(data)
        elif hasattr(data, "read"):
            file = cast(IO[bytes], data)
            try:
                if file.seekable():
                    self._start = file.tell()
                    self.length = file.seek(0, 2) - self._start
                    file.seek(self._start)
            except (AttributeError, OSError):
                self._start, self.length = None, None
        self.replayable = self.length is not None
        self._used = False

    def _file(self) -> IO[bytes] | None:
        if isinstance(self._data, bytes | bytearray | memoryview):
            return None
        if hasattr(self._data, "read"):
            file = cast(IO[bytes], self._data)
            if self._start is not None:
                file.seek(self._start)
            return file
        return None

    def _claim(self) -> None:
        if self._used and not self.replayable:
            raise RuntimeError("this upload body is a one-shot stream and was already sent")
        self._used = True

    def headers(self) -> dict[str, str]:
        """``Content-Type``, and ``Content-Length`` when known (a file's remaining size)."""
        headers = {"Content-Type": "application/octet-stream"}
        if self.length is not None:
            headers["Content-Length"] = str(self.length)
        return headers

    def sync_content(self) -> bytes | Iterator[bytes]:
        """The body for ``httpx.Client``."""
        self._claim()
        if isinstance(self._data, bytes | bytearray | memoryview):
            return bytes(self._data)
        file = self._file()
        if file is not None:
            return _read_file(file, CHUNK_SIZE)
        if isinstance(self._data, AsyncIterable):
            raise TypeError("the blocking client cannot send an async iterable")
        return iter(self._data)

    def async_content(self) -> bytes | AsyncIterator[bytes]:
        """The body for ``httpx.AsyncClient`` (file reads run in a thread)."""
        self._claim()
        if isinstance(self._data, bytes | bytearray | memoryview):
            return bytes(self._data)
        file = self._file()
        if file is not None:
            return _aread_file(file, CHUNK_SIZE)
        if isinstance(self._data, AsyncIterable):
            return aiter(self._data)
        return _aiterate(self._data)


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


def _job_id(job: Job | str) -> str:
    return quote(job.id if isinstance(job, Job) else job, safe="")


def _blob_id(blob: Blob | str) -> str:
    return quote(blob.id if isinstance(blob, Blob) else blob, safe=":")


def _enqueued(response: httpx.Response) -> Job:
    job = _decode(_JOB, response)
    replayed = response.status_code == 200 and (
        response.headers.get("idempotent-replayed", "").lower() == "true"
    )
    return replace(job, replayed=replayed)


def _job(response: httpx.Response) -> Job:
    return _decode(_JOB, response)


def _batch(response: httpx.Response) -> list[Job]:
    return _decode(_BATCH, response).jobs


def _page(response: httpx.Response) -> JobPage:
    page = _decode(_PAGE, response)
    return JobPage(tuple(page.items), page.next_cursor)


def _blob(response: httpx.Response) -> Blob:
    blob = _decode(_BLOB, response)
    return Blob(blob.blob, blob.size)


def _tasks(response: httpx.Response) -> list[TaskInfo]:
    return _decode(_TASKS, response)


def _stats(response: httpx.Response) -> Stats:
    return _decode(_STATS, response)


def _response(response: httpx.Response) -> httpx.Response:
    return response


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


# connection failures where the request never left: safe to send again whatever it was
_NOT_SENT: Final = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


@dataclass(frozen=True)
class _RetryPolicy:
    """When to ask again: 429 and 503 always, a lost connection only if that is safe."""

    max_retries: int

    def after_response(
        self, call: _Call[Any], attempt: int, response: httpx.Response
    ) -> float | None:
        """Seconds to wait before retrying ``response``, or ``None`` to give up."""
        if response.status_code not in (429, 503):
            return None
        if attempt >= self.max_retries or not call.replayable:
            return None
        return self._delay(attempt, _retry_after(response))

    def after_error(
        self, call: _Call[Any], attempt: int, error: httpx.TransportError
    ) -> float | None:
        """Seconds to wait before retrying after ``error``, or ``None`` to give up."""
        if attempt >= self.max_retries or not call.replayable:
            return None
        if not (call.idempotent or isinstance(error, _NOT_SENT)):
            return None
        return self._delay(attempt, None)

    @staticmethod
    def _delay(attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, MAX_RETRY_DELAY)
        backoff = min(BACKOFF_BASE * 2.0**attempt, MAX_RETRY_DELAY)
        return backoff * _jitter.uniform(0.8, 1.0)


def _connection_error(call: _Call[Any], error: httpx.TransportError) -> ConveyorConnectionError:
    return ConveyorConnectionError(
        f"{call.method} {call.path}: {type(error).__name__}: {error}",
        code="connection_error",
        request_id=call.request_id,
    )


class _Poll:
    """The schedule of :meth:`ConveyorClient.wait`: exponential backoff to a deadline."""

    def __init__(self, timeout: float, poll_interval: float, max_interval: float) -> None:
        if timeout < 0 or poll_interval <= 0 or max_interval < poll_interval:
            raise ValueError("need timeout >= 0 and 0 < poll_interval <= max_interval")
        self._timeout = timeout
        self._deadline = time.monotonic() + timeout
        self._interval = poll_interval
        self._max_interval = max_interval

    def delay_after(self, job: Job) -> float | None:
        """``None`` once ``job`` has finished, else the pause before the next look."""
        if job.finished:
            return None
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise WaitTimeoutError(job, self._timeout)
        delay = min(self._interval, remaining)
        self._interval = min(self._interval * 2, self._max_interval)
        return delay


class _Digest:
    """Checks downloaded bytes against a ``sha256:<hex>`` blob id."""

    def __init__(self, blob: Blob | str, response: httpx.Response) -> None:
        blob_id = blob.id if isinstance(blob, Blob) else blob
        self._expected = blob_id.removeprefix("sha256:") if blob_id.startswith("sha256:") else None
        self._hash = hashlib.sha256()
        self._response = response

    def update(self, chunk: bytes) -> bytes:
        self._hash.update(chunk)
        return chunk

    def check(self) -> None:
        if self._expected is not None and self._hash.hexdigest() != self._expected:
            raise ConveyorError(
                f"downloaded bytes do not match sha256:{self._expected}",
                status=self._response.status_code,
                code="integrity_error",
                request_id=self._response.headers.get("x-request-id"),
            )


def _content_length(response: httpx.Response) -> int | None:
    value = response.headers.get("content-length")
    return int(value) if value is not None and value.isdigit() else None


# --------------------------------------------------------------------------- blob streams


class BlobStream(Iterator[bytes]):
    """A blob's bytes as they arrive; closes its response when exhausted or closed.

    Use it as a context manager (or exhaust it) so that the connection is released. At the
    end the bytes are checked against the blob's sha256.
    """

    def __init__(self, response: httpx.Response, blob: Blob | str, chunk_size: int) -> None:
        self._response = response
        self._chunks = response.iter_bytes(chunk_size)
        self._digest = _Digest(blob, response)
        self.size = _content_length(response)

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> bytes:
        try:
            return self._digest.update(next(self._chunks))
        except StopIteration:
            self.close()
            self._digest.check()
            raise
        except httpx.TransportError as error:
            self.close()
            raise ConveyorConnectionError(
                f"download interrupted: {error}", code="connection_error"
            ) from error

    def close(self) -> None:
        """Release the connection (idempotent)."""
        if isinstance(self._chunks, Generator):
            self._chunks.close()
        self._response.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncBlobStream(AsyncIterator[bytes]):
    """:class:`BlobStream` for the async client (``async for`` / ``async with``)."""

    def __init__(self, response: httpx.Response, blob: Blob | str, chunk_size: int) -> None:
        self._response = response
        self._chunks = response.aiter_bytes(chunk_size)
        self._digest = _Digest(blob, response)
        self.size = _content_length(response)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> bytes:
        try:
            return self._digest.update(await anext(self._chunks))
        except StopAsyncIteration:
            await self.aclose()
            self._digest.check()
            raise
        except httpx.TransportError as error:
            await self.aclose()
            raise ConveyorConnectionError(
                f"download interrupted: {error}", code="connection_error"
            ) from error

    async def aclose(self) -> None:
        """Release the connection (idempotent)."""
        if isinstance(self._chunks, AsyncGenerator):
            await self._chunks.aclose()
        await self._response.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        await self.aclose()


# --------------------------------------------------------------------------- clients


class _ClientBase:
    """What both clients share: settings, default headers, calls and retry policy."""

    def __init__(self, base_url: str, api_key: str, timeout: float, max_retries: int) -> None:
        if not api_key:
            raise ValueError("api_key is empty")
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        self.base_url = base_url.rstrip("/")
        self._calls = _Calls()
        self._policy = _RetryPolicy(max_retries)
        self._timeout = timeout
        self._default_headers = {
            "Authorization": f"Bearer {api_key}",
            "User-Agent": USER_AGENT,
            "Accept": "application/json",
        }

    def __repr__(self) -> str:  # never the key
        return f"{type(self).__name__}({self.base_url!r})"


class ConveyorClient(_ClientBase):
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

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self.close()

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
                    raise _connection_error(call, error) from error
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


class AsyncConveyorClient(_ClientBase):
    """The asyncio twin of :class:`ConveyorClient`; close it, or use ``async with``."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 10.0,
        max_retries: int = 3,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, api_key, timeout, max_retries)
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=self._default_headers,
            timeout=timeout,
            transport=transport,
        )

    async def aclose(self) -> None:
        """Close the connections."""
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- transport

    async def _send(self, call: _Call[Any], *, stream: bool = False) -> httpx.Response:
        """The successful answer to ``call``, after the retries the policy allows."""
        attempt = 0
        while True:
            try:
                response = await self._http.send(call.build(self._http), stream=stream)
            except httpx.TransportError as error:
                delay = self._policy.after_error(call, attempt, error)
                if delay is None:
                    raise _connection_error(call, error) from error
            else:
                if response.is_success:
                    return response
                try:
                    await response.aread()
                finally:
                    await response.aclose()
                delay = self._policy.after_response(call, attempt, response)
                if delay is None:
                    raise _error_from(response, call.request_id)
            await asyncio.sleep(delay)
            attempt += 1

    async def _run(self, call: _Call[T]) -> T:
        return call.parse(await self._send(call))

    # -- jobs

    async def enqueue(
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
        return await self._run(self._calls.enqueue(spec, request_id))

    async def enqueue_many(
        self, jobs: Iterable[JobSpec | Mapping[str, Any]], *, request_id: str | None = None
    ) -> list[Job]:
        """Enqueue up to 1,000 jobs at once: all are accepted, or none."""
        return await self._run(self._calls.enqueue_many(jobs, request_id))

    async def get(self, job: Job | str, *, request_id: str | None = None) -> Job:
        """The job, with ``history``."""
        return await self._run(self._calls.get(job, request_id))

    async def wait(
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
            current = await self.get(job, request_id=request_id)
            delay = poll.delay_after(current)
            if delay is None:
                return current
            await asyncio.sleep(delay)

    async def cancel(self, job: Job | str, *, request_id: str | None = None) -> Job:
        """Cancel a job that has not finished (:class:`ConflictError` if it has)."""
        return await self._run(self._calls.cancel(job, request_id))

    async def retry(self, job: Job | str, *, request_id: str | None = None) -> Job:
        """Requeue a ``failed`` or ``cancelled`` job (:class:`ConflictError` otherwise)."""
        return await self._run(self._calls.retry(job, request_id))

    async def page(
        self,
        status: JobStatus | None = None,
        task: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
        *,
        request_id: str | None = None,
    ) -> JobPage:
        """One page of the client's jobs, newest first."""
        return await self._run(self._calls.page(status, task, limit, cursor, request_id))

    async def iter_jobs(
        self,
        status: JobStatus | None = None,
        task: str | None = None,
        limit: int = 50,
        *,
        request_id: str | None = None,
    ) -> AsyncGenerator[Job, None]:
        """Every matching job, newest first, fetched ``limit`` per page as iteration goes."""
        cursor: str | None = None
        while True:
            page = await self.page(status, task, limit, cursor, request_id=request_id)
            for job in page.items:
                yield job
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    # -- blobs, catalog, stats

    async def upload_blob(self, data: AsyncBlobData, *, request_id: str | None = None) -> Blob:
        """Stream ``data`` (bytes, a binary file, or a sync or async iterable of chunks)."""
        return await self._run(self._calls.upload_blob(data, request_id))

    async def download_blob(
        self, blob: Blob | str, *, chunk_size: int = CHUNK_SIZE, request_id: str | None = None
    ) -> AsyncBlobStream:
        """The blob's bytes as an async stream; close it (``async with``) or read it all."""
        response = await self._send(self._calls.download_blob(blob, request_id), stream=True)
        return AsyncBlobStream(response, blob, chunk_size)

    async def stats(self, *, request_id: str | None = None) -> Stats:
        """The client's jobs by status and the queue depths."""
        return await self._run(self._calls.stats(request_id))

    async def tasks(self, *, request_id: str | None = None) -> list[TaskInfo]:
        """The task catalog."""
        return await self._run(self._calls.tasks(request_id))

    def list(
        self,
        status: JobStatus | None = None,
        task: str | None = None,
        limit: int = 50,
        *,
        request_id: str | None = None,
    ) -> AsyncGenerator[Job, None]:
        """Same as :meth:`iter_jobs` (``async for job in client.list(...)``)."""
        return self.iter_jobs(status, task, limit, request_id=request_id)
