"""Client.call(): the reply confirms the request; an unroutable request fails at once and
leaves its job failed (not queued for ever); the job's record is never set back to queued."""

from __future__ import annotations

import time

import pika
import pytest
from conftest import BROKER_URL

from gearqueue.client import Client
from gearqueue.config import load_settings
from gearqueue.errors import StateStoreUnavailable, UnroutableError
from gearqueue.state import JobStatus

pytestmark = pytest.mark.slow


def test_a_call_with_no_queue_to_go_to_fails_at_once_and_leaves_its_job_failed(
        make_config) -> None:
    settings = load_settings(make_config())
    queue = settings.service("echo").queue
    connection = pika.BlockingConnection(pika.URLParameters(BROKER_URL))
    try:
        with Client(settings) as client:
            client.submit("echo", {"data": 0})  # declares the topology
            channel = connection.channel()
            for name in (queue, f"{queue}.dead", *(f"{queue}.retry.{n}" for n in (1, 2, 3))):
                channel.queue_delete(name)  # an operator deleted the queues
            started = time.monotonic()
            with pytest.raises(UnroutableError, match="unroutable"):
                client.call("echo", {"data": 1}, timeout=20, job_id="nowhere-1")
            assert time.monotonic() - started < 5
            record = client.status("echo", "nowhere-1")
    finally:
        connection.close()
    assert record.status is JobStatus.FAILED
    assert record.error is not None and record.error["class"] == "UnroutableError"


def test_calls_get_their_own_replies(make_config, start_consumer) -> None:
    config = make_config()
    start_consumer(config)
    with Client(load_settings(config)) as client:
        replies = [client.call("echo", {"data": number}, timeout=30) for number in range(20)]
    assert replies == [{"success": 1, "echo": number, "attempt": 1} for number in range(20)]


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


def test_a_call_whose_queued_record_cannot_be_written_still_gets_its_reply(
        make_config, start_consumer, monkeypatch, caplog) -> None:
    config = make_config()
    start_consumer(config)
    with Client(load_settings(config)) as client:
        store = client._store("echo")

        def down(job_id: str) -> bool:
            raise StateStoreUnavailable(f"state database down (job {job_id})")

        monkeypatch.setattr(store, "queued", down)
        reply = client.call("echo", {"data": "on its way"}, timeout=30, job_id="store-down-1")
        monkeypatch.undo()
        record = client.status("echo", "store-down-1")
    # The request had left: raising would only have made the caller send it again.
    assert reply == {"success": 1, "echo": "on its way", "attempt": 1}
    assert record.status is JobStatus.SUCCEEDED  # its consumer recorded it
    assert "could not be written; waiting for its reply anyway" in caplog.text
