"""The runtime end to end: real broker, real consumer processes, the echo job."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from amqp import PlainPublisher

from gearqueue.client import Client
from gearqueue.config import load_settings
from gearqueue.state import JobStatus, open_store

pytestmark = pytest.mark.slow


def wait_until_running(config: Path, job_id: str, timeout: float = 20.0) -> None:
    """Until the job runs: its lock is held (a first delivery's attempt is recorded only
    with its result, so its record says `queued` until then)."""
    store = open_store(load_settings(config), "echo")
    deadline = time.monotonic() + timeout
    while True:
        taken = threading.Event()

        def probe(taken: threading.Event = taken) -> None:
            with store.locked(job_id):
                taken.set()

        threading.Thread(target=probe, daemon=True).start()
        if not taken.wait(0.5):
            return  # held by the consumer: the job runs
        assert time.monotonic() < deadline, f"job {job_id} never started running"
        time.sleep(0.05)


@pytest.fixture
def publisher(settings_path: Path):
    settings = load_settings(settings_path)
    plain = PlainPublisher(settings.service("echo").queue)
    yield plain
    plain.close()


@pytest.fixture
def settings_path(make_config) -> Path:
    return make_config()


def test_gear_publisher_declares_the_queue_before_and_after_the_consumer(
        settings_path: Path, publisher: PlainPublisher, start_consumer) -> None:
    # gEAR's web API declared the queue (durable, no arguments) before any consumer ran.
    publisher.publish({"data": "early"}, "early")
    start_consumer(settings_path)
    publisher.channel.queue_declare(queue=publisher.queue, durable=True)  # still compatible
    publisher.publish({"data": "late"}, "late")
    publisher.wait_replies(2, timeout=20)
    assert publisher.replies["early"] == [{"success": 1, "echo": "early", "attempt": 1}]
    assert publisher.replies["late"] == [{"success": 1, "echo": "late", "attempt": 1}]


def test_a_thousand_jobs_over_two_consumers_each_get_exactly_one_reply(
        settings_path: Path, publisher: PlainPublisher, start_consumer) -> None:
    start_consumer(settings_path, instance="1")
    start_consumer(settings_path, instance="2")
    for number in range(1000):
        publisher.publish({"data": number}, f"job-{number}")
    publisher.wait_replies(1000, timeout=120)
    publisher.settle(1.0)
    assert len(publisher.replies) == 1000
    for number in range(1000):
        assert publisher.replies[f"job-{number}"] == [
            {"success": 1, "echo": number, "attempt": 1}]
    assert publisher.depth(publisher.queue) == 0
    assert publisher.depth(publisher.queue + ".dead") == 0


def test_a_job_much_longer_than_the_heartbeat_keeps_its_connection(
        make_config, start_consumer) -> None:
    path = make_config(rabbitmq={"heartbeat": 2})
    settings = load_settings(path)
    consumer = start_consumer(path)
    with Client(settings) as client:
        reply = client.call("echo", {"data": "long", "sleep": 20}, timeout=60)
    assert reply == {"success": 1, "echo": "long", "attempt": 1}
    log = consumer.log()
    assert "lost the broker" not in log and "reconnect" not in log
    assert log.count("consuming from") == 1


def test_queueing_off_runs_in_process_with_no_broker(make_config) -> None:
    path = make_config(rabbitmq={"url": "amqp://guest:guest@127.0.0.1:1/%2F"},
                       echo_service={"queue_enabled": 0})
    result = subprocess.run(
        [sys.executable, "-m", "gearqueue.cli", "--config", str(path), "submit", "echo",
         "--json", '{"data": 7}', "--wait"], capture_output=True, text=True, timeout=30,
        check=False)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"success": 1, "echo": 7, "attempt": 1}


def test_sigterm_during_a_job_lets_it_finish_then_exits_0(
        settings_path: Path, publisher: PlainPublisher, start_consumer) -> None:
    consumer = start_consumer(settings_path)
    publisher.publish({"data": "slow", "sleep": 3}, "slow", message_id="slow-job")
    publisher.publish({"data": "next"}, "next")
    wait_until_running(settings_path, "slow-job")
    consumer.signal(signal.SIGTERM)
    assert consumer.wait(timeout=30) == 0
    publisher.wait_replies(1, timeout=5)
    assert publisher.replies["slow"] == [{"success": 1, "echo": "slow", "attempt": 1}]
    # The job not yet started went back to the queue, untouched.
    publisher.settle(0.5)
    assert "next" not in publisher.replies
    assert publisher.depth(publisher.queue) == 1


def test_second_sigterm_requeues_the_current_job(
        settings_path: Path, publisher: PlainPublisher, start_consumer) -> None:
    consumer = start_consumer(settings_path)
    publisher.publish({"data": "slow", "sleep": 6}, "slow", message_id="slow-job")
    wait_until_running(settings_path, "slow-job")
    consumer.signal(signal.SIGTERM)
    time.sleep(0.3)
    consumer.signal(signal.SIGTERM)
    assert consumer.wait(timeout=15) == 0
    assert publisher.replies == {}
    assert publisher.depth(publisher.queue) == 1
    # Another consumer takes it up and finishes it.
    start_consumer(settings_path, instance="2")
    publisher.wait_replies(1, timeout=60)
    assert publisher.replies["slow"][0]["success"] == 1


def test_redelivered_success_replies_from_the_stored_result(
        settings_path: Path, publisher: PlainPublisher, start_consumer) -> None:
    start_consumer(settings_path)
    message_id = uuid.uuid4().hex
    for _ in range(2):  # the same message twice: a duplicate publish
        publisher.publish({"data": "once"}, "dup", message_id=message_id)
    publisher.wait_replies(2, timeout=20)
    assert publisher.replies["dup"] == [{"success": 1, "echo": "once", "attempt": 1}] * 2
    store = open_store(load_settings(settings_path), "echo")
    record = store.require(message_id)
    assert record.status is JobStatus.SUCCEEDED and record.attempts == 1
