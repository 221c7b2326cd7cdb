"""The SSRF guard of outgoing HTTP: which addresses a task may connect to.

The check happens where the socket is opened: the host is resolved once, every address
it resolves to is checked, and the connection goes to one of those very addresses, so a
DNS answer that changes between the check and the connect (rebinding) cannot slip through.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import httpcore

from tasks.errors import PermanentError, TransientError

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
#: ``(host, port)`` → the addresses to try, in order.
Resolver = Callable[[str, int], list[str]]


class BlockedAddressError(PermanentError):
    """The URL leads to an address outgoing requests may not reach."""


def system_resolver(host: str, port: int) -> list[str]:
    """The addresses ``host`` resolves to (each once, in the resolver's order)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        # NXDOMAIN and SERVFAIL look alike here; both may heal, so both are transient
        raise TransientError(f"cannot resolve {host!r}: {error.strerror}") from None
    addresses: list[str] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        address = str(sockaddr[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    # an IPv6 address that carries an IPv4 one reaches that IPv4 host
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    return None


def address_class(address: IpAddress) -> str | None:
    """Why ``address`` is not public (``"loopback"``, ``"private"`` …), or ``None``."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            return address_class(embedded)
    checks = (
        ("unspecified", address.is_unspecified),
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("site-local", isinstance(address, ipaddress.IPv6Address) and address.is_site_local),
        ("private", address.is_private),
        ("reserved", address.is_reserved),
        # shared address space (100.64.0.0/10), documentation ranges and the like
        ("non-global", not address.is_global),
    )
    return next((name for name, refused in checks if refused), None)


@dataclass(frozen=True)
class AddressGuard:
    """Resolves hosts and refuses non-public addresses unless private networks are allowed."""

    allow_private: bool
    resolver: Resolver = field(default=system_resolver)

    def checked_addresses(self, host: str, port: int) -> list[str]:
        """The addresses of ``host`` that may be connected to; refuses the host otherwise.

        A host with any refused address is refused as a whole: which of its addresses a
        connection would reach is not ours to choose.
        """
        host = host.strip("[]")
        try:
            addresses = [str(ipaddress.ip_address(host))]
        except ValueError:
            addresses = self.resolver(host, port)
        if not addresses:
            raise TransientError(f"{host!r} resolved to no address")
        if not self.allow_private:
            for address in addresses:
                refused = address_class(ipaddress.ip_address(address.split("%", 1)[0]))
                if refused is not None:
                    raise BlockedAddressError(
                        f"{host} resolves to {address}, a {refused} address; outgoing "
                        "requests to private networks are not allowed "
                        "(CONVEYOR_ALLOW_PRIVATE_NETWORKS)"
                    )
        return addresses


class GuardedNetworkBackend(httpcore.NetworkBackend):
    """An httpcore network backend that connects only to addresses the guard approved."""

    def __init__(self, guard: AddressGuard, inner: httpcore.NetworkBackend | None = None) -> None:
        self._guard = guard
        self._inner = inner if inner is not None else httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        """Connect to the first approved address of ``host`` that answers."""
        options = list(socket_options or ())
        last_error: httpcore.ConnectError | httpcore.ConnectTimeout | None = None
        for address in self._guard.checked_addresses(host, port):
            try:
                return self._inner.connect_tcp(address, port, timeout, local_address, options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as error:
                last_error = error
        assert last_error is not None  # noqa: S101 - checked_addresses is never empty
        raise last_error

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        """Refused: outgoing requests go over TCP only."""
        raise BlockedAddressError("outgoing requests may not use unix sockets")

    def sleep(self, seconds: float) -> None:
        """Sleep (used by httpcore between retries of a connect)."""
        self._inner.sleep(seconds)
