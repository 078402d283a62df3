"""Client.submit_many: a batch with streaming publisher confirms, every job accounted for."""

from __future__ import annotations

import json
from pathlib import Path

import pika
import pytest
from conftest import BROKER_URL

from gearqueue.client import Client
from gearqueue.config import Settings, load_settings
from gearqueue.errors import BatchPublishError, InvalidMessage
from gearqueue.state import JobStatus

pytestmark = pytest.mark.slow


@pytest.fixture
def channel():
    connection = pika.BlockingConnection(pika.URLParameters(BROKER_URL))
    yield connection.channel()
    connection.close()


@pytest.fixture
def echo_settings(make_config, channel):
    """Settings whose echo queues are deleted after the test (they are this test's own)."""
    made: list[Settings] = []

    def make(**sections: dict[str, object]) -> Settings:
        made.append(load_settings(make_config(**sections)))
        return made[-1]

    yield make
    for settings in made:
        queue = settings.service("echo").queue
        for name in (queue, f"{queue}.dead",
                     *(f"{queue}.retry.{n}" for n in range(1, 11))):
            if not channel.is_open:
                channel = channel.connection.channel()
            channel.queue_delete(name)


def depth(channel, queue: str) -> int:
    return channel.queue_declare(queue, passive=True).method.message_count


def test_every_job_of_a_batch_is_confirmed_and_queued_in_order(echo_settings, channel) -> None:
    settings = echo_settings()
    queue = settings.service("echo").queue
    payloads = [{"data": number} for number in range(2500)]  # more than one confirm window
    with Client(settings) as client:
        job_ids = client.submit_many("echo", payloads)
        assert len(set(job_ids)) == 2500
        assert client.status("echo", job_ids[-1]).status is JobStatus.QUEUED
    assert depth(channel, queue) == 2500
    for number in range(3):
        _method, properties, body = channel.basic_get(queue, auto_ack=True)
        assert properties.message_id == properties.correlation_id == job_ids[number]
        assert properties.delivery_mode == 2
        assert properties.content_type == "application/json"
        assert json.loads(body) == {"data": number}


def test_jobs_refused_by_a_full_queue_are_named_as_nacked(echo_settings, channel) -> None:
    settings = echo_settings(echo_service={"max_length": 5})
    with Client(settings) as client, pytest.raises(BatchPublishError) as caught:
        client.submit_many("echo", [{"data": number} for number in range(8)])
    report = caught.value.report
    assert len(report.confirmed) == 5
    assert len(report.nacked) == 3
    assert not (report.unroutable or report.unconfirmed or report.unsent)
    assert "3 of 8 jobs not queued" in str(caught.value)
    assert "refused by the broker" in str(caught.value)
    assert report.nacked[0] in str(caught.value)
    assert depth(channel, settings.service("echo").queue) == 5


def test_jobs_with_no_queue_to_go_to_are_named_as_unroutable(echo_settings, channel) -> None:
    settings = echo_settings()
    queue = settings.service("echo").queue
    with Client(settings) as client:
        client.submit_many("echo", [{"data": 0}])
        channel.queue_delete(queue)  # an operator deleted the queue under a running web API
        with pytest.raises(BatchPublishError) as caught:
            client.submit_many("echo", [{"data": 1}, {"data": 2}])
    report = caught.value.report
    assert len(report.unroutable) == 2
    assert report.confirmed == []
    assert f"unroutable (returned: no queue '{queue}')" in str(caught.value)


def test_an_invalid_payload_stops_the_batch_before_anything_is_published(
        echo_settings, channel) -> None:
    settings = echo_settings()
    queue = settings.service("echo").queue
    with Client(settings) as client, pytest.raises(InvalidMessage):
        client.submit_many("echo", [{"data": 1}, ["not", "an", "object"]])
    channel.queue_declare(queue=queue, durable=True)  # as gEAR's web API declares it
    assert depth(channel, queue) == 0


def test_with_queueing_off_a_batch_runs_in_process_and_contacts_no_broker(
        make_config, tmp_path: Path) -> None:
    settings = load_settings(make_config(
        rabbitmq={"url": "amqp://guest:guest@127.0.0.1:1/%2F"},  # nothing listens there
        echo_service={"queue_enabled": 0}))
    with Client(settings) as client:
        job_ids = client.submit_many("echo", [{"data": "a"}, {"data": "b"}])
        records = [client.status("echo", job_id) for job_id in job_ids]
    assert [record.status for record in records] == [JobStatus.SUCCEEDED] * 2
    assert [record.result for record in records] == [
        {"success": 1, "echo": "a", "attempt": 1}, {"success": 1, "echo": "b", "attempt": 1}]
