"""A test double of gearqueue's own `worker.channel.Channel`: no broker, a record.

It offers the loop what a Channel offers (deliveries in order, pump, acks, requeues,
confirmed publishes, replies) and writes down, in order, every call that would have
reached the broker, so a test can read the settlement as a list of events.

Like RQ's burst worker, a run ends when the queue is empty: the loop's idle wait
(`pump` with a positive timeout and nothing to take) asks it to stop.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pika

from gearqueue.worker.channel import Delivery
from gearqueue.worker.stop import StopRequest


@dataclass(frozen=True)
class Event:
    """One call the loop made: kind is publish, reply, ack, requeue, cancel or consume."""

    kind: str
    job_id: str | None = None
    exchange: str | None = None
    routing_key: str | None = None
    properties: pika.BasicProperties | None = None
    reply: dict[str, Any] | None = None
    multiple: bool = False
    tag: int | None = None

    @property
    def headers(self) -> dict[str, Any]:
        return dict(self.properties.headers or {}) if self.properties else {}


class RecordingChannel:
    def __init__(self, stop: StopRequest, on_pump: Callable[[], None] | None = None) -> None:
        self.stop = stop
        self.on_pump = on_pump
        self.events: list[Event] = []
        self.alive = True
        self.cancelled = False
        self._pending: deque[Delivery] = deque()
        self._tags = 0
        self._by_tag: dict[int, Delivery] = {}

    # --- what a test does ------------------------------------------------------------

    def deliver(self, body: bytes, job_id: str, *, reply_to: str | None = "replies",
                headers: dict[str, Any] | None = None, redelivered: bool = False) -> Delivery:
        self._tags += 1
        properties = pika.BasicProperties(
            content_type="application/json", delivery_mode=2, message_id=job_id,
            correlation_id=job_id, reply_to=reply_to, type="echo", headers=headers)
        delivery = Delivery(self, self._tags, redelivered, properties, body)  # type: ignore[arg-type]
        self._by_tag[self._tags] = delivery
        self._pending.append(delivery)
        return delivery

    def of(self, kind: str) -> list[Event]:
        return [event for event in self.events if event.kind == kind]

    def acked_tags(self) -> set[int]:
        """Every tag an ack covered (multiple: all up to it, as the broker counts)."""
        acked: set[int] = set()
        for event in self.of("ack"):
            assert event.tag is not None
            acked |= set(range(1, event.tag + 1)) if event.multiple else {event.tag}
        return acked

    # --- the Channel interface the loop uses -----------------------------------------

    def peek(self) -> Delivery | None:
        return self._pending[0] if self._pending else None

    def next_delivery(self) -> Delivery | None:
        return self._pending.popleft() if self._pending else None

    def pump(self, seconds: float) -> None:
        if self.on_pump is not None:
            self.on_pump()
        if seconds > 0 and not self._pending:
            self.stop.graceful = True  # burst: the queue is empty

    def ack(self, delivery: Delivery, *, multiple: bool = False) -> None:
        self.events.append(Event("ack", _job_id(delivery), multiple=multiple,
                                 tag=delivery.delivery_tag))

    def requeue(self, delivery: Delivery) -> None:
        self.events.append(Event("requeue", _job_id(delivery), tag=delivery.delivery_tag))

    def stop_consuming(self) -> None:
        self.events.append(Event("cancel"))
        self.give_back_unstarted()

    def resume(self) -> None:
        self.events.append(Event("consume"))

    def give_back_unstarted(self) -> None:
        while self._pending:
            self.requeue(self._pending.popleft())

    def publish_confirmed(self, exchange: str, routing_key: str, body: bytes,
                          properties: pika.BasicProperties) -> None:
        self.events.append(Event("publish", properties.message_id, exchange=exchange,
                                 routing_key=routing_key, properties=properties))

    def reply(self, reply_to: str, correlation_id: str | None, reply: dict[str, Any]) -> None:
        self.events.append(Event("reply", correlation_id, routing_key=reply_to, reply=reply))

    def close(self) -> None:
        self.alive = False


def _job_id(delivery: Delivery) -> str | None:
    return delivery.properties.message_id
