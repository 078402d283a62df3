"""With prefetch > 1 the consumer hands job N+1 to its executor child while it settles
job N. Nothing may be lost or doubled by that, including when it is stopped midway."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from amqp import PlainPublisher

from gearqueue.config import load_settings
from gearqueue.state import JobStatus, StateStore


@pytest.fixture
def prefetch_config(make_config) -> Path:
    return make_config(echo_service={"prefetch": 5})


@pytest.fixture
def publisher(prefetch_config: Path):
    plain = PlainPublisher(load_settings(prefetch_config).service("echo").queue)
    yield plain
    plain.close()


def test_every_job_gets_exactly_one_reply_with_prefetch(
        prefetch_config: Path, publisher: PlainPublisher, start_consumer) -> None:
    start_consumer(prefetch_config)
    for number in range(300):
        publisher.publish({"data": number}, f"job-{number}", message_id=f"job-{number}")
    publisher.wait_replies(300, timeout=120)
    publisher.settle(0.5)
    assert all(publisher.replies[f"job-{number}"] == [
        {"success": 1, "echo": number, "attempt": 1}] for number in range(300))
    store = StateStore(load_settings(prefetch_config).paths.state_dir, "echo")
    assert {store.require(f"job-{n}").status for n in range(300)} == {JobStatus.SUCCEEDED}
    assert publisher.depth(publisher.queue) == 0


def test_sigterm_midway_finishes_what_started_and_gives_back_the_rest(
        prefetch_config: Path, publisher: PlainPublisher, start_consumer) -> None:
    consumer = start_consumer(prefetch_config)
    for number in range(20):
        publisher.publish({"data": number, "sleep": 0.1}, f"job-{number}",
                          message_id=f"job-{number}")
    publisher.wait_replies(3, timeout=30)
    consumer.signal(signal.SIGTERM)
    assert consumer.wait(timeout=30) == 0
    publisher.settle(0.5)
    done = set(publisher.replies)
    assert all(len(replies) == 1 and replies[0]["success"] == 1
               for replies in publisher.replies.values())
    # Each job was either run and answered once, or given back untouched: none lost.
    assert len(done) + publisher.depth(publisher.queue) == 20
    store = StateStore(load_settings(prefetch_config).paths.state_dir, "echo")
    started = {f"job-{n}" for n in range(20) if store.get(f"job-{n}") is not None}
    assert started == done  # nothing was left half-way (running, unacked)
