"""Client.call() and the job's state record: queued before the request goes out, never
set back to queued, and failed (not queued for ever) when the request was refused."""

from __future__ import annotations

import pika
import pytest
from conftest import BROKER_URL

from gearqueue.client import Client
from gearqueue.config import load_settings
from gearqueue.errors import UnroutableError
from gearqueue.state import JobStatus


def test_an_unroutable_call_leaves_its_job_failed_not_queued(make_config) -> None:
    settings = load_settings(make_config())
    queue = settings.service("echo").queue
    connection = pika.BlockingConnection(pika.URLParameters(BROKER_URL))
    try:
        with Client(settings) as client:
            client.submit("echo", {"data": 0})  # declares the topology
            channel = connection.channel()
            for name in (queue, f"{queue}.dead", *(f"{queue}.retry.{n}" for n in (1, 2, 3))):
                channel.queue_delete(name)  # an operator deleted the queues
            with pytest.raises(UnroutableError):
                client.call("echo", {"data": 1}, timeout=20, job_id="nowhere-1")
            record = client.status("echo", "nowhere-1")
    finally:
        connection.close()
    assert record.status is JobStatus.FAILED
    assert record.error is not None and record.error["class"] == "UnroutableError"


def test_a_call_with_the_id_of_a_finished_job_gets_its_stored_reply_and_keeps_its_record(
        make_config, start_consumer) -> None:
    config = make_config()
    start_consumer(config)
    with Client(load_settings(config)) as client:
        first = client.call("echo", {"data": "first"}, timeout=30, job_id="same-id-1")
        again = client.call("echo", {"data": "again"}, timeout=30, job_id="same-id-1")
        record = client.status("echo", "same-id-1")
    assert first == again == {"success": 1, "echo": "first", "attempt": 1}
    assert (record.status, record.attempts) == (JobStatus.SUCCEEDED, 1)
    assert record.result == first
