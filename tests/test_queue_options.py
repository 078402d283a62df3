"""Opt-in queue arguments from gear.ini: quorum type, max_length (QueueFull), priority,
message TTL. The classic default without arguments is what every other test uses."""

from __future__ import annotations

import json
import time

import pika
import pika.exceptions
import pytest
from conftest import BROKER_URL

from gearqueue.client import Client
from gearqueue.config import load_settings
from gearqueue.errors import QueueFull
from gearqueue.state import JobStatus, open_store

pytestmark = pytest.mark.slow


@pytest.fixture
def channel():
    connection = pika.BlockingConnection(pika.URLParameters(BROKER_URL))
    yield connection.channel()
    if connection.is_open:
        connection.close()


def depth(channel, queue: str) -> int:
    return channel.queue_declare(queue, passive=True).method.message_count


def test_a_full_queue_refuses_with_queue_full_and_the_job_is_not_left_queued(
        make_config, start_consumer, channel) -> None:
    config = make_config(echo_service={"max_length": 2})
    settings = load_settings(config)
    queue = settings.service("echo").queue
    store = open_store(settings, "echo")
    with Client(settings) as client:
        client.submit("echo", {"data": 1}, job_id="first")
        client.submit("echo", {"data": 2}, job_id="second")
        with pytest.raises(QueueFull, match=r"is full \(max_length 2\); job third was not"):
            client.submit("echo", {"data": 3}, job_id="third")
        with pytest.raises(QueueFull):
            client.call("echo", {"data": 4}, job_id="fourth", timeout=5)
        assert depth(channel, queue) == 2
        # Its state says what happened instead of "queued" forever.
        for job_id in ("third", "fourth"):
            record = store.require(job_id)
            assert record.status is JobStatus.FAILED and record.error is not None
            assert record.error["class"] == "QueueFull"
        # Once the consumer drained the queue, the same job can be submitted again.
        start_consumer(config)
        deadline = time.monotonic() + 20
        while depth(channel, queue):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert client.call("echo", {"data": 3}, job_id="third", timeout=20) == {
            "success": 1, "echo": 3, "attempt": 1}


def test_quorum_queue_serves_jobs_and_refuses_a_plain_declare(
        make_config, start_consumer, channel) -> None:
    config = make_config(echo_service={"queue_type": "quorum"})
    settings = load_settings(config)
    start_consumer(config)
    with Client(settings) as client:
        assert client.call("echo", {"data": "q"}, timeout=20) == {
            "success": 1, "echo": "q", "attempt": 1}
    # gEAR's web API declares the queue plainly: against a quorum queue that fails.
    with pytest.raises(pika.exceptions.ChannelClosedByBroker,
                       match="PRECONDITION_FAILED - inequivalent arg"):
        channel.queue_declare(settings.service("echo").queue, durable=True)


def test_max_priority_serves_the_higher_priority_first(make_config, channel) -> None:
    settings = load_settings(make_config(echo_service={"max_priority": 5}))
    with Client(settings) as client:
        client.submit("echo", {"data": "low"}, priority=1)
        client.submit("echo", {"data": "high"}, priority=5)
    queue = settings.service("echo").queue
    order = [json.loads(channel.basic_get(queue, auto_ack=True)[2])["data"]
             for _ in range(2)]
    assert order == ["high", "low"]


def test_message_ttl_drops_a_job_nobody_took_in_time(make_config, channel) -> None:
    settings = load_settings(make_config(echo_service={"message_ttl": 300}))
    with Client(settings) as client:
        client.submit("echo", {"data": "stale"})
    queue = settings.service("echo").queue
    assert depth(channel, queue) == 1
    time.sleep(0.8)
    assert depth(channel, queue) == 0
