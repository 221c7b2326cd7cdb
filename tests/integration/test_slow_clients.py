"""Clients that send a request too slowly are disconnected; ordinary ones keep their
keep-alive connections. A real ``conveyor api`` with short deadlines, and raw sockets."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.support.api_server import ALICE, ApiServer, running_api

HEADER_TIMEOUT = 1.0
BODY_TIMEOUT = 2.0
# a disconnect is late once the deadline is this far behind (a busy machine is slow)
SLACK = 3.0
DRIP = 0.25  # seconds between the slow client's pieces


@pytest.fixture(scope="module")
def strict_api(
    api_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiServer]:
    env = {
        **api_env,
        "CONVEYOR_API_HEADER_TIMEOUT": str(HEADER_TIMEOUT),
        "CONVEYOR_API_BODY_TIMEOUT": str(BODY_TIMEOUT),
    }
    logs = tmp_path_factory.mktemp("strict-api")
    with running_api(env, Path(logs) / "api.log") as server:
        yield server


def _connect(server: ApiServer) -> socket.socket:
    address = urlsplit(server.base_url)
    connection = socket.create_connection((address.hostname, address.port), timeout=30)
    connection.settimeout(DRIP)
    return connection


def _closed(connection: socket.socket) -> bool:
    """Whether the server closed ``connection`` (nothing more waits to be read)."""
    try:
        return connection.recv(65536) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def _drip_until_closed(connection: socket.socket, pieces: Iterator[bytes], limit: float) -> float:
    """Send a piece every DRIP seconds until the server hangs up; how long that took."""
    started = time.monotonic()
    for piece in pieces:
        if time.monotonic() - started > limit:
            raise AssertionError(f"still connected after {limit} s")
        try:
            connection.sendall(piece)
        except (BrokenPipeError, ConnectionResetError):
            return time.monotonic() - started
        if _closed(connection):
            return time.monotonic() - started
    raise AssertionError("ran out of pieces")


def _endless_headers() -> Iterator[bytes]:
    yield b"POST /v1/jobs HTTP/1.1\r\nHost: conveyor\r\n"
    number = 0
    while True:
        number += 1
        yield f"X-Slow-{number}: still coming\r\n".encode()


def _endless_chunks() -> Iterator[bytes]:
    yield (
        b"POST /v1/jobs HTTP/1.1\r\nHost: conveyor\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + ALICE[1].encode() + b"\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    while True:
        yield b"1\r\n \r\n"


def test_headers_dripped_forever_are_cut_off_at_the_header_deadline(strict_api: ApiServer) -> None:
    with ExitStack() as stack:
        connections = [stack.enter_context(_connect(strict_api)) for _ in range(20)]
        pieces = [_endless_headers() for _ in connections]
        started = time.monotonic()
        open_ = set(range(len(connections)))
        while open_ and time.monotonic() - started < HEADER_TIMEOUT + SLACK:
            for index in list(open_):
                try:
                    connections[index].sendall(next(pieces[index]))
                except (BrokenPipeError, ConnectionResetError):
                    open_.discard(index)
                    continue
                if _closed(connections[index]):
                    open_.discard(index)
        elapsed = time.monotonic() - started

    assert not open_, f"{len(open_)} of 20 slow connections still open after {elapsed:.1f} s"
    assert elapsed >= HEADER_TIMEOUT * 0.9
    assert "the request's headers did not arrive" in strict_api.log()


def test_a_never_ending_chunked_body_is_cut_off_at_the_body_deadline(
    strict_api: ApiServer,
) -> None:
    with _connect(strict_api) as connection:
        elapsed = _drip_until_closed(connection, _endless_chunks(), BODY_TIMEOUT + SLACK + 2)

    assert elapsed >= BODY_TIMEOUT * 0.9
    assert "the request's body did not arrive" in strict_api.log()


def test_a_connection_that_sends_nothing_is_closed(strict_api: ApiServer) -> None:
    with _connect(strict_api) as connection:
        started = time.monotonic()
        while not _closed(connection):
            assert time.monotonic() - started < HEADER_TIMEOUT + SLACK, "still open"

    assert time.monotonic() - started >= HEADER_TIMEOUT * 0.9


def test_ordinary_clients_keep_their_connection_between_requests(strict_api: ApiServer) -> None:
    with httpx.Client(
        base_url=strict_api.base_url, headers={"Authorization": f"Bearer {ALICE[1]}"}
    ) as client:
        first = client.get("/v1/tasks")
        peer = first.extensions["network_stream"].get_extra_info("client_addr")
        time.sleep(HEADER_TIMEOUT * 1.5)  # idle between requests: keep-alive's to bound
        second = client.get("/v1/tasks")
        again = second.extensions["network_stream"].get_extra_info("client_addr")

    assert (first.status_code, second.status_code) == (200, 200)
    assert peer == again  # the same connection served both
