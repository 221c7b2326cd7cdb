"""``conveyor api --workers 2``: each worker accepts on a socket of its own, so the kernel
spreads keep-alive connections across them, and a worker that dies is replaced on its socket."""

from __future__ import annotations

import os
import signal
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from tests.support.api_server import running_api
from tests.support.polling import wait_for
from tests.support.processes import descendants

CONNECTIONS = 40
_LISTEN, _ESTABLISHED = "0A", "01"


def sockets_on(port: int, state: str) -> set[str]:
    """The inodes of the IPv4 TCP sockets on local ``port`` in ``state``."""
    local = f":{port:04X}"
    rows = [line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:]]
    return {row[9] for row in rows if row[1].endswith(local) and row[3] == state}


def held_by(pid: int, inodes: set[str]) -> set[str]:
    """Which of ``inodes`` process ``pid`` holds open."""
    held = set()
    for fd in Path(f"/proc/{pid}/fd").glob("*"):
        try:
            target = fd.readlink().as_posix()
        except OSError:  # closed while read
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            held.add(target[8:-1])
    return held


def workers_listening(parent: int, port: int) -> dict[int, set[str]]:
    """The processes under ``parent`` that hold a listening socket on ``port``, with it."""
    listening = sockets_on(port, _LISTEN)
    found = {pid: held_by(pid, listening) for pid in descendants(parent)}
    return {pid: held for pid, held in found.items() if held}


def test_two_api_workers_each_accept_on_a_socket_of_their_own(
    api_env: dict[str, str], tmp_path: Path
) -> None:
    with running_api(api_env, tmp_path / "api.log", workers=2) as api:
        port = urlsplit(api.base_url).port
        assert port is not None
        parent = api.process.pid
        workers = wait_for(lambda: _two_listening(parent, port), timeout=30,
                           what="two workers listening")  # fmt: skip
        assert len(set().union(*workers.values())) == 2, workers  # two sockets, one each

        with ExitStack() as stack:
            clients = [stack.enter_context(httpx.Client(base_url=api.base_url)) for _ in
                       range(CONNECTIONS)]  # fmt: skip
            assert all(client.get("/healthz").status_code == 200 for client in clients)
            established = sockets_on(port, _ESTABLISHED)
            split = sorted(len(held_by(pid, established)) for pid in workers)
        # a hash of each connection's addresses picks its socket: 40 landing 35/5 or worse
        # has a chance of one in a million; on one shared socket they landed 40/10 to 50/0
        print(f"{CONNECTIONS} keep-alive connections per worker: {split}")
        assert sum(split) == CONNECTIONS and min(split) >= 5, split

        victim, its_socket = next(iter(workers.items()))
        os.kill(victim, signal.SIGKILL)

        def replaced() -> dict[int, set[str]] | None:
            now = _two_listening(parent, port)
            return now if now and victim not in now else None

        after = wait_for(replaced, timeout=60, what="the killed worker to be replaced")
        assert its_socket in after.values(), (its_socket, after)  # on the same socket
        assert httpx.get(f"{api.base_url}/healthz").status_code == 200
        counts = metrics_directory(next(iter(after)))
        assert counts.is_dir()
    assert not counts.exists()  # the API removed its metrics directory as it stopped


def metrics_directory(worker: int) -> Path:
    """Where an API worker process counts its metrics (its environment says)."""
    environment = Path(f"/proc/{worker}/environ").read_bytes().split(b"\0")
    setting = next(entry for entry in environment if entry.startswith(b"PROMETHEUS_MULTIPROC_DIR="))
    return Path(setting.partition(b"=")[2].decode())


def _two_listening(parent: int, port: int) -> dict[int, set[str]] | None:
    workers = workers_listening(parent, port)
    return workers if len(workers) == 2 else None
