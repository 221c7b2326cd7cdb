"""``/v1/jobs``: enqueue one or many, read, list, cancel and retry a client's jobs."""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api_shim import errors
from api_shim.dependencies import Client, Services, json_document
from api_shim.json_response import MEDIA_TYPE, json_response
from api_shim.schemas import (
    BatchIn,
    BatchOut,
    JobIn,
    JobListOut,
    JobOut,
    Status,
    error_responses,
)
from api_shim.services import ApiServices
from workers.broker import Dispatch
from workers.enqueue import Accepted, Conflict
from workers.ledger import operator_actions, queries
from workers.ledger.database import session_scope
from workers.ledger.documents import job_document, job_row, job_with_history, jobs_documents
from workers.ledger.models import (
    JOB_ID_MAX_LENGTH,
    PRINTABLE_ASCII,
    SCHEDULE_NAME_MAX_LENGTH,
    SCHEDULE_NAME_PATTERN,
    Job,
    is_job_id,
)

logger = logging.getLogger("api_shim")
router = APIRouter(prefix="/v1", tags=["jobs"])

_ERRORS = error_responses(401, 404, 409, 413, 415, 422, 429, 503)


def _body_schema(model: type[JobIn] | type[BatchIn]) -> dict[str, Any]:
    # the body is parsed by the strict JSON reader, then this model; the spec still shows it
    # (the models themselves are added to the document's components by api_shim.app)
    reference = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {MEDIA_TYPE: {"schema": reference}}}}


def _count(services: ApiServices, accepted: Accepted) -> None:
    new = Counter(
        (job["task"], job["queue"])
        for job, replayed in zip(accepted.jobs, accepted.replayed, strict=True)
        if not replayed
    )
    for (task, queue), jobs in new.items():
        services.metrics.count_enqueued(task, queue, jobs)


def _conflict(outcome: Conflict, *, batch: bool) -> errors.ApiError:
    where = f"jobs[{outcome.index}]: " if batch else ""
    return errors.conflict(
        f"{where}idempotency key {outcome.idempotency_key!r} was used for a different request",
        {"index": outcome.index} if batch else None,
    )


@router.post(
    "/jobs",
    status_code=202,
    response_model=JobOut,
    responses={200: {"model": JobOut, "description": "idempotent replay"}, **_ERRORS},
    openapi_extra=_body_schema(JobIn),
    summary="Enqueue a job",
)
async def create_job(request: Request, client_id: Client, services: Services) -> Response:
    """Record the job, queue it, answer ``202`` with it (``200`` on an idempotent replay)."""
    document = await json_document(request)
    with errors.intake_refusals():
        submission = services.intake.single(
            document,
            client_id=client_id,
            request_id=request.state.request_id,
            header_key=request.headers.get("idempotency-key"),
        )
    outcome = await services.batcher.submit(submission)
    if isinstance(outcome, Conflict):
        raise _conflict(outcome, batch=False)
    _count(services, outcome)
    job = job_document(outcome.jobs[0])
    if outcome.replayed[0]:
        return json_response(job, 200, {"Idempotent-Replayed": "true"})
    return json_response(job, 202, {"Location": f"/v1/jobs/{job['id']}"})


@router.post(
    "/jobs/batch",
    status_code=202,
    response_model=BatchOut,
    responses=_ERRORS,
    openapi_extra=_body_schema(BatchIn),
    summary="Enqueue up to 1,000 jobs at once",
)
async def create_jobs(request: Request, client_id: Client, services: Services) -> Response:
    """All jobs are recorded, or none: one invalid item refuses the batch, naming its index."""
    if request.headers.get("idempotency-key") is not None:
        raise errors.validation_error(
            "Idempotency-Key applies to POST /v1/jobs; give each batch item an idempotency_key"
        )
    document = await json_document(request)
    with errors.intake_refusals():
        submission = services.intake.batch(
            document, client_id=client_id, request_id=request.state.request_id
        )
    outcome = await services.batcher.submit(submission)
    if isinstance(outcome, Conflict):
        raise _conflict(outcome, batch=True)
    _count(services, outcome)
    return json_response({"jobs": jobs_documents(outcome.jobs)}, 202)


@router.api_route(
    "/jobs/batch",
    methods=["GET", "HEAD", "PUT", "PATCH", "DELETE", "OPTIONS"],
    include_in_schema=False,
)
async def batch_with_another_method() -> Response:
    """``/v1/jobs/batch`` takes only POST: it is never read as the id of a job to get."""
    raise errors.method_not_allowed(["POST"])


@contextlib.contextmanager
def _controlled(job_id: str) -> Iterator[None]:
    """Turn :mod:`workers.ledger.operator_actions`' refusals into the API's errors."""
    try:
        yield
    except operator_actions.JobNotFoundError as error:
        raise errors.not_found(f"no job {job_id}", security_event=error.foreign) from None
    except operator_actions.JobStateError as error:
        raise errors.conflict(str(error)) from None


def _owned_job(session: Session, job_id: str, client_id: str) -> Job:
    job = queries.get_job(session, job_id)
    if job is None:
        raise errors.not_found(f"no job {job_id}")
    if job.client_id != client_id:
        raise errors.not_found(f"no job {job_id}", security_event=True)
    return job


JobId = Annotated[
    str,
    Path(
        min_length=1,
        max_length=JOB_ID_MAX_LENGTH,
        pattern=PRINTABLE_ASCII,
        description="The job id",
    ),
]


@router.get("/jobs/{job_id}", response_model=JobOut, responses=_ERRORS, summary="Get a job")
async def get_job(job_id: JobId, client_id: Client, services: Services) -> Response:
    """The job, with ``history``: one entry per attempt."""

    def read() -> dict[str, Any]:
        with session_scope(services.sessions) as session:
            return job_with_history(_owned_job(session, job_id, client_id))

    return json_response(await run_in_threadpool(read), 200)


def _decode_cursor(cursor: str) -> queries.PagePosition:
    try:
        created, job_id = json.loads(base64.urlsafe_b64decode(cursor.encode() + b"=="))
        when = datetime.fromisoformat(created).astimezone(UTC)
        if not isinstance(job_id, str) or not is_job_id(job_id):
            raise ValueError("bad cursor")  # noqa: TRY301 - one refusal for every malformation
    except (ValueError, TypeError, OverflowError, binascii.Error, UnicodeDecodeError):
        raise errors.validation_error(
            "cursor: not a cursor from this API", [{"loc": "cursor", "msg": "invalid cursor"}]
        ) from None
    return queries.PagePosition(when, job_id)


def _encode_cursor(position: queries.PagePosition) -> str:
    raw = json.dumps([position.created_at.isoformat(), position.job_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


#: A page of jobs ends early once its documents pass this size; ``next_cursor`` goes on.
PAGE_MAX_BYTES = 4 << 20


@router.get("/jobs", response_model=JobListOut, responses=_ERRORS, summary="List jobs")
async def list_jobs(  # noqa: PLR0917 - FastAPI passes query parameters by name
    client_id: Client,
    services: Services,
    status: Annotated[Status | None, Query(description="Only jobs in this status")] = None,
    task: Annotated[
        str | None, Query(max_length=200, pattern=PRINTABLE_ASCII, description="Only this task")
    ] = None,
    schedule: Annotated[
        str | None,
        Query(
            max_length=SCHEDULE_NAME_MAX_LENGTH,
            pattern=SCHEDULE_NAME_PATTERN,
            description="Only the jobs of this schedule of the client's",
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> Response:
    """The client's jobs, newest first; pass ``next_cursor`` back as ``cursor`` for more."""
    after = _decode_cursor(cursor) if cursor else None

    def read() -> tuple[list[dict[str, Any]], queries.PagePosition | None]:
        with services.engine.connect() as connection:
            return queries.list_jobs(
                connection,
                client_id,
                limit=limit,
                status=status,
                task=task,
                schedule=schedule,
                after=after,
                max_bytes=PAGE_MAX_BYTES,
            )

    rows, position = await run_in_threadpool(read)
    next_cursor = _encode_cursor(position) if position else None
    return json_response({"items": jobs_documents(rows), "next_cursor": next_cursor}, 200)


@router.post(
    "/jobs/{job_id}/cancel", response_model=JobOut, responses=_ERRORS, summary="Cancel a job"
)
async def cancel_job(job_id: JobId, client_id: Client, services: Services) -> Response:
    """``200`` with the cancelled job; ``409`` if it had already finished."""

    def cancel() -> dict[str, Any]:
        with session_scope(services.sessions) as session, _controlled(job_id):
            job = operator_actions.cancel(
                session, job_id, now=datetime.now(UTC), client_id=client_id
            )
            return job_document(job_row(job))

    return json_response(await run_in_threadpool(cancel), 200)


@router.post(
    "/jobs/{job_id}/retry",
    status_code=202,
    response_model=JobOut,
    responses=_ERRORS,
    summary="Replay a failed or cancelled job",
)
async def retry_job(job_id: JobId, client_id: Client, services: Services) -> Response:
    """Requeue a ``failed`` (dead-letter) or ``cancelled`` job for a fresh round of attempts."""

    def replay() -> tuple[dict[str, Any], Dispatch]:
        with session_scope(services.sessions) as session, _controlled(job_id):
            replayed = operator_actions.replay(
                session, job_id, now=datetime.now(UTC), client_id=client_id
            )
            return job_document(job_row(replayed.job)), replayed.dispatch

    document, dispatch = await run_in_threadpool(replay)
    await run_in_threadpool(services.enqueuer.publish_recorded, [dispatch])
    return json_response(document, 202, {"Location": f"/v1/jobs/{document['id']}"})
