"""A RabbitMQ cluster of our own: three private nodes joined with `rabbitmqctl join_cluster`.

Each node is a `PrivateBroker` (own node name, AMQP and distribution ports, mnesia and
log folders under the cluster's temp folder); they share one epmd (on a port of ours,
127.0.0.1 only) and one Erlang cookie, which is what lets them and `rabbitmqctl` talk.
The shared broker on 5672 is never involved.

Start-up is paid once per test package and kept short: the three nodes boot at the same
time, the second and third stop their app at the same time, then join the first and
start again one after the other (concurrent joins can fail in mnesia).
"""

from __future__ import annotations

import json
import secrets
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
from private_broker import BrokerStartFailed, PrivateBroker, free_ports, start_epmd, stop_epmd

NODES = 3


class ClusterError(AssertionError):
    """The cluster did not form, or a command against it failed."""


class PrivateCluster:
    """Three private nodes: `start` (boot + join), `stop_node`, `start_node`, `close`.

    `addresses` are extra listening addresses of every node (the test's own, e.g. a
    test bridge's); `conf` adds rabbitmq.conf lines to every node.
    """

    def __init__(self, base: Path, *, addresses: tuple[str, ...] = (),
                 conf: dict[str, str] | None = None, size: int = NODES) -> None:
        self.base = base
        base.mkdir(parents=True, exist_ok=True)
        [self.epmd_port] = free_ports(1)
        cookie = secrets.token_hex(16).upper()
        self.nodes = [PrivateBroker(base / f"node{number}", conf, epmd_port=self.epmd_port,
                                    cookie=cookie, addresses=addresses)
                      for number in range(1, size + 1)]
        self.epmd: subprocess.Popen[bytes] | None = None
        #: Seconds from the first launch to a formed cluster (the last start).
        self.start_seconds = 0.0

    # --- life cycle ------------------------------------------------------------------

    def start(self, timeout: float = 90.0) -> PrivateCluster:
        started = time.monotonic()
        self.epmd = start_epmd(self.epmd_port, self.nodes[0].env)
        for node in self.nodes:
            node.launch()
        for node in self.nodes:
            node.wait_ready(timeout)
        seed, *joining = self.nodes
        with ThreadPoolExecutor(len(joining)) as pool:
            list(pool.map(lambda node: self._ctl(node, "stop_app"), joining))
        # One at a time from here: two nodes starting their app as they join at the same
        # moment can fail in mnesia ({badmatch, {error, {normal, {mnesia_app, ...}}}}).
        for node in joining:
            self._ctl(node, "join_cluster", seed.node)
            self._ctl(node, "start_app")
        members = self.running_nodes()
        if sorted(members) != sorted(node.node for node in self.nodes):
            raise ClusterError(f"cluster did not form: running nodes {members}")
        self.start_seconds = time.monotonic() - started
        return self

    @staticmethod
    def _ctl(node: PrivateBroker, *command: str) -> None:
        result = node.ctl(*command, timeout=120)
        if result.returncode != 0:
            raise ClusterError(f"{node.node}: rabbitmqctl {' '.join(command)} failed: "
                               f"{result.stderr or result.stdout}")

    def close(self) -> None:
        """Stop every node, then the shared epmd; only processes started here are ended."""
        try:
            with ThreadPoolExecutor(len(self.nodes)) as pool:
                list(pool.map(lambda node: node.close(), self.nodes))
        finally:
            if self.epmd is not None:
                stop_epmd(self.epmd)
                self.epmd = None

    def stop_node(self, node: PrivateBroker) -> None:
        """A graceful stop of one node (maintenance, `systemctl stop` on that host)."""
        node.stop()

    def start_node(self, node: PrivateBroker, timeout: float = 90.0) -> float:
        """Start a stopped node again (it rejoins by itself); seconds until it serves AMQP
        and the cluster lists it running."""
        started = time.monotonic()
        node.start(timeout)
        wait_for(lambda: node.node in self.running_nodes(), timeout, f"{node.node} rejoined")
        return time.monotonic() - started

    def ensure_running(self) -> None:
        """Start again any node a test left stopped."""
        for node in self.nodes:
            if not node.running:
                self.start_node(node)

    # --- tools -----------------------------------------------------------------------

    def url(self, address: str = "127.0.0.1") -> str:
        """The `[rabbitmq] url` value naming every node, on `address`."""
        return ",".join(node.urls[address] for node in self.nodes)

    def any_running(self) -> PrivateBroker:
        for node in self.nodes:
            if node.running:
                return node
        raise ClusterError("no node of the cluster is running")

    def status(self) -> dict[str, Any]:
        """`rabbitmqctl cluster_status --formatter json`, asked of a running node."""
        result = self.any_running().ctl("cluster_status", "--formatter", "json")
        if result.returncode != 0:
            raise ClusterError(f"cluster_status failed: {result.stderr or result.stdout}")
        status: dict[str, Any] = json.loads(result.stdout)
        return status

    def running_nodes(self) -> list[str]:
        return list(self.status().get("running_nodes", []))

    def node_named(self, name: str) -> PrivateBroker:
        for node in self.nodes:
            if node.node == name:
                return node
        raise ClusterError(f"{name} is not a node of this cluster")

    def queues(self) -> dict[str, dict[str, Any]]:
        """Name -> {type, leader} of every queue, from `rabbitmqctl list_queues`."""
        result = self.any_running().ctl("list_queues", "name", "type", "leader",
                                        "--formatter", "json")
        if result.returncode != 0:
            raise ClusterError(f"list_queues failed: {result.stderr or result.stdout}")
        return {row["name"]: row for row in json.loads(result.stdout)}

    def queue_leader(self, queue: str) -> PrivateBroker:
        """The node that holds a quorum queue's leader."""
        return self.node_named(self.queues()[queue]["leader"])

    def queue_type_of(self, queue: str) -> str:
        return str(self.queues()[queue]["type"])


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> float:
    started = time.monotonic()
    while True:
        try:
            if condition():
                return time.monotonic() - started
        except (ClusterError, BrokerStartFailed, pika.exceptions.AMQPError):
            pass
        if time.monotonic() - started > timeout:
            raise ClusterError(f"not within {timeout:g} s: {what}")
        time.sleep(0.2)
