"""What both clients share: the User-Agent, settings, default headers, calls and retry policy."""

from __future__ import annotations

from typing import Final

from api_shim.client.calls import _Calls
from api_shim.client.retrying import _RetryPolicy
from workers.version import VERSION

__version__: Final = VERSION

USER_AGENT: Final = f"conveyor-client/{VERSION}"


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
