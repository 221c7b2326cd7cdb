"""Several uvicorn workers, each accepting on a listening socket of its own.

uvicorn's own supervisor gives every worker the one listening socket it bound, and whichever
worker is in ``accept`` first takes the next connection. Keep-alive clients connect in a
burst and stay: 50 connections landed 40/10, 46/4 and 50/0 on two workers, and the busier
worker queued requests while the other idled (``bench/enqueue.py`` prints the split). Here
each worker gets a socket of its own, all bound to the same address with ``SO_REUSEPORT``,
and the kernel spreads new connections across them by a hash of their addresses.
``SO_REUSEPORT`` lets only processes of the same user bind that address too.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from uvicorn.config import STARTUP_FAILURE, Config
from uvicorn.supervisors.multiprocess import Multiprocess, Process

logger = logging.getLogger(__name__)


def _listener(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        listener.bind((host, port))
    except OSError:
        listener.close()
        raise
    listener.set_inheritable(True)
    return listener


@contextmanager
def reuse_port_listeners(host: str, port: int, count: int) -> Iterator[list[socket.socket]]:
    """``count`` sockets bound to ``host``:``port`` (port 0: the one the first was given),
    closed after the block. Each starts listening in the worker that serves it."""
    with ExitStack() as stack:
        first = _listener(host, port)
        stack.callback(first.close)
        port = first.getsockname()[1]
        listeners = [first]
        for _ in range(count - 1):
            listener = _listener(host, port)
            stack.callback(listener.close)
            listeners.append(listener)
        yield listeners


class SpreadSupervisor(Multiprocess):
    """uvicorn's supervisor, with worker ``i`` serving only ``sockets[i]``, also after it is
    restarted: one worker per socket."""

    def __init__(self, config: Config, sockets: list[socket.socket]) -> None:
        config.workers = len(sockets)
        super().__init__(config, sockets)

    def _process(self, index: int) -> Process:
        process = Process(self.config, [self.sockets[index]])
        process.start()
        return process

    def init_processes(self) -> None:
        """Start one worker per socket."""
        self.processes = [self._process(index) for index in range(len(self.sockets))]

    def keep_subprocess_alive(self) -> None:
        """Replace a dead or hung worker on its own socket (uvicorn's rule otherwise: a
        worker that failed before serving stops the whole server)."""
        for index, process in enumerate(self.processes):
            if self.should_exit.is_set():
                return
            if process.is_alive(timeout=self.config.timeout_worker_healthcheck):
                continue
            process.kill()
            process.join()
            if process.exitcode == STARTUP_FAILURE:
                logger.error("API worker %s failed to start; stopping", process.pid)
                self.should_exit.set()
                return
            logger.warning("API worker %s died; starting another", process.pid)
            self.processes[index] = self._process(index)

    def restart_all(self) -> None:
        """Replace each worker (SIGHUP), the new one serving before the old one stops."""
        for index, old in enumerate(self.processes):
            if self.should_exit.is_set():
                return
            new = self._process(index)
            if not new.wait_until_ready(self.config.timeout_worker_healthcheck, self.should_exit):
                new.kill()
                new.join()
                logger.error("API worker %s was not ready in time; restart stopped", new.pid)
                return
            old.terminate()
            old.join()
            self.processes[index] = new
