"""``/v1/blobs``: stream bytes into the content-addressed store, and back out.

An upload is written to a temporary file chunk by chunk, hashed on the way, and renamed
to its digest only when complete; the body is never held in memory as a whole.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from typing import Annotated

from fastapi import APIRouter, Path, Request
from fastapi.responses import Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from api_shim import errors
from api_shim.dependencies import Client, Services
from api_shim.json_response import json_response
from api_shim.schemas import BlobOut, error_responses
from workers.blob_store import (
    BLOB_ID_PATTERN,
    BlobNotFoundError,
    BlobTooLargeError,
    BlobWriter,
    InvalidBlobIdError,
    StoredBlob,
)

router = APIRouter(prefix="/v1", tags=["blobs"])

# chunks gathered before a trip to the writer thread: few hops, bounded memory
_FLUSH_BYTES = 1 << 20
_ERRORS = error_responses(401, 404, 413, 422, 429, 503)


@router.post(
    "/blobs",
    status_code=201,
    response_model=BlobOut,
    responses=_ERRORS,
    summary="Upload a blob (raw body, any content type)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/octet-stream": {
                    "schema": {"type": "string", "format": "binary", "minLength": 1}
                }
            },
        }
    },
)
async def upload_blob(request: Request, _client_id: Client, services: Services) -> Response:
    """Store the body under ``sha256:<hex>``; ``201`` with its id and size."""
    limit = services.settings.max_blob_bytes
    with ExitStack() as stack:
        writer: BlobWriter = await run_in_threadpool(
            stack.enter_context, services.blobs.writer(limit)
        )
        pending: list[bytes] = []
        pending_size = 0
        try:
            async for chunk in request.stream():
                pending.append(chunk)
                pending_size += len(chunk)
                if pending_size >= _FLUSH_BYTES:
                    await run_in_threadpool(writer.write, b"".join(pending))
                    pending, pending_size = [], 0
            if pending:
                await run_in_threadpool(writer.write, b"".join(pending))
        except BlobTooLargeError:
            raise errors.payload_too_large(limit) from None
        if writer.size == 0:
            # an empty upload is a client that lost its file, not content worth keeping
            raise errors.validation_error("body: empty; a blob has at least one byte")
        stored: StoredBlob = await run_in_threadpool(writer.commit)
    return json_response(
        {"blob": stored.blob, "size": stored.size},
        201,
        {"Location": f"/v1/blobs/{stored.blob}"},
    )


BlobId = Annotated[
    str, Path(max_length=71, pattern=BLOB_ID_PATTERN, description="sha256:<64 hex digits>")
]


@router.get(
    "/blobs/{blob}",
    responses={
        200: {"content": {"application/octet-stream": {}}, "description": "the bytes"},
        **_ERRORS,
    },
    response_class=StreamingResponse,
    summary="Download a blob",
)
async def download_blob(blob: BlobId, _client_id: Client, services: Services) -> Response:
    """The blob's bytes, streamed."""
    try:
        size = await run_in_threadpool(services.blobs.size_of, blob)
        chunks: Iterator[bytes] = services.blobs.read_chunks(blob)
    except InvalidBlobIdError as error:
        raise errors.validation_error(f"blob: {error}") from None
    except BlobNotFoundError:
        raise errors.not_found(f"no blob {blob}") from None
    return StreamingResponse(
        chunks,
        media_type="application/octet-stream",
        headers={"Content-Length": str(size), "ETag": f'"{blob}"'},
    )
