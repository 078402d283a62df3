"""queue_type = quorum on a cluster: every queue of a job type is a quorum queue, the
broker's delivery-limit backs up the state record, and a job in flight when its queue's
leader node stops is neither lost nor done twice in effect."""

from __future__ import annotations

import pytest
from chaos.harness import Feeder, Fleet, Ledger, wait_until
from private_cluster import PrivateCluster

from gearqueue.config import load_settings
from gearqueue.state import JobStatus
from gearqueue.topology import dead_queue, retry_queue

pytestmark = pytest.mark.slow


def test_retry_and_dead_queues_follow_quorum_and_a_failing_job_goes_through_them(
        cluster_config, cluster: PrivateCluster, fleet: Fleet) -> None:
    config = cluster_config(echo_service={"retry_backoff": 0.2})
    service = load_settings(config).service("echo")
    fleet.start(config, "q1")
    ledger = Ledger.of(config)
    feeder = Feeder(cluster.nodes[0].url, config)
    try:
        feeder.publish("flaky", {"data": "flaky", "fail": "transient"})
        feeder.wait_replies(["flaky"], timeout=60)
        queues = [service.queue, *(retry_queue(service, n) for n in (1, 2, 3)),
                  dead_queue(service)]
        assert {queue: cluster.queue_type_of(queue) for queue in queues} == \
            dict.fromkeys(queues, "quorum")
        record = ledger.store.require("flaky")
        # Three retries, each through a quorum retry queue and back by at-least-once
        # dead-lettering on expiry, then the dead queue.
        assert record.status is JobStatus.FAILED and record.attempts == 4
        [(properties, _)] = feeder.dead_letters()
        assert properties.headers["x-gear-attempts"] == 4
    finally:
        feeder.close()


def test_the_broker_dead_letters_a_message_returned_past_its_delivery_limit(
        cluster_config, cluster: PrivateCluster) -> None:
    """The backstop for a message whose consumers die before any attempt is counted."""
    config = cluster_config()
    service = load_settings(config).service("echo")
    limit = service.max_retries + 1
    feeder = Feeder(cluster.nodes[1].url, config)
    try:
        feeder.publish("returned", {"data": "returned"}, reply=False)
        channel = feeder.connection.channel()
        returns = 0
        while True:
            method, _, _ = channel.basic_get(service.queue)
            if method is None:
                break
            channel.basic_nack(method.delivery_tag, requeue=True)
            returns += 1
            assert returns <= limit + 1, "the delivery limit never acted"
        wait_until(lambda: feeder.depth(dead_queue(service)) == 1, timeout=10,
                   what="the message in the dead queue")
        [(properties, _)] = feeder.dead_letters()
    finally:
        feeder.close()
    assert returns == limit + 1  # dead-lettered when returned more than `limit` times
    assert properties.headers["x-first-death-reason"] == "delivery_limit"
    assert properties.message_id == "returned"


def test_jobs_in_flight_when_the_queue_leader_node_stops_are_done_once_in_effect(
        cluster_config, cluster: PrivateCluster, fleet: Fleet) -> None:
    """One consumer on the leader's node (it loses its connection mid-job) and one on a
    follower (its channel survives the leader election), each with a job running."""
    probe = cluster_config()
    feeder = Feeder(cluster.nodes[0].url, probe)  # declares the quorum queue
    service = feeder.service
    leader = cluster.queue_leader(service.queue)
    followers = [node for node in cluster.nodes if node is not leader]
    feeder.close()
    on_leader = cluster_config(name="leader.ini", rabbitmq={"url": leader.url})
    on_followers = cluster_config(name="followers.ini", rabbitmq={
        "url": ",".join(node.url for node in followers)})
    ledger = Ledger.of(probe)
    consumers = [fleet.start(on_leader, "leader"), fleet.start(on_followers, "follower")]
    feeder = Feeder(followers[0].url, probe)
    job_ids = [f"job-{number}" for number in range(20)]
    try:
        for number, job_id in enumerate(job_ids):
            feeder.publish(job_id, {"data": number, "sleep": 1.0, "mark": True})
        wait_until(lambda: ledger.count(job_ids, JobStatus.RUNNING) == 2
                   and ledger.count(job_ids, JobStatus.SUCCEEDED) >= 2, timeout=30,
                   what="both consumers running a job", tick=feeder.pump)
        cluster.stop_node(leader)
        new_leader = cluster.queue_leader(service.queue)
        wait_until(lambda: ledger.count(job_ids, JobStatus.SUCCEEDED) == len(job_ids),
                   timeout=90, what="every job succeeded", tick=feeder.pump)
        feeder.wait_replies(job_ids, timeout=30, linger=1.0)
        back = cluster.start_node(leader)
        wait_until(lambda: fleet.readiness(consumers[0]) == 2, timeout=30,
                   what="the leader's consumer consuming again", tick=feeder.pump)
        feeder.pump(1.0)
        depth = feeder.depth(service.queue)
    finally:
        feeder.close()

    records = ledger.records(job_ids)
    print(f"\nquorum leader stop: leader {leader.node} -> {new_leader.node}, "
          f"{sum(r.attempts > 1 for r in records.values())} run again, "
          f"{len(ledger.reruns())} re-runs found their effect, node back in {back:.1f} s")
    assert new_leader is not leader
    assert "lost the broker during job" in consumers[0].log()
    assert "replying from its stored record" in consumers[1].log()
    assert sorted(ledger.marks()) == sorted(job_ids)
    assert ledger.reruns() == []
    for number, job_id in enumerate(job_ids):
        assert feeder.replies[job_id] == [{"success": 1, "echo": number, "attempt": 1}] \
            * len(feeder.replies[job_id])
    assert depth == 0
    assert all(fleet.alive(consumer) for consumer in consumers)
