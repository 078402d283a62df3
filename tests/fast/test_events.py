"""The events observer without a broker: routing keys and bodies, and what it does when
it cannot publish (a blocked connection, a channel the broker closed). A real broker's
deleted exchange is tests/test_events.py."""

from __future__ import annotations

import json
import logging
from typing import Any

import pika
import pika.exceptions as pe
import pytest

from gearqueue.config import ServiceSettings
from gearqueue.message import Envelope
from gearqueue.worker.events import (
    REOPEN_SECONDS,
    REPLY_LIMIT_BYTES,
    EventPublisher,
    event_of,
    event_time,
)
from gearqueue.worker.metrics import ConsumerMetrics
from gearqueue.worker.outcome import Outcome
from gearqueue.worker.settlement import Settled


def settled(job_id: str, outcome: Outcome, seconds: float = 0.25) -> Settled:
    envelope = Envelope(job_id=job_id, reply_to=None, correlation_id=None)
    return Settled(delivery=None, envelope=envelope, outcome=outcome,  # type: ignore[arg-type]
                   seconds=seconds)


def failure(*, retrying: bool, reused: bool = False) -> Outcome:
    return Outcome(succeeded=False, reply={"success": -1, "message": "boom"}, attempt=2,
                   retrying=retrying, reused=reused, error_class="TransientJobError",
                   message="boom" * 200)


@pytest.mark.parametrize(("outcome", "key", "verdict"), [
    (Outcome.success({"success": 1}, 1), "echo.succeeded", "succeeded"),
    (Outcome.success({"success": 1}, 1, reused=True), "echo.succeeded", "replayed"),
    (failure(retrying=True), "echo.failed", "retrying"),
    (failure(retrying=False), "echo.dead_lettered", "failed"),
    (failure(retrying=False, reused=True), "echo.dead_lettered", "replayed-failure"),
])
def test_each_verdict_has_one_routing_key(echo_service: ServiceSettings, outcome: Outcome,
                                          key: str, verdict: str) -> None:
    routing_key, body = event_of(settled("j1", outcome), echo_service, host="h",
                                 instance="2", when=event_time(0.0))
    event = json.loads(body)
    assert routing_key == key and event["outcome"] == verdict
    assert event["replayed"] is outcome.reused
    assert event["time"] == "1970-01-01T00:00:00.000Z" and event["duration"] == 0.25
    assert event["reply"] == outcome.reply
    if not outcome.succeeded:
        assert event["error"]["class"] == "TransientJobError"
        assert len(event["error"]["message"]) == 500


def test_a_large_reply_is_left_out_and_its_size_given(echo_service: ServiceSettings) -> None:
    big = {"success": 1, "rows": "x" * REPLY_LIMIT_BYTES}
    _, body = event_of(settled("j", Outcome.success(big, 1)), echo_service, host="h",
                       instance="1", when=event_time(0.0))
    event = json.loads(body)
    assert "reply" not in event and event["reply_bytes"] > REPLY_LIMIT_BYTES


class FakeChannel:
    """What EventPublisher uses of a BlockingChannel; `close_by_broker` as the broker does."""

    def __init__(self) -> None:
        self.is_open = True
        self.published: list[tuple[str, str, dict[str, Any]]] = []
        self._impl = self
        self._on_close: Any = None

    def add_on_close_callback(self, callback: Any) -> None:
        self._on_close = callback

    def exchange_declare(self, exchange: str, **kwargs: Any) -> None:
        self.declared = (exchange, kwargs)

    def basic_publish(self, exchange: str, key: str, body: bytes,
                      properties: pika.BasicProperties) -> None:
        if not self.is_open:
            raise pe.ChannelWrongStateError("Channel is closed.")
        self.published.append((exchange, key, json.loads(body)))

    def close_by_broker(self, code: int, text: str) -> None:
        self.is_open = False
        self._on_close(self, pe.ChannelClosedByBroker(code, text))


class FakeConnection:
    def __init__(self) -> None:
        self.is_open = True
        self.channels: list[FakeChannel] = []
        self.blocked: Any = None
        self.unblocked: Any = None

    def channel(self) -> FakeChannel:
        self.channels.append(FakeChannel())
        return self.channels[-1]

    def add_on_connection_blocked_callback(self, callback: Any) -> None:
        self.blocked = callback

    def add_on_connection_unblocked_callback(self, callback: Any) -> None:
        self.unblocked = callback


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def publisher(echo_service: ServiceSettings) -> tuple[EventPublisher, FakeConnection, Clock]:
    clock, connection = Clock(), FakeConnection()
    publisher = EventPublisher("gear.events", echo_service, host="h", instance="1",
                               clock=clock)
    publisher.consuming(type("Ch", (), {"connection": connection})())  # type: ignore[arg-type]
    return publisher, connection, clock


def jobs(*ids: str) -> list[Settled]:
    return [settled(job_id, Outcome.success({"success": 1}, 1)) for job_id in ids]


def test_events_go_to_the_declared_exchange(publisher) -> None:
    events, connection, _ = publisher
    channel = connection.channels[0]
    assert channel.declared == ("gear.events", {"exchange_type": "topic", "durable": True})
    events.settled(jobs("a", "b"))
    assert [(key, event["job_id"]) for _, key, event in channel.published] == [
        ("echo.succeeded", "a"), ("echo.succeeded", "b")]
    assert (events.published, events.failed) == (2, 0)


def test_a_blocked_connection_skips_and_counts(publisher) -> None:
    events, connection, _ = publisher
    connection.blocked(connection, None)
    events.settled(jobs("a", "b"))
    assert connection.channels[0].published == [] and events.failed == 2
    connection.unblocked(connection, None)
    events.settled(jobs("c"))
    assert len(connection.channels[0].published) == 1


def test_a_closed_channel_is_counted_logged_once_and_reopened_later(
        publisher, caplog: pytest.LogCaptureFixture) -> None:
    events, connection, clock = publisher
    caplog.set_level(logging.DEBUG, logger="gearqueue.worker.events")
    events.settled(jobs("a", "b", "c"))
    connection.channels[0].close_by_broker(404, "NOT_FOUND - no exchange 'gear.events'")
    events.settled(jobs("d"))  # the round the broker closed on, and this one
    assert events.failed == 4 and len(connection.channels) == 1
    clock.now += REOPEN_SECONDS / 2
    events.settled(jobs("e"))
    assert events.failed == 5 and len(connection.channels) == 1
    clock.now += REOPEN_SECONDS
    events.settled(jobs("f"))
    assert len(connection.channels) == 2 and connection.channels[1].published[0][2][
        "job_id"] == "f"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "the broker closed the events channel (404 NOT_FOUND - no exchange" in warnings[0]
    assert "3 event(s) of the last round lost" in warnings[0]
    assert any("events channel reopened" in r.getMessage() and "(5 events failed so far)"
               in r.getMessage() for r in caplog.records)


def test_lost_events_reach_the_metrics(echo_service: ServiceSettings) -> None:
    metrics = ConsumerMetrics("echo", "1", None)
    connection = FakeConnection()
    events = EventPublisher("gear.events", echo_service, host="h", instance="1",
                            clock=Clock(), count_failed=metrics.event_failed)
    events.consuming(type("Ch", (), {"connection": connection})())  # type: ignore[arg-type]
    connection.blocked(connection, None)
    events.settled(jobs("a", "b"))
    assert metrics.registry.get_sample_value(
        "gear_events_failed_total", {"job_type": "echo", "instance": "1"}) == 2
