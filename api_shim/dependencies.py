"""Request-scoped helpers every ``/v1`` route uses: services, the caller, the JSON body."""

from __future__ import annotations

import logging
from typing import Annotated, Any

import redis
from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api_shim import errors
from api_shim.json_body import JsonDocumentError, parse_json_document
from api_shim.services import ApiServices

logger = logging.getLogger("api_shim")

# declared for the OpenAPI document and /docs; the header is checked by Authenticator
bearer_scheme = HTTPBearer(auto_error=False, description="An API key from CONVEYOR_API_KEYS")


async def services_of(request: Request) -> ApiServices:
    """The services of this API process (async: a plain function would cost a thread hop)."""
    services: ApiServices = request.app.state.services
    return services


Services = Annotated[ApiServices, Depends(services_of)]


async def authenticated_client(
    request: Request,
    services: Services,
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)],
) -> str:
    """The calling client's id, after authentication and its rate limit."""
    client_id = services.authenticator.client_for(request.headers.get("authorization"))
    request.state.client_id = client_id
    if services.limiter is not None:
        try:
            decision = await services.limiter.hit(client_id)
        except redis.RedisError as error:
            # Redis is away: the job still goes to the ledger (the outbox relays it later),
            # so the limit is not enforced rather than refusing every call
            logger.warning(
                "rate limit not enforced: Redis does not answer",
                extra={"client_id": client_id, "reason": str(error)},
            )
        else:
            headers = decision.headers()
            request.state.rate_limit_headers = headers
            if not decision.allowed:
                raise errors.rate_limited(headers)
    return client_id


Client = Annotated[str, Depends(authenticated_client)]

_JSON_TYPES = ("application/json",)


async def json_document(request: Request) -> Any:
    """The request body as strict JSON; 415 for another content type, 422 if malformed."""
    content_type = request.headers.get("content-type")
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type not in _JSON_TYPES and not media_type.endswith("+json"):
        raise errors.unsupported_media_type(content_type)
    raw = await request.body()
    try:
        return parse_json_document(raw)
    except JsonDocumentError as error:
        raise errors.validation_error(
            f"invalid JSON body at {error.path}: {error.message}",
            [{"loc": error.path, "msg": error.message}],
        ) from None
