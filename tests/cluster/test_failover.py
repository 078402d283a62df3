"""[rabbitmq] url naming the nodes of a cluster: connects spread over them, a failover is
told in one line per node, and a worker whose node stops consumes again on another.

The failover figures are printed (pytest -s): seconds from stopping (or killing) the
node a worker is connected to, to that worker consuming again on another node.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import Counter

import pytest
from chaos.harness import Feeder, Fleet, Ledger, wait_until
from private_broker import PrivateBroker, free_ports
from private_cluster import PrivateCluster

from gearqueue.broker import close_quietly, connect, connected_url
from gearqueue.config import load_settings, mask_url
from gearqueue.state import JobStatus

pytestmark = pytest.mark.slow

CONNECTED = re.compile(r"connected to broker amqp://guest:\*\*\*@127\.0\.0\.1:(\d+)/")


def node_of(consumer, cluster: PrivateCluster, index: int = -1) -> PrivateBroker:
    """The node a consumer connected to (its `index`-th connect), from its own log."""
    port = int(CONNECTED.findall(consumer.log())[index])
    return next(node for node in cluster.nodes if node.port == port)


def test_connects_start_at_a_random_node_so_a_fleet_spreads_over_the_cluster(
        cluster_config, cluster: PrivateCluster) -> None:
    settings = load_settings(cluster_config())
    urls = settings.broker_urls("echo")
    reached: Counter[str] = Counter()
    for _ in range(30):
        connection = connect(settings, "echo", "spread-test")
        reached[connected_url(connection, urls)] += 1
        close_quietly(connection)
    # Every node takes a share; always the first one would be {urls[0]: 30}.
    assert set(reached) == set(urls), reached


def test_a_failover_past_a_refusing_and_a_dead_node_is_told_in_one_line_each(
        make_config, cluster: PrivateCluster, caplog: pytest.LogCaptureFixture) -> None:
    refusing = cluster.nodes[0].url.replace("guest:guest@", "guest:wrong@")
    [closed_port] = free_ports(1)
    dead = f"amqp://guest:guest@127.0.0.1:{closed_port}/%2F"
    good = cluster.nodes[1].url
    settings = load_settings(make_config(rabbitmq={"url": f"{refusing},{dead},{good}"}))
    caplog.set_level(logging.DEBUG)
    # `avoid` puts the good node last, so both bad ones are tried first.
    connection = connect(settings, "echo", "failover-test", avoid=good)
    close_quietly(connection)

    said = [(record.name, record.levelname, record.getMessage()) for record in caplog.records
            if record.levelno >= logging.INFO]
    warnings = [message for name, level, message in said if level == "WARNING"]
    assert len(warnings) == 2, said
    [unreachable] = [line for line in warnings if mask_url(dead) in line]
    [refused] = [line for line in warnings if mask_url(refusing) in line]
    assert unreachable.startswith(f"broker {mask_url(dead)} unreachable (")
    assert "Connection refused" in unreachable
    assert refused.startswith(f"broker {mask_url(refusing)} refused the login (")
    assert "ACCESS_REFUSED" in refused
    assert ("gearqueue.broker", "INFO", f"connected to broker {mask_url(good)} as "
            f"failover-test after 2 failed") in said
    # pika's own ERROR cascade and its traceback are not repeated.
    assert not [(name, message) for name, level, message in said
                if name.startswith("pika") and level in ("WARNING", "ERROR")], said
    assert not any(record.exc_info for record in caplog.records)


def _stop_in_background(cluster: PrivateCluster, node: PrivateBroker, hard: bool
                        ) -> threading.Thread:
    stopper = threading.Thread(target=node.kill if hard else cluster.stop_node,
                               args=() if hard else (node,), daemon=True)
    stopper.start()
    return stopper


@pytest.mark.parametrize("hard", [False, True], ids=["node stopped", "node killed"])
def test_a_worker_whose_node_goes_consumes_again_on_another_node(
        cluster_config, cluster: PrivateCluster, fleet: Fleet, hard: bool) -> None:
    config = cluster_config()
    consumer = fleet.start(config, "f1")
    first = node_of(consumer, cluster)
    ready = fleet.readiness(consumer)

    started = time.monotonic()
    stopper = _stop_in_background(cluster, first, hard)
    wait_until(lambda: fleet.readiness(consumer) > ready, timeout=30,
               what="the worker consuming again", poll=0.02)
    failover = time.monotonic() - started
    stopper.join(60)
    second = node_of(consumer, cluster)
    print(f"\nfailover ({'kill' if hard else 'stop'} of {first.node}): consuming again on "
          f"{second.node} after {failover:.2f} s")

    assert second is not first
    log = consumer.log()
    # The node just lost is tried last, and a failed connect would be our one line.
    assert "Traceback" not in log and "workflow failed" not in log, log[-3000:]
    assert "lost the broker" in log
    # It serves jobs there (the queue is quorum: its leader moved if it was on `first`).
    feeder = Feeder(second.url, config)
    ledger = Ledger.of(config)
    try:
        feeder.publish("after-failover", {"data": 1, "mark": True})
        feeder.wait_replies(["after-failover"])
    finally:
        feeder.close()
    assert feeder.replies["after-failover"] == [{"success": 1, "echo": 1, "attempt": 1}]
    assert ledger.count(["after-failover"], JobStatus.SUCCEEDED) == 1
