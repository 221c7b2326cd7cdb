"""``webhooks.deliver``: one signed JSON POST, judged by the contract's status rules."""

from __future__ import annotations

import json
import time

import httpx
from pydantic import JsonValue

from tasks.arguments import WebhookArguments
from tasks.base import JobContext
from tasks.declaration import conveyor_task
from tasks.errors import PermanentError
from tasks.outbound_http import (
    drain,
    network_errors_as_transient,
    open_http_client,
    raise_for_status,
)
from tasks.webhook_signature import ATTEMPT_HEADER, JOB_ID_HEADER, signature_headers

# what is read of a receiver's answer before the connection is given back; the rest is dropped
_ANSWER_READ_LIMIT = 64 * 1024
# connecting should never take long; the rest of timeout_seconds is for the answer
_CONNECT_TIMEOUT_CAP = 10.0


def encode_payload(payload: dict[str, JsonValue]) -> bytes:
    """The exact bytes that are signed and sent; ``PermanentError`` for NaN or Infinity."""
    try:
        text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except ValueError as error:
        raise PermanentError(f"payload is not valid JSON: {error}") from None
    return text.encode()


def delivery_headers(
    arguments: WebhookArguments, job_id: str, attempt: int, secret: str, body: bytes
) -> dict[str, str]:
    """The caller's headers plus Conveyor's own, which always win."""
    return {
        **arguments.headers,
        "Content-Type": "application/json",
        JOB_ID_HEADER: job_id,
        ATTEMPT_HEADER: str(attempt),
        **signature_headers(secret, int(time.time()), body),
    }


def post_webhook(
    client: httpx.Client, arguments: WebhookArguments, headers: dict[str, str], body: bytes
) -> dict[str, JsonValue]:
    """POST ``body`` once; the result, or the error the retry-policy table should judge."""
    timeout = httpx.Timeout(
        arguments.timeout_seconds,
        connect=min(arguments.timeout_seconds, _CONNECT_TIMEOUT_CAP),
    )
    started = time.monotonic()
    with (
        network_errors_as_transient(arguments.url),
        client.stream(
            "POST", arguments.url, content=body, headers=headers, timeout=timeout
        ) as response,
    ):
        drain(response, limit=_ANSWER_READ_LIMIT, deadline=started + arguments.timeout_seconds)
    raise_for_status(response, arguments.url)
    elapsed_ms = round((time.monotonic() - started) * 1000, 1)
    return {"status_code": response.status_code, "elapsed_ms": elapsed_ms}


@conveyor_task("webhooks.deliver")
def deliver(context: JobContext, arguments: WebhookArguments) -> dict[str, JsonValue]:
    """Deliver the payload, signed with the deployment's webhook secret."""
    secret = context.settings.webhook_signing_secret
    if secret is None:
        raise PermanentError("CONVEYOR_WEBHOOK_SIGNING_SECRET is not set; refusing to send")
    body = encode_payload(arguments.payload)
    headers = delivery_headers(
        arguments, context.job_id, context.attempt, secret.get_secret_value(), body
    )
    with context.resources.get(open_http_client).client() as client:
        return post_webhook(client, arguments, headers, body)
