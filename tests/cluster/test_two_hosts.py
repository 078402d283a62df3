"""Two hosts: consumers in network namespaces of their own, one cut off mid-job.

The hosts reach the cluster over the test bridge only (10.213.N.1); they share the
machine's file system, so the job-state store and the data folders are shared the way
NFS would share them between real hosts (and the job lock works across both).
"""

from __future__ import annotations

import time

import pytest
from chaos.harness import Feeder, Fleet, Ledger, wait_until
from netns import HostNetwork, NetHost
from private_cluster import PrivateCluster

from gearqueue.state import JobStatus

pytestmark = pytest.mark.slow

HEARTBEAT = 2


def test_a_host_cut_off_mid_job_has_its_job_redelivered_to_the_other_host_done_once(
        cluster_config, cluster: PrivateCluster, host_network: HostNetwork,
        hosts: list[NetHost], fleet: Fleet) -> None:
    config = cluster_config(address=host_network.address,
                            rabbitmq={"heartbeat": HEARTBEAT, "socket_timeout": 2})
    ledger = Ledger.of(config)
    consumers = {host.name: fleet.start(config, host.name[-2:], prefix=tuple(host.command()))
                 for host in hosts}
    # Over the bridge: the only way out of their namespaces.
    assert all(f"connected to broker amqp://guest:***@{host_network.address}:" in
               consumer.log() for consumer in consumers.values())
    feeder = Feeder(cluster.nodes[0].url, config)
    try:
        feeder.publish("cut", {"data": "cut", "sleep": 8, "mark": True})
        wait_until(lambda: ledger.count(["cut"], JobStatus.RUNNING) == 1, timeout=20,
                   what="the job running", tick=feeder.pump)
        child = int(ledger.store.require("cut").worker.rpartition(":")[2])
        [cut_host] = [host for host in hosts
                      if Fleet.child_pid(consumers[host.name]) == child]
        [other_host] = [host for host in hosts if host is not cut_host]
        cut_off, other = consumers[cut_host.name], consumers[other_host.name]

        cut_host.cut()
        started = time.monotonic()
        # Jobs published after the cut are served by the other host alone.
        later = [f"later-{number}" for number in range(5)]
        for job_id in later:
            feeder.publish(job_id, {"data": job_id, "mark": True})
        feeder.wait_replies(["cut", *later], timeout=60, linger=1.0)
        answered = time.monotonic() - started
        cut_host.reconnect()
        wait_until(lambda: fleet.readiness(cut_off) == 2, timeout=60,
                   what="the cut-off host consuming again", tick=feeder.pump)
        feeder.pump(2.0)  # a late reply or a second delivery would show now
        depth = feeder.depth(feeder.service.queue)
    finally:
        feeder.close()
    print(f"\ntwo hosts: {cut_host.name} cut off mid-job; its job answered after "
          f"{answered:.1f} s by {other_host.name} (heartbeat {HEARTBEAT} s, job 8 s)")

    record = ledger.store.require("cut")
    assert record.status is JobStatus.SUCCEEDED and record.attempts == 1
    # The effect once, made by the cut-off host, whose stored result is what the other
    # host answered the redelivery with; the cut-off host's own reply never went out.
    assert ledger.marks() == {"cut": 1, **dict.fromkeys(later, 1)}
    assert ledger.reruns() == []
    assert feeder.replies["cut"] == [{"success": 1, "echo": "cut", "attempt": 1}]
    # It learns of the cut from missed heartbeats, mid-job or after: either way it
    # reconnects, and nothing it settled on the dead connection counted.
    assert "lost the broker" in cut_off.log()
    assert "replying from its stored record" in other.log()
    assert not any(f"job {job_id} " in cut_off.log() for job_id in later)
    assert depth == 0
    assert all(fleet.alive(consumer) for consumer in consumers.values())


def test_the_host_network_leaves_no_namespace_or_link_behind_when_a_test_fails() -> None:
    network = HostNetwork().open()
    with pytest.raises(RuntimeError, match="a failing test"):
        try:
            hosts = [network.add_host(), network.add_host()]
            assert hosts[0].run("ip", "-o", "addr").stdout.count(hosts[0].address) == 1
            assert network.leftovers() == network.made
            raise RuntimeError("a failing test")
        finally:
            network.close()  # what the fixtures' finalizers call
    assert len(network.made) == 5  # the bridge, and a namespace and a link per host
    assert network.leftovers() == []
