"""What the broker does to a consumer on its own: cancel it (its queue was deleted) or
close its channel (consumer_timeout). Either way the running job is not lost."""

from __future__ import annotations

from collections.abc import Iterator

import pika
import pytest
from private_broker import PrivateBroker

from gearqueue.state import JobStatus

from .harness import Feeder, Fleet, Ledger, wait_until

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
def test_basic_cancel_mid_job_still_settles_the_job_then_consumes_again(
        chaos_config, broker: PrivateBroker, fleet: Fleet, queue_type: str) -> None:
    config = chaos_config(echo_service={"queue_type": queue_type})
    ledger = Ledger.of(config)
    consumer = fleet.start(config, "1")
    feeder = Feeder(broker.url, config)
    feeder.publish("running", {"data": "running", "sleep": 2, "mark": True})
    wait_until(lambda: ledger.count(["running"], JobStatus.RUNNING) == 1, timeout=20,
               what="the job running")
    # An operator deletes the queue under the consumer: the broker sends Basic.Cancel.
    with pika.BlockingConnection(broker.parameters()) as connection:
        connection.channel().queue_delete(feeder.service.queue)
    # The job that ran when the cancel came is finished, stored and answered...
    wait_until(lambda: "running" in feeder.replies, timeout=20,
               what="a reply to the running job", tick=feeder.pump)
    assert feeder.replies["running"] == [{"success": 1, "echo": "running", "attempt": 1}]
    # ... and then the consumer subscribes again.
    wait_until(lambda: fleet.readiness(consumer) == 2, timeout=20,
               what="the consumer subscribed again", tick=feeder.pump)
    assert "broker cancelled our consumer" in consumer.log()
    # The queue is back (declared again by the consumer) and served.
    feeder.publish("next", {"data": "next"})
    wait_until(lambda: "next" in feeder.replies, timeout=20, what="a reply to the next job",
               tick=feeder.pump)
    assert feeder.replies["next"] == [{"success": 1, "echo": "next", "attempt": 1}]
    assert ledger.marks() == {"running": 1}
    assert fleet.alive(consumer)
    feeder.close()


@pytest.fixture
def short_consumer_timeout(broker: PrivateBroker) -> Iterator[int]:
    """consumer_timeout of 3 s, checked every 0.5 s, on channels opened from now on."""
    with broker.rabbit_env(consumer_timeout=3000, channel_tick_interval=500):
        yield 3


def test_channel_closed_by_consumer_timeout_mid_job_loses_nothing_and_runs_it_once(
        chaos_config, broker: PrivateBroker, fleet: Fleet, short_consumer_timeout: int) -> None:
    config = chaos_config()
    ledger = Ledger.of(config)
    consumer = fleet.start(config, "1")
    feeder = Feeder(broker.url, config)
    # Longer than consumer_timeout: the broker closes the channel and requeues the message.
    feeder.publish("long", {"data": "long", "sleep": short_consumer_timeout + 3, "mark": True})
    wait_until(lambda: "long" in feeder.replies, timeout=40, what="a reply to the long job",
               tick=feeder.pump)
    feeder.pump(1.0)  # a second reply would come now

    assert "PRECONDITION_FAILED" in broker.log() or "timed out" in broker.log()
    log = consumer.log()
    assert "lost the broker during job long; letting it finish" in log
    # Finished once, stored, and the redelivery was answered from the stored result.
    assert feeder.replies["long"] == [{"success": 1, "echo": "long", "attempt": 1}]
    assert "replying from its stored record" in log
    record = ledger.store.require("long")
    assert record.status is JobStatus.SUCCEEDED and record.attempts == 1
    assert ledger.marks() == {"long": 1} and ledger.reruns() == []
    assert feeder.depth(feeder.service.queue) == 0
    assert fleet.alive(consumer) and fleet.readiness(consumer) == 2
    feeder.close()
