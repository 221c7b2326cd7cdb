"""Who is calling: ``Authorization: Bearer`` keys from ``CONVEYOR_API_KEYS``."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

from pydantic import SecretStr

from api_shim import errors


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


class Authenticator:
    """Maps a bearer secret to its client id, in time independent of where it matches.

    Secrets are compared as SHA-256 digests against every key, so neither the length of a
    guess nor the position of the matching key shows in the response time.
    """

    def __init__(self, keys: Mapping[str, SecretStr]) -> None:
        self._keys = [(client_id, _digest(s.get_secret_value())) for client_id, s in keys.items()]

    def client_for(self, authorization: str | None) -> str:
        """The client id for an ``Authorization`` header value; raises a 401 ``ApiError``."""
        if not authorization:
            raise errors.unauthorized("missing Authorization: Bearer <key>")
        scheme, _, credential = authorization.partition(" ")
        if scheme.lower() != "bearer" or not credential.strip():
            raise errors.unauthorized("use Authorization: Bearer <key>")
        presented = _digest(credential.strip())
        found: str | None = None
        for client_id, digest in self._keys:
            if hmac.compare_digest(presented, digest):
                found = client_id
        if found is None:
            raise errors.unauthorized("the API key is not valid")
        return found
