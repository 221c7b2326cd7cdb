"""The SSRF guard: address classes, the resolving guard and the httpcore network backend."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from typing import Any

import httpcore
import pytest

from tasks.errors import PermanentError, TransientError
from tasks.network_guard import (
    AddressGuard,
    BlockedAddressError,
    GuardedNetworkBackend,
    address_class,
    system_resolver,
)


class RecordingResolver:
    """A fake DNS: fixed answers per host, every question recorded."""

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers
        self.questions: list[tuple[str, int]] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.questions.append((host, port))
        return list(self.answers.get(host, []))


class FakeStream(httpcore.NetworkStream):
    def __init__(self, address: str) -> None:
        self.address = address


class FakeBackend(httpcore.NetworkBackend):
    """An inner backend that records connects and refuses the addresses it is told to."""

    def __init__(self, failures: dict[str, Exception] | None = None) -> None:
        self.failures = failures or {}
        self.connects: list[dict[str, Any]] = []
        self.sleeps: list[float] = []

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        self.connects.append(
            {
                "host": host,
                "port": port,
                "timeout": timeout,
                "local_address": local_address,
                "socket_options": socket_options,
            }
        )
        if host in self.failures:
            raise self.failures[host]
        return FakeStream(host)

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)


# --- address_class ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("0.0.0.0", "unspecified"),  # noqa: S104 - an address to judge, not to bind
        ("::", "unspecified"),
        ("127.0.0.1", "loopback"),
        ("127.255.0.9", "loopback"),
        ("::1", "loopback"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("10.0.0.1", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("fc00::1", "private"),
        ("100.64.0.1", "non-global"),
    ],
)
def test_address_class_names_why_an_address_is_not_public(address: str, expected: str) -> None:
    assert address_class(ipaddress.ip_address(address)) == expected


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped
        ("::ffff:169.254.169.254", "link-local"),
        ("::ffff:10.0.0.1", "private"),
        ("2002:7f00:1::", "loopback"),  # 6to4 of 127.0.0.1
        ("2002:a00:1::", "private"),  # 6to4 of 10.0.0.1
        # Teredo stores the client address inverted: ~127.0.0.1 is 0x80fffffe
        ("2001:0:4136:e378:8000:63bf:80ff:fffe", "loopback"),
    ],
)
def test_address_class_judges_the_ipv4_host_inside_an_ipv6_address(
    address: str, expected: str
) -> None:
    assert address_class(ipaddress.ip_address(address)) == expected


@pytest.mark.parametrize(
    "address",
    [
        "8.8.8.8",
        "93.184.216.34",
        "1.1.1.1",
        "2606:4700:4700::1111",
        "::ffff:8.8.8.8",
        "2002:808:808::",  # 6to4 of 8.8.8.8
    ],
)
def test_public_addresses_have_no_class(address: str) -> None:
    assert address_class(ipaddress.ip_address(address)) is None


# --- system_resolver -------------------------------------------------------------------------


def test_system_resolver_lists_each_address_once_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[tuple[object, ...]] = []

    def fake_getaddrinfo(host: str, port: int, *args: object, **kwargs: object) -> list[Any]:
        asked.append((host, port, kwargs.get("type")))
        stream = socket.SOCK_STREAM
        return [
            (socket.AF_INET6, stream, 6, "", ("2606:4700::1", port, 0, 0)),
            (socket.AF_INET, stream, 6, "", ("93.184.216.34", port)),
            (socket.AF_INET6, stream, 6, "", ("2606:4700::1", port, 0, 0)),
            (socket.AF_INET, stream, 6, "", ("93.184.216.34", port)),
        ]

    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)

    assert system_resolver("example.test", 443) == ["2606:4700::1", "93.184.216.34"]
    assert asked == [("example.test", 443, socket.SOCK_STREAM)]


def test_system_resolver_failure_is_transient(monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_getaddrinfo(*args: object, **kwargs: object) -> list[Any]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", failing_getaddrinfo)

    with pytest.raises(TransientError, match=r"cannot resolve 'nowhere\.test'") as caught:
        system_resolver("nowhere.test", 80)
    assert caught.value.__suppress_context__


def test_system_resolver_resolves_localhost() -> None:
    addresses = system_resolver("localhost", 80)

    assert {"127.0.0.1", "::1"} & set(addresses)


# --- AddressGuard -----------------------------------------------------------------------


def test_guard_returns_public_addresses_in_resolver_order() -> None:
    resolver = RecordingResolver({"example.test": ["93.184.216.34", "2606:4700::1"]})
    guard = AddressGuard(allow_private=False, resolver=resolver)

    assert guard.checked_addresses("example.test", 8080) == ["93.184.216.34", "2606:4700::1"]
    assert resolver.questions == [("example.test", 8080)]


def test_guard_refuses_a_host_if_any_of_its_addresses_is_private() -> None:
    resolver = RecordingResolver({"mixed.test": ["93.184.216.34", "10.0.0.1"]})
    guard = AddressGuard(allow_private=False, resolver=resolver)

    with pytest.raises(
        BlockedAddressError, match=r"mixed\.test resolves to 10\.0\.0\.1, a private"
    ):
        guard.checked_addresses("mixed.test", 80)


def test_guard_allows_private_addresses_when_told_to() -> None:
    resolver = RecordingResolver({"intranet.test": ["10.0.0.1", "127.0.0.1"]})
    guard = AddressGuard(allow_private=True, resolver=resolver)

    assert guard.checked_addresses("intranet.test", 80) == ["10.0.0.1", "127.0.0.1"]


def test_guard_does_not_resolve_an_ip_literal() -> None:
    resolver = RecordingResolver({})
    guard = AddressGuard(allow_private=False, resolver=resolver)

    assert guard.checked_addresses("93.184.216.34", 80) == ["93.184.216.34"]
    with pytest.raises(BlockedAddressError, match="loopback"):
        guard.checked_addresses("127.0.0.1", 80)
    assert resolver.questions == []


def test_guard_strips_brackets_from_an_ipv6_literal() -> None:
    guard = AddressGuard(allow_private=False, resolver=RecordingResolver({}))

    with pytest.raises(BlockedAddressError, match="loopback"):
        guard.checked_addresses("[::1]", 80)
    assert guard.checked_addresses("[2606:4700::1]", 80) == ["2606:4700::1"]


def test_guard_refuses_a_scoped_link_local_address() -> None:
    resolver = RecordingResolver({"scoped.test": ["fe80::1%eth0"]})
    guard = AddressGuard(allow_private=False, resolver=resolver)

    with pytest.raises(BlockedAddressError, match="link-local"):
        guard.checked_addresses("scoped.test", 80)


def test_guard_treats_an_empty_answer_as_transient() -> None:
    guard = AddressGuard(allow_private=True, resolver=RecordingResolver({}))

    with pytest.raises(TransientError, match="resolved to no address"):
        guard.checked_addresses("empty.test", 80)


def test_blocked_address_error_is_permanent() -> None:
    assert issubclass(BlockedAddressError, PermanentError)


# --- GuardedNetworkBackend ---------------------------------------------------------------


def backend_for(
    answers: dict[str, list[str]], inner: FakeBackend, *, allow_private: bool = False
) -> GuardedNetworkBackend:
    guard = AddressGuard(allow_private=allow_private, resolver=RecordingResolver(answers))
    return GuardedNetworkBackend(guard, inner)


def test_backend_connects_to_the_checked_address_not_the_host_name() -> None:
    inner = FakeBackend()
    backend = backend_for({"example.test": ["93.184.216.34"]}, inner)

    stream = backend.connect_tcp("example.test", 443, timeout=2.5)

    assert isinstance(stream, FakeStream)
    assert stream.address == "93.184.216.34"
    assert [(c["host"], c["port"], c["timeout"]) for c in inner.connects] == [
        ("93.184.216.34", 443, 2.5)
    ]


def test_backend_passes_local_address_and_socket_options_through() -> None:
    inner = FakeBackend()
    backend = backend_for({"example.test": ["93.184.216.34"]}, inner)
    option = (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)

    backend.connect_tcp("example.test", 80, local_address="192.0.2.7", socket_options=[option])

    assert inner.connects[0]["local_address"] == "192.0.2.7"
    assert list(inner.connects[0]["socket_options"]) == [option]


def test_backend_tries_the_next_address_when_one_does_not_answer() -> None:
    inner = FakeBackend({"2606:4700::1": httpcore.ConnectError("unreachable")})
    backend = backend_for({"example.test": ["2606:4700::1", "93.184.216.34"]}, inner)

    stream = backend.connect_tcp("example.test", 80)

    assert isinstance(stream, FakeStream)
    assert stream.address == "93.184.216.34"
    assert [c["host"] for c in inner.connects] == ["2606:4700::1", "93.184.216.34"]


def test_backend_raises_the_last_error_when_no_address_answers() -> None:
    last = httpcore.ConnectTimeout("second timed out")
    inner = FakeBackend(
        {"2606:4700::1": httpcore.ConnectError("first refused"), "93.184.216.34": last}
    )
    backend = backend_for({"example.test": ["2606:4700::1", "93.184.216.34"]}, inner)

    with pytest.raises(httpcore.ConnectTimeout) as caught:
        backend.connect_tcp("example.test", 80)
    assert caught.value is last


def test_backend_never_connects_to_a_refused_host() -> None:
    inner = FakeBackend()
    backend = backend_for({"mixed.test": ["93.184.216.34", "10.0.0.1"]}, inner)

    with pytest.raises(BlockedAddressError):
        backend.connect_tcp("mixed.test", 80)
    assert inner.connects == []


def test_backend_refuses_unix_sockets() -> None:
    inner = FakeBackend()
    backend = backend_for({}, inner, allow_private=True)

    with pytest.raises(BlockedAddressError, match="unix sockets"):
        backend.connect_unix_socket("/var/run/docker.sock")
    assert inner.connects == []


def test_backend_sleep_is_the_inner_backends() -> None:
    inner = FakeBackend()
    backend = backend_for({}, inner)

    backend.sleep(0.25)

    assert inner.sleeps == [0.25]


def test_backend_with_default_inner_opens_a_real_connection() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        allowed = GuardedNetworkBackend(AddressGuard(allow_private=True))
        stream = allowed.connect_tcp("127.0.0.1", port, timeout=5)
        accepted, _ = listener.accept()
        try:
            stream.write(b"ping", timeout=5)
            assert accepted.recv(4) == b"ping"
        finally:
            stream.close()
            accepted.close()

        refused = GuardedNetworkBackend(AddressGuard(allow_private=False))
        with pytest.raises(BlockedAddressError):
            refused.connect_tcp("127.0.0.1", port, timeout=5)
