"""A second host for a test: a network namespace joined to this one by a veth pair, on
addresses the test picks, whose link the test can cut and heal."""

from __future__ import annotations

import os
import random
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


def can_make_namespaces() -> bool:
    """Whether this process may create network namespaces (root with ``ip``)."""
    return (
        os.geteuid() == 0
        and subprocess.run(["ip", "netns", "list"], capture_output=True, check=False).returncode
        == 0
    )


@dataclass(frozen=True)
class SecondHost:
    """The namespace, the address of this host on the link, and the namespace's own."""

    namespace: str
    host_address: str
    guest_address: str
    host_link: str

    def command(self, *argv: str) -> list[str]:
        """``argv`` run inside the namespace."""
        return ["ip", "netns", "exec", self.namespace, *argv]

    def cut(self) -> None:
        """Take the link down: packets vanish, connections hang (a partition, not a reset)."""
        _ip("link", "set", self.host_link, "down")

    def heal(self) -> None:
        """Bring the link back up."""
        _ip("link", "set", self.host_link, "up")


@contextmanager
def second_host() -> Iterator[SecondHost]:
    """A namespace on a /30 of 10.x.y.0 picked at random; removed with its link after."""
    tag = f"{random.randrange(16**6):06x}"
    namespace, host_link, guest_link = f"conv-{tag}", f"cvh{tag}", f"cvg{tag}"
    x, y = random.randrange(1, 255), random.randrange(0, 64) * 4
    host_address, guest_address = f"10.{x}.{y}.1", f"10.{x}.{y}.2"
    _ip("netns", "add", namespace)
    try:
        _ip("link", "add", host_link, "type", "veth", "peer", "name", guest_link)
        _ip("link", "set", guest_link, "netns", namespace)
        _ip("addr", "add", f"{host_address}/30", "dev", host_link)
        _ip("link", "set", host_link, "up")
        inside = ["netns", "exec", namespace, "ip"]
        _ip(*inside, "addr", "add", f"{guest_address}/30", "dev", guest_link)
        _ip(*inside, "link", "set", guest_link, "up")
        _ip(*inside, "link", "set", "lo", "up")
        yield SecondHost(namespace, host_address, guest_address, host_link)
    finally:
        subprocess.run(["ip", "link", "del", host_link], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", namespace], capture_output=True, check=False)
