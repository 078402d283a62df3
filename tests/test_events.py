"""Events: every finished attempt on the topic exchange, and nothing about them can hurt a
job (a deleted exchange is logged, counted, and the channel comes back)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import uuid
from typing import Any

import pika
import pytest
from conftest import BROKER_URL

from gearqueue.client import Client
from gearqueue.config import load_settings
from gearqueue.worker.events import REOPEN_SECONDS, EventPublisher
from gearqueue.worker.observers import observers_for

pytestmark = pytest.mark.slow


class Subscriber:
    """An exclusive queue bound to the events exchange, read with basic.get."""

    def __init__(self, exchange: str, pattern: str = "#") -> None:
        self.exchange, self.pattern = exchange, pattern
        self.connection = pika.BlockingConnection(pika.URLParameters(BROKER_URL))
        self.channel = self.connection.channel()
        self.queue = self.channel.queue_declare("", exclusive=True).method.queue
        self.bind()

    def bind(self) -> None:
        self.channel.exchange_declare(self.exchange, exchange_type="topic", durable=True)
        self.channel.queue_bind(self.queue, self.exchange, routing_key=self.pattern)

    def take(self, count: int, timeout: float = 30.0) -> list[tuple[str, dict[str, Any]]]:
        events: list[tuple[str, dict[str, Any]]] = []
        deadline = time.monotonic() + timeout
        while len(events) < count:
            method, properties, body = self.channel.basic_get(self.queue, auto_ack=True)
            if method is None:
                if time.monotonic() > deadline:
                    raise AssertionError(f"{len(events)} of {count} events: {events}")
                self.connection.process_data_events(time_limit=0.05)
                continue
            assert properties.content_type == "application/json"
            events.append((method.routing_key, json.loads(body)))
        return events

    def close(self) -> None:
        if self.connection.is_open:
            self.connection.close()


@pytest.fixture
def exchange() -> str:
    return f"t{uuid.uuid4().hex[:10]}.events"


@pytest.fixture
def subscriber(exchange: str):
    subscriber = Subscriber(exchange)
    yield subscriber
    subscriber.channel.exchange_delete(exchange)
    subscriber.close()


def test_each_outcome_has_its_routing_key_and_a_small_body(
        make_config, start_consumer, exchange, subscriber) -> None:
    config = make_config(rabbitmq={"events_exchange": exchange},
                         echo_service={"max_retries": 1})
    start_consumer(config, instance="3")
    with Client(load_settings(config)) as client:
        ok = client.submit("echo", {"data": {"a": 1}}, job_id="ev-ok")
        bad = client.submit("echo", {"data": 1, "fail": "permanent"}, job_id="ev-bad")
        flaky = client.submit("echo", {"data": 1, "fail": "transient"}, job_id="ev-flaky")
    events = subscriber.take(4)
    by_job: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for key, event in events:
        by_job.setdefault(event["job_id"], []).append((key, event))
    assert [key for key, _ in by_job[ok]] == ["echo.succeeded"]
    assert [key for key, _ in by_job[bad]] == ["echo.dead_lettered"]
    assert [key for key, _ in by_job[flaky]] == ["echo.failed", "echo.dead_lettered"]
    success = by_job[ok][0][1]
    assert success["reply"] == {"success": 1, "echo": {"a": 1}, "attempt": 1}
    assert success["outcome"] == "succeeded" and success["attempt"] == 1
    assert success["instance"] == "3" and success["host"] and success["job_type"] == "echo"
    assert "error" not in success and success["replayed"] is False
    assert 0 <= success["duration"] < 5 and success["time"].endswith("Z")
    retry, final = (event for _, event in by_job[flaky])
    assert (retry["outcome"], retry["attempt"]) == ("retrying", 1)
    assert (final["outcome"], final["attempt"]) == ("failed", 2)
    assert final["error"] == {"class": "TransientJobError",
                              "message": "echo asked to fail transiently"}
    assert by_job[bad][0][1]["error"]["class"] == "PermanentJobError"


def test_an_empty_exchange_turns_events_off(make_config, start_consumer, exchange,
                                            subscriber) -> None:
    settings = load_settings(make_config(rabbitmq={"events_exchange": ""}))
    assert not any(isinstance(observer, EventPublisher)
                   for observer in observers_for(settings, "echo", "1", "echo-consumer-1"))
    on = load_settings(make_config("on.ini", rabbitmq={"events_exchange": exchange}))
    assert any(isinstance(observer, EventPublisher)
               for observer in observers_for(on, "echo", "1", "echo-consumer-1"))
    # The default exchange name is not used either: nothing announces this job anywhere.
    off = make_config("off.ini", rabbitmq={"events_exchange": ""})
    default = Subscriber("gear.events")
    try:
        consumer = start_consumer(off)
        with Client(load_settings(off)) as client:
            assert client.call("echo", {"data": 1}, job_id="ev-off")["success"] == 1
        time.sleep(0.5)
        seen = []
        while (got := default.channel.basic_get(default.queue, auto_ack=True))[0]:
            seen.append(json.loads(got[2])["job_id"])
        assert "ev-off" not in seen
        assert "events to" not in consumer.log()
    finally:
        default.close()


def test_a_deleted_exchange_costs_no_job_and_the_channel_comes_back(
        make_config, start_consumer, exchange, subscriber) -> None:
    config = make_config(rabbitmq={"events_exchange": exchange})
    consumer = start_consumer(config)
    with Client(load_settings(config)) as client:
        assert client.call("echo", {"data": 0}, job_id="ev-before")["success"] == 1
        assert [event["job_id"] for _, event in subscriber.take(1)] == ["ev-before"]
        subscriber.channel.exchange_delete(exchange)
        # Jobs are acked and replied to as always while events cannot go out.
        for n in range(1, 4):
            assert client.call("echo", {"data": n}, job_id=f"ev-gone-{n}") == {
                "success": 1, "echo": n, "attempt": 1}
        consumer.wait_for_log("the broker closed the events channel (404 NOT_FOUND")
        time.sleep(REOPEN_SECONDS + 0.5)
        subscriber.bind()  # the exchange is back (the consumer would declare it too)
        assert client.call("echo", {"data": 9}, job_id="ev-after")["success"] == 1
        assert [event["job_id"] for _, event in subscriber.take(1)] == ["ev-after"]
    log = consumer.log()
    assert log.count(f"events to '{exchange}'") == 1, log  # then rate-limited
    reopened = re.search(r"events channel reopened; publishing to '[^']+' again "
                         r"\((\d+) events failed so far\)", log)
    assert reopened and int(reopened.group(1)) == 3, log
    assert "Received remote Channel.Close" not in log and "Traceback" not in log
    with Client(load_settings(config)) as client:
        assert client.status("echo", "ev-gone-2").status.value == "succeeded"


def test_the_events_command_tails_a_pattern(make_config, start_consumer, exchange,
                                            subscriber) -> None:
    config = make_config(rabbitmq={"events_exchange": exchange})

    def tail(*args: str) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [sys.executable, "-m", "gearqueue.cli", "--config", str(config), "events", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert process.stderr is not None
        assert "tailing" in process.stderr.readline()  # bound: nothing published is missed
        return process

    lines = tail("echo.*", "--count", "2")
    dead = tail("*.dead_lettered", "--json", "--count", "1")
    start_consumer(config)
    with Client(load_settings(config)) as client:
        client.call("echo", {"data": 1}, job_id="tail-ok")
        client.call("echo", {"data": 1, "fail": "permanent"}, job_id="tail-bad")
    out, _ = lines.communicate(timeout=30)
    assert lines.returncode == 0
    first, second = out.splitlines()
    assert re.match(r"\S+Z echo\.succeeded +job tail-ok attempt 1 \d+ ms on \S+/1$", first)
    assert re.match(r"\S+Z echo\.dead_lettered +job tail-bad attempt 1 \d+ ms on \S+/1: "
                    r"PermanentJobError: echo asked to fail permanently$", second)
    out, _ = dead.communicate(timeout=30)
    assert json.loads(out)["job_id"] == "tail-bad"
