"""Reading the API's successful answers into documents; a malformed one is a ConveyorError."""

from __future__ import annotations

from dataclasses import replace
from typing import Final, TypeVar

import httpx
import pydantic

from api_shim.client.errors import ConveyorError
from api_shim.client.models import (
    Blob,
    Job,
    JobPage,
    Stats,
    TaskInfo,
    _BatchOut,
    _BlobOut,
    _PageOut,
)

T = TypeVar("T")

_JOB: Final = pydantic.TypeAdapter(Job)
_PAGE: Final = pydantic.TypeAdapter(_PageOut)
_BATCH: Final = pydantic.TypeAdapter(_BatchOut)
_BLOB: Final = pydantic.TypeAdapter(_BlobOut)
_TASKS: Final = pydantic.TypeAdapter(list[TaskInfo])
_STATS: Final = pydantic.TypeAdapter(Stats)


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
