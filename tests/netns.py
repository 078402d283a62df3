"""Several "hosts" on one machine: network namespaces on a test bridge of their own.

A `HostNetwork` is one Linux bridge in the root namespace with an address of the test's
own (10.213.N.1/24, N picked so that no interface of this machine uses 10.213.N.0/24)
and no other port than the veths of its hosts: nothing outside the machine is put on
it, and no route, NAT or forwarding rule is added. Each `NetHost` is a network
namespace with a veth pair: one end in the namespace (10.213.N.<10+i>/24, plus its
loopback), the other end on the bridge. Services the hosts must reach (the private
RabbitMQ nodes) listen on the bridge address and 127.0.0.1 only.

Cutting a host off (`cut`) sets the bridge end of its veth down: its packets go
nowhere, as when a host's cable is pulled; its processes keep running and notice only
through timeouts and heartbeats.

Names carry a random tag (`gq<tag>...`, within the kernel's 15 characters) and `close`
removes every namespace and link made here, also after a failing test (fixture
finalizers call it). Only names made here are ever deleted.
"""

from __future__ import annotations

import contextlib
import random
import secrets
import subprocess
from dataclasses import dataclass, field

SUBNET_PREFIX = "10.213"


class NetworkError(AssertionError):
    """An `ip` command of the test network failed."""


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30,
                            check=False)
    if check and result.returncode != 0:
        raise NetworkError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


def free_subnet() -> int:
    """A third octet N such that no address of this machine is in 10.213.N.0/24."""
    used = ip("-o", "addr", "show").stdout
    candidates = [n for n in range(1, 255) if f" {SUBNET_PREFIX}.{n}." not in used]
    if not candidates:
        raise NetworkError(f"every {SUBNET_PREFIX}.N.0/24 is in use on this machine")
    return random.choice(candidates)


@dataclass
class NetHost:
    """One namespace ("host") on the test bridge."""

    name: str
    address: str
    outside: str  # the veth end on the bridge, in the root namespace

    def command(self, *argv: str) -> list[str]:
        """`argv` run inside this host's network namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.command(*argv), capture_output=True, text=True,
                              timeout=30, check=False)

    def cut(self) -> None:
        """Off the network: its link on the bridge goes down."""
        ip("link", "set", self.outside, "down")

    def reconnect(self) -> None:
        ip("link", "set", self.outside, "up")


@dataclass
class HostNetwork:
    """The bridge and the hosts of one test run; `close` removes all of it."""

    tag: str = field(default_factory=lambda: secrets.token_hex(3))
    subnet: int = field(default_factory=free_subnet)
    hosts: list[NetHost] = field(default_factory=list)
    bridge_up: bool = False
    #: Every link and namespace name made here, for `leftovers`.
    made: list[str] = field(default_factory=list)

    @property
    def bridge(self) -> str:
        return f"gq{self.tag}br"

    @property
    def address(self) -> str:
        """The bridge's own address: where the hosts reach services of the machine."""
        return f"{SUBNET_PREFIX}.{self.subnet}.1"

    def open(self) -> HostNetwork:
        ip("link", "add", self.bridge, "type", "bridge")
        self.bridge_up = True
        self.made.append(self.bridge)
        ip("addr", "add", f"{self.address}/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")
        return self

    def add_host(self) -> NetHost:
        number = len(self.hosts) + 1
        host = NetHost(name=f"gq-{self.tag}-h{number}",
                       address=f"{SUBNET_PREFIX}.{self.subnet}.{10 + number}",
                       outside=f"gq{self.tag}h{number}")
        inside = f"gq{self.tag}n{number}"
        ip("netns", "add", host.name)
        self.hosts.append(host)
        self.made += [host.name, host.outside]
        ip("link", "add", host.outside, "type", "veth", "peer", "name", inside)
        ip("link", "set", inside, "netns", host.name)
        ip("link", "set", host.outside, "master", self.bridge)
        ip("link", "set", host.outside, "up")
        for args in (("addr", "add", f"{host.address}/24", "dev", inside),
                     ("link", "set", inside, "up"), ("link", "set", "lo", "up")):
            ip("-n", host.name, *args)
        return host

    def remove_host(self, host: NetHost) -> None:
        """Delete a host's link and namespace (the inner veth end goes with the pair)."""
        with contextlib.suppress(NetworkError):
            ip("link", "del", host.outside)
        with contextlib.suppress(NetworkError):
            ip("netns", "del", host.name)
        self.hosts.remove(host)

    def close(self) -> None:
        """Remove the namespaces and links of every host, then the bridge."""
        for host in list(self.hosts):
            self.remove_host(host)
        if self.bridge_up:
            with contextlib.suppress(NetworkError):
                ip("link", "del", self.bridge)
            self.bridge_up = False

    def leftovers(self) -> list[str]:
        """Links and namespaces made here that still exist (none after `close`)."""
        present = ip("-o", "link", "show").stdout + ip("netns", "list").stdout
        return [name for name in self.made if name in present]
