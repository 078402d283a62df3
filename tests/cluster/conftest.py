"""Fixtures of the cluster suite: a test network, a private 3-node cluster on it, configs.

The cluster is started once for the package (its start time is printed) and listens on
127.0.0.1 and the test bridge's address only; a test that stops a node has it started
again before the next test (`cluster`). Each test has its own queues and data folders.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from chaos.harness import Fleet
from netns import HostNetwork, NetHost
from private_cluster import PrivateCluster


@pytest.fixture(scope="package")
def host_network() -> Iterator[HostNetwork]:
    network = HostNetwork().open()
    try:
        yield network
    finally:
        network.close()


@pytest.fixture(scope="package")
def private_cluster(tmp_path_factory: pytest.TempPathFactory,
                    host_network: HostNetwork) -> Iterator[PrivateCluster]:
    cluster = PrivateCluster(tmp_path_factory.mktemp("private-cluster"),
                             addresses=(host_network.address,))
    try:
        cluster.start()
        print(f"\nprivate cluster of {len(cluster.nodes)} nodes up in "
              f"{cluster.start_seconds:.1f} s")
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def cluster(private_cluster: PrivateCluster) -> PrivateCluster:
    """The private cluster with every node running (a test before may have stopped one)."""
    private_cluster.ensure_running()
    return private_cluster


@pytest.fixture
def cluster_config(make_config, cluster: PrivateCluster) -> Callable[..., Path]:
    """make_config with every node of the cluster in [rabbitmq] url, quorum queues."""

    def make(address: str = "127.0.0.1", **sections: dict[str, object]) -> Path:
        rabbitmq = {"url": cluster.url(address), **sections.pop("rabbitmq", {})}
        echo = {"queue_type": "quorum", **sections.pop("echo_service", {})}
        return make_config(rabbitmq=rabbitmq, echo_service=echo, **sections)

    return make


@pytest.fixture
def hosts(host_network: HostNetwork) -> Iterator[list[NetHost]]:
    """Two hosts (namespaces) on the test bridge, removed after the test."""
    made = [host_network.add_host(), host_network.add_host()]
    try:
        yield made
    finally:
        for host in made:
            host_network.remove_host(host)


@pytest.fixture
def fleet() -> Iterator[Fleet]:
    group = Fleet()
    yield group
    group.stop_all()
